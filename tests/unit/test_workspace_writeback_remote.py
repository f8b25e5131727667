"""The Kubernetes write-back's kernel side (workspace/writeback_remote.py) against an agent that
lies: the seam is the agent's ``file_reply`` bodies, as a real agent's supervisor sends them and
the kernel's reader passes them on (messages.check), and
the host directory is a real one (the write goes through hostfs)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import SandboxLost
from sandbox_kernel.messages import check
from sandbox_kernel.protocol import Message
from sandbox_kernel.workspace import writeback_remote
from sandbox_kernel.workspace.writeback_remote import Listing, RemoteWriteBack, changed, parse_listing


class Pod:
    """The pod's working directory as its agent reports it: ``files`` name -> bytes (stamps bump on
    every change), plus whatever extra the listing should claim (``lies``) or leave out."""

    def __init__(self, **files: bytes) -> None:
        self.files: dict[str, bytes] = {}
        self.stamps: dict[str, int] = {}
        self.lies: list[list[Any]] = []
        self.skipped: list[list[Any]] = []
        self.truncated: Any = False
        self.grow: dict[str, bytes] = {}  # bytes a file gains after every read of it
        self.requests: list[dict[str, Any]] = []
        for name, data in files.items():
            self.write(name, data)

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = data
        self.stamps[name] = self.stamps.get(name, 0) + 1

    def answer(self, r: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(r)
        if r["type"] == "file_list":
            listed = [[n, len(d), f"s{self.stamps[n]}"] for n, d in self.files.items()]
            return {"files": listed + self.lies, "skipped": self.skipped, "truncated": self.truncated}
        assert r["type"] == "file_read", r
        data = self.files.get(r["path"])
        if data is None:
            return {"error": "No such file or directory"}
        chunk = data[r["offset"] : r["offset"] + r["length"]]
        self.files[r["path"]] = data + self.grow.get(r["path"], b"")
        return {"size": len(data), "data": base64.b64encode(chunk).decode()}

    async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(check(Message({"type": "file_reply", "id": "f1", **self.answer(body)})))
        return future


@pytest.fixture
def host(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "analysis.ipynb").write_text('{"cells": []}')
    (tmp_path / "secret").write_text("SECRET")
    return d


def write_back(pod: Pod, host: Path, limit: str = "1Mi", files: int = 20) -> RemoteWriteBack:
    wb = RemoteWriteBack(
        pod, str(host), Sandbox(workspace="read-write", workspace_limit=limit, workspace_files=files).limits()
    )
    assert asyncio.run(wb.baseline()) is None
    return wb


def after_cell(wb: RemoteWriteBack) -> list[str]:
    return asyncio.run(wb.after_cell())


def test_new_and_changed_files_come_back_and_unchanged_ones_are_not_read(host: Path) -> None:
    pod = Pod(**{"data.csv": b"a,b\n"})
    wb = write_back(pod, host)
    assert not (host / "data.csv").exists()  # the copy-in's files are the baseline: not written back
    pod.write("out.csv", b"x,y\n")
    pod.files["sub/deeper/r.txt"], pod.stamps["sub/deeper/r.txt"] = b"r", 1
    pod.requests.clear()
    assert after_cell(wb) == []
    assert (host / "out.csv").read_bytes() == b"x,y\n" and (host / "sub/deeper/r.txt").read_bytes() == b"r"
    assert (host / "out.csv").stat().st_uid == os.geteuid()
    assert sorted(r["path"] for r in pod.requests if r["type"] == "file_read") == ["out.csv", "sub/deeper/r.txt"]
    pod.requests.clear()
    assert after_cell(wb) == [] and [r["type"] for r in pod.requests] == ["file_list"]  # nothing changed
    pod.write("out.csv", b"x,y\n1,2\n")
    assert after_cell(wb) == [] and (host / "out.csv").read_bytes() == b"x,y\n1,2\n"


def test_a_deleted_file_stays_on_the_host_and_one_gone_before_its_read_is_passed_over(host: Path) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    pod.write("keep.txt", b"k")
    assert after_cell(wb) == []
    del pod.files["keep.txt"]
    pod.lies = [["vanished.txt", 5, "s9"]]  # listed, then gone before the kernel reads it
    assert after_cell(wb) == []
    assert (host / "keep.txt").read_bytes() == b"k" and not (host / "vanished.txt").exists()


def test_names_the_sandbox_may_not_write_back_are_refused_before_a_byte_is_read(host: Path) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    for name in ("analysis.ipynb", ".hidden", "sub/.git/hooks/pre-commit", "jupyter_server_config.py"):
        pod.write(name, b"evil")
    pod.lies = [["../secret", 4, "s1"], ["/etc/passwd", 4, "s1"], ["a\nb", 1, "s1"], ["", 1, "s1"]]
    pod.requests.clear()
    notices = after_cell(wb)
    assert [r["type"] for r in pod.requests] == ["file_list"], pod.requests  # nothing was read
    text = "\n".join(notices)
    assert "'analysis.ipynb' was not copied: it is a notebook" in text
    assert "'.hidden' was not copied: '.hidden' is hidden" in text and "'.git' is hidden" in text
    assert "load files of that name from their working directory as configuration" in text
    assert "not written back: '../secret' goes up with '..'" in text
    assert "not written back: '/etc/passwd' is an absolute path" in text
    assert "has a control character" in text and "an empty file name" in text
    assert (host / "analysis.ipynb").read_text() == '{"cells": []}' and (host.parent / "secret").read_text() == "SECRET"
    assert sorted(p.name for p in host.iterdir()) == ["analysis.ipynb"]
    assert after_cell(wb) == []  # each told once


def test_a_symlink_in_the_pod_or_on_the_host_is_never_followed(host: Path) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    (host / "planted.txt").symlink_to(host.parent / "secret")  # on the host, of a name the pod writes
    pod.write("planted.txt", b"overwrite")
    pod.skipped = [["passwd", "symlink"], ["fifo", "special"], ["bad\ufffd", "name"]]
    notices = after_cell(wb)
    assert "'planted.txt' was not copied: a symlink of that name is in the notebook's directory." in notices
    assert "not written back: 'passwd': a symlink, left out" in notices
    assert "not written back: 'fifo': not a regular file, left out" in notices
    assert (host.parent / "secret").read_text() == "SECRET" and not (host / "passwd").exists()


def test_what_the_sandbox_claims_is_bounded(host: Path) -> None:
    pod = Pod()
    wb = write_back(pod, host, limit="1Ki", files=3)
    pod.write("big.bin", b"x" * 2000)
    for i in range(5):
        pod.write(f"f{i}.txt", b"y")
    pod.truncated = "entries"
    notices = after_cell(wb)
    written = sorted(p.name for p in host.iterdir() if p.name != "analysis.ipynb")
    assert len(written) <= 3 and "big.bin" not in written, written
    assert any("was not written back: one cell may write back at most 1Ki in 3 files" in n for n in notices), notices
    assert "not written back: more than 3 files (Sandbox.workspace_files): the rest were left out" in notices
    assert "not written back: more than 130 names: the rest were not looked at" in notices


def test_a_file_growing_while_read_keeps_only_what_it_announced(host: Path) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    pod.write("log.txt", b"z" * 100)
    pod.grow["log.txt"] = b"z" * 10_000_000
    assert after_cell(wb) == []
    assert (host / "log.txt").read_bytes() == b"z" * 100


def test_a_lying_listing_that_is_no_listing_is_said_once(host: Path) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    pod.answer = lambda r: {"files": "everything"}  # type: ignore[method-assign]
    assert after_cell(wb) == ["not written back: the sandbox's list of its files is malformed."]
    assert after_cell(wb) == []


def test_an_agent_that_does_not_list_turns_the_write_back_off(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback_remote, "LIST_TIMEOUT", 0.05)

    class Silent:
        async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Any]":
            return asyncio.get_running_loop().create_future()  # never answered (an older agent)

    wb = RemoteWriteBack(Silent(), str(host), Sandbox(workspace="read-write").limits())
    notice = asyncio.run(wb.baseline())
    assert notice is not None and "not written back" in notice and "did not answer within 0.05 s" in notice


def test_parse_and_diff_are_pure() -> None:
    listing = parse_listing({"files": [["a/b.txt", 3, "1:2"], ["a/b.txt", 9, "x"], ["c", 0, "9"]]}, 10)
    assert listing.files == {("a", "b.txt"): (3, "1:2"), ("c",): (0, "9")} and listing.notices == []
    assert changed({("a", "b.txt"): (3, "1:2")}, listing) == [(("c",), (0, "9"))]
    assert changed({("a", "b.txt"): (3, "1:3"), ("c",): (0, "9")}, listing) == [(("a", "b.txt"), (3, "1:2"))]
    assert changed({}, Listing()) == []
    lies = [["bool.txt", True, "s"], ["neg.txt", -1, "s"], ["x", 1, 5], ["y", 1, "s" * 101], "junk", ["z", 1]]
    bad = parse_listing({"files": lies, "skipped": [["l", "symlink"], 7] * 200, "truncated": "bytes"}, 10)
    assert bad.files == {} and bad.notices.count("the sandbox listed a file malformed: left out") == 6
    assert bad.notices.count("'l': a symlink, left out") == 50  # of the first 100 skipped entries, the rest ignored
    assert bad.notices[-1] == "more names than one listing of the sandbox holds: the rest were not looked at"
    with pytest.raises(Exception, match="could not list its files: Permission denied"):
        parse_listing({"error": "Permission denied"}, 10)
    many = parse_listing({"files": [[f"f{i}", 1, "s"] for i in range(50)]}, 10)
    assert len(many.files) == 10 and many.notices == [
        "more than 10 files (Sandbox.workspace_files): the rest were left out"
    ]


def test_read_only_and_hidden_modes_never_list(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(host)
    for mode in ("read-only", "hidden"):
        pod = Pod()
        made, notice = asyncio.run(writeback_remote.remote_write_back(pod, Sandbox(workspace=mode).limits()))
        assert made is None and notice is None and pod.requests == []
    pod = Pod()
    made, notice = asyncio.run(writeback_remote.remote_write_back(pod, Sandbox(workspace="read-write").limits()))
    assert made is not None and notice is None and [r["type"] for r in pod.requests] == ["file_list"]


def test_the_first_reads_of_many_small_files_are_in_flight_together(host: Path) -> None:
    class FarPod(Pod):
        """Answers after a round trip: a pipelined write-back has several reads out at once."""

        outstanding = most = 0

        async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Any]":
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Any] = loop.create_future()
            answer = check(Message({"type": "file_reply", "id": "f1", **self.answer(body)}))
            self.outstanding += 1
            self.most = max(self.most, self.outstanding)

            def arrive() -> None:
                self.outstanding -= 1
                if not future.done():
                    future.set_result(answer)

            loop.call_later(0.002, arrive)
            return future

    pod = FarPod()
    wb = write_back(pod, host, files=100)
    for i in range(40):
        pod.write(f"r{i:02}.txt", b"%d" % i)
    pod.write("late.ipynb", b"{}")
    notices = after_cell(wb)
    assert sorted(p.name for p in host.glob("r*.txt")) == [f"r{i:02}.txt" for i in range(40)]
    assert all((host / f"r{i:02}.txt").read_bytes() == b"%d" % i for i in range(40))
    assert pod.most >= 8, pod.most  # a window of first reads, not one round trip per file
    assert [n for n in notices if "late.ipynb" in n] and not any(r.get("path") == "late.ipynb" for r in pod.requests)


def test_a_write_back_over_its_time_goes_on_after_the_next_cell(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    pod.write("a.txt", b"a")
    monkeypatch.setattr(writeback_remote, "WRITE_BACK_SECONDS", -1.0)
    assert after_cell(wb) == [
        "not written back yet: the write-back after one cell stops after -1 s; the rest follows after the next cell"
    ]
    assert not (host / "a.txt").exists()
    monkeypatch.setattr(writeback_remote, "WRITE_BACK_SECONDS", 30.0)
    assert after_cell(wb) == [] and (host / "a.txt").read_bytes() == b"a"


def test_a_sandbox_that_goes_away_mid_write_back_is_said(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = Pod()
    wb = write_back(pod, host)
    pod.write("a.txt", b"a")
    listed = pod.send_file_request

    async def lost(body: dict[str, Any]) -> "asyncio.Future[Any]":
        if body["type"] == "file_read":
            raise SandboxLost("The sandbox is not running.")
        return await listed(body)

    monkeypatch.setattr(pod, "send_file_request", lost)
    assert after_cell(wb) == ["not written back: the sandbox stopped answering (The sandbox is not running.)"]
    assert not (host / "a.txt").exists()
