"""``file_list`` (PROTOCOL.md) on the three agents as plain subprocesses, attacked: what a cell
can plant in the working directory (symlinks to /etc/passwd and to a host path, a symlinked
directory, a FIFO, notebooks, hidden files, a deep tree, a huge number of files, long names) is
listed only as PROTOCOL.md says; and the Kubernetes write-back (workspace/writeback_remote.py)
driven through each real agent: a file a cell writes comes back, the planted ones are refused
with the local write-back's messages, and a file growing while it is read is bounded."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from agents import Agent
from sandbox_kernel.config import Sandbox
from sandbox_kernel.messages import check
from sandbox_kernel.workspace.writeback_remote import RemoteWriteBack

LANGUAGES = ["python", "node", "bash"]

WRITE_OUT = {
    "python": "open('out.csv', 'w').write('x,y\\n3,4\\n')",
    "node": "require('fs').writeFileSync('out.csv', 'x,y\\n3,4\\n')",
    "bash": "printf 'x,y\\n3,4\\n' > out.csv",
}


@pytest.fixture(params=LANGUAGES)
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Agent]:
    pod = tmp_path / "pod"
    pod.mkdir()
    running = Agent(request.param, pod)
    yield running
    running.close()


def listing(agent: Agent, timeout: float = 60, **fields: Any) -> dict[str, Any]:
    """The agent's answer, as the kernel's reader passes it on (messages.check)."""
    ident = agent.new_id()
    agent.send({"type": "file_list", "id": ident, **fields})
    reply = check(agent.next_message("file_reply", timeout, ident))
    assert reply.problem is None, reply.problem
    return reply.body


def plant(pod: Path, host_secret: Path) -> None:
    """What a cell could leave in the pod's working directory."""
    (pod / "out.csv").write_text("x,y\n")
    (pod / "sub" / "dir").mkdir(parents=True)
    (pod / "sub" / "dir" / "x.txt").write_text("x")
    (pod / "x.ipynb").write_text("{}")
    (pod / ".hidden").write_text("h")
    (pod / ".cache" / "deep").mkdir(parents=True)
    (pod / ".cache" / "deep" / "f").write_text("f")
    (pod / "sub" / ".git").mkdir()
    (pod / "sub" / ".git" / "config").write_text("c")
    (pod / "passwd").symlink_to("/etc/passwd")
    (pod / "hostpath").symlink_to(host_secret)
    (pod / "etc").symlink_to("/etc")
    os.mkfifo(pod / "fifo")
    deep = pod.joinpath(*[f"d{i}" for i in range(40)])
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("b")
    (pod / "d0" / "d1" / "shallow.txt").write_text("s")


def test_only_regular_files_are_listed_never_through_a_symlink(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("SECRET")
    plant(agent.workdir, tmp_path / "secret")
    reply = listing(agent, max_files=100)
    files = {name: (size, stamp) for name, size, stamp in reply["files"]}
    assert set(files) - {"agent.log"} == {"out.csv", "sub/dir/x.txt", "x.ipynb", "d0/d1/shallow.txt"}, reply
    assert files["out.csv"][0] == 4 and isinstance(files["out.csv"][1], str) and files["out.csv"][1]
    assert sorted(reply["skipped"]) == [
        ["etc", "symlink"],
        ["fifo", "special"],
        ["hostpath", "symlink"],
        ["passwd", "symlink"],
    ]
    assert reply["truncated"] is False
    # A stamp changes when the file is written, even with the same size; it stays otherwise.
    assert {n: s for n, s, _ in listing(agent)["files"]} == {n: s for n, (s, _) in files.items()} | {
        "agent.log": (agent.workdir / "agent.log").stat().st_size
    }
    time.sleep(0.01)
    (agent.workdir / "out.csv").write_text("z,w\n")
    again = {name: stamp for name, _, stamp in listing(agent)["files"]}
    assert again["out.csv"] != files["out.csv"][1] and again["sub/dir/x.txt"] == files["sub/dir/x.txt"][1]


def test_a_huge_number_of_files_is_bounded(agent: Agent) -> None:
    many = agent.workdir / "many"
    many.mkdir()
    for i in range(20_000):
        (many / f"f{i:05}").touch()
    started = time.monotonic()
    reply = listing(agent, max_files=500, max_entries=100_000)
    took = time.monotonic() - started
    assert reply["truncated"] == "files" and len(reply["files"]) == 500, (reply["truncated"], len(reply["files"]))
    assert took < 15, f"the {agent.language} agent took {took:.1f} s"
    reply = listing(agent, max_files=100_000, max_entries=1_000)
    assert reply["truncated"] == "entries" and len(reply["files"]) < 1_000
    # Long names: the reply stays well under the 2 MiB frame (1 MiB of names, then it stops).
    for i in range(6_000):
        (many / (f"{i:05}" + "n" * 240)).touch()
    reply = listing(agent, max_files=100_000)
    assert reply["truncated"] == "bytes" and 3_000 < len(reply["files"]) < 26_000, len(reply["files"])
    # Nonsense bounds fall back to the agent's own.
    reply = listing(agent, max_files=-5, max_entries="all")
    assert reply["truncated"] == "bytes"


class Channel:
    """The kernel's file channel (AgentSession.send_file_request) over the test's agent driver."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.language = SimpleNamespace(name=agent.language)  # Transfer picks Bash's small chunks
        self.grow: dict[str, int] = {}

    async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Any]":
        if body["type"] == "file_read" and body["path"] in self.grow:  # the sandbox writes on meanwhile
            with open(self.agent.workdir / body["path"], "ab") as f:
                f.write(b"z" * self.grow[body["path"]])
        ident = self.agent.new_id()
        self.agent.send({**body, "id": ident})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(check(self.agent.next_message("file_reply", 60, ident)))  # as the kernel's reader
        return future


def test_the_write_back_through_a_real_agent(agent: Agent, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "x.ipynb").write_text('{"cells": []}')
    (tmp_path / "secret").write_text("SECRET")
    (host / "hostpath").symlink_to(tmp_path / "secret")  # the host has a symlink of a name the pod writes
    limits = Sandbox(workspace="read-write", workspace_limit="1Mi", workspace_files=50).limits()
    (agent.workdir / "copied.txt").write_text("from the host")  # as the copy-in left it
    channel = Channel(agent)
    wb = RemoteWriteBack(channel, str(host), limits)
    assert asyncio.run(wb.baseline()) is None
    assert agent.execute(WRITE_OUT[agent.language]).status == "ok"
    (agent.workdir / "hostpath").write_text("overwrite")  # a regular file in the pod, a symlink on the host
    plant_links = agent.workdir
    (plant_links / "passwd").symlink_to("/etc/passwd")
    (plant_links / "x.ipynb").write_text("evil")
    (plant_links / ".hidden").write_text("h")
    notices = asyncio.run(wb.after_cell())
    assert (host / "out.csv").read_text() == "x,y\n3,4\n" and not (host / "copied.txt").exists()
    assert "not written back: 'passwd': a symlink, left out" in notices, notices
    assert "'hostpath' was not copied: a symlink of that name is in the notebook's directory." in notices
    assert any(n.startswith("'x.ipynb' was not copied: it is a notebook") for n in notices), notices
    assert (host / "x.ipynb").read_text() == '{"cells": []}' and (tmp_path / "secret").read_text() == "SECRET"
    assert not (host / "passwd").exists() and not (host / ".hidden").exists()
    assert asyncio.run(wb.after_cell()) == []  # nothing new, nothing said again

    # A file growing while it is read: at most what the first read announced, never past the limit.
    channel.grow = {"grow.log": 200_000, "huge.log": 2 << 20}  # bytes added before each read of it
    (agent.workdir / "grow.log").write_bytes(b"z" * 300_000)
    (agent.workdir / "huge.log").write_bytes(b"z" * 1000)
    notices = asyncio.run(wb.after_cell())
    assert (host / "grow.log").read_bytes() == b"z" * 500_000, notices
    assert not (host / "huge.log").exists()
    assert any(n.startswith("'huge.log' was not downloaded: it is 2.0 MiB, more than") for n in notices), notices


def test_the_bash_agent_s_tools_never_hold_the_protocol_stream(tmp_path: Path) -> None:
    """stat and base64 (file_list, file_read) are dumpable: a process of the sandbox's uid could
    open their fds through /proc while they run, so they must not have the protocol pipes."""
    tools, log = tmp_path / "tools", tmp_path / "fds.log"
    tools.mkdir()
    for tool in ("stat", "base64"):
        real = shutil.which(tool)
        assert real is not None
        (tools / tool).write_text(
            f'#!/bin/sh\nfor f in /proc/$$/fd/*; do echo "{tool} $(readlink "$f")"; done >>{log}\nexec {real} "$@"\n'
        )
        (tools / tool).chmod(0o755)
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "a.txt").write_text("a")
    agent = Agent("bash", pod, env={"PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    try:
        assert [f[0] for f in listing(agent)["files"]].count("a.txt") == 1
        agent.send({"type": "file_read", "id": "r1", "path": "a.txt", "offset": 0, "length": 100})
        assert agent.wait_message("file_reply", 30, "r1")["data"] == "YQ=="
        agent.send({"type": "file_write", "id": "w1", "path": "b/c.txt", "offset": 0, "data": "Yg=="})
        assert agent.wait_message("file_reply", 30, "w1")["size"] == 1
        assert agent.proc.stdin is not None and agent.proc.stdout is not None
        protocol = {f"pipe:[{os.fstat(p.fileno()).st_ino}]" for p in (agent.proc.stdin, agent.proc.stdout)}
    finally:
        agent.close()
    seen = log.read_text().splitlines()
    assert {line.split()[0] for line in seen} == {"stat", "base64"}, seen
    assert not [line for line in seen if line.split()[1] in protocol], seen


@pytest.mark.parametrize("language", ["python", "node"])
def test_file_write_takes_raw_bytes_in_a_bin_frame(language: str, tmp_path: Path) -> None:
    """`bin` frames (PROTOCOL.md, "Framing"): a chunk's raw bytes, frame-like text and NUL bytes
    included, written as they are, and the frames after them still parsed."""
    from sandbox_kernel.protocol import encode_file_write

    if language == "node" and not shutil.which("node"):
        pytest.skip("node is not installed")
    pod = tmp_path / "pod"
    pod.mkdir()
    agent = Agent(language, pod)
    try:
        assert agent.ready.get("binary_files") is True
        data = os.urandom(300_000) + b"\nmsg 3\n{}\0\xff" + bytes(range(256)) * 1000
        assert agent.proc.stdin is not None
        for i, start in enumerate((0, 400_000)):
            body = {"type": "file_write", "id": f"b{i}", "path": "d/x.bin", "offset": start}
            agent.proc.stdin.write(encode_file_write(body, data[start : start + 400_000]))
            agent.proc.stdin.flush()
            agent.sent += 1
            assert agent.wait_message("file_reply", 30, f"b{i}")["size"] == min(len(data), start + 400_000)
        assert (pod / "d" / "x.bin").read_bytes() == data
        assert agent.execute({"python": "print('next')", "node": "console.log('next')"}[language]).status == "ok"
    finally:
        agent.close()


@pytest.mark.parametrize("language,binary", [("python", True), ("node", True), ("bash", False)])
def test_the_session_sends_bin_frames_to_the_agents_that_take_them(language: str, binary: bool) -> None:
    """The kernel's session reads `binary_files` from the agent's ready (through the message
    checks), so uploads to Python and Node.js go raw and Bash's stay base64."""
    from sandbox_kernel.languages import LANGUAGES
    from sandbox_kernel.local.backend import LocalSandboxSession

    if language == "node" and not shutil.which("node"):
        pytest.skip("node is not installed")

    async def started() -> bool:
        session = LocalSandboxSession(LANGUAGES[language], Sandbox().limits())
        try:
            await session.start()
            return session._binary_files
        finally:
            await session.close()

    assert asyncio.run(started()) is binary
