"""Writing the sandbox's files back onto the host (workspace/staging.py, hostfs.py, names.py),
attacked on a real file system: the copy plays the sandbox's part (it is what the sandbox
controls), the host directory is the notebook's."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sandbox_kernel.errors import WorkspaceError
from sandbox_kernel.workspace import hostfs, names
from sandbox_kernel.workspace.staging import Staging


@pytest.fixture
def host(tmp_path: Path) -> Path:
    d = tmp_path / "notebooks"
    d.mkdir()
    (d / "data.csv").write_text("a,b\n1,2\n")
    (d / "analysis.ipynb").write_text('{"cells": []}')
    (tmp_path / "secret").write_text("SECRET")
    return d


@pytest.fixture
def staging(host: Path) -> Staging:
    s = Staging(str(host), limit=10_000, max_files=20)
    assert s.prepare(None) == []
    yield s
    s.close()


def copy(s: Staging) -> Path:
    assert s.path is not None
    return Path(s.path)


def test_the_copy_holds_the_directory_and_a_new_file_comes_back(host: Path, staging: Staging) -> None:
    assert sorted(p.name for p in copy(staging).iterdir()) == ["analysis.ipynb", "data.csv"]
    (copy(staging) / "out.csv").write_text("x,y\n")
    (copy(staging) / "sub" / "deeper").mkdir(parents=True)
    (copy(staging) / "sub" / "deeper" / "r.txt").write_text("r")
    assert staging.write_back() == []
    assert (host / "out.csv").read_text() == "x,y\n" and (host / "sub/deeper/r.txt").read_text() == "r"
    assert (host / "out.csv").stat().st_uid == os.geteuid()  # the kernel's own uid wrote it
    assert staging.write_back() == []  # nothing changed since: nothing written, nothing said


def test_a_planted_symlink_is_never_followed_nor_copied(host: Path, staging: Staging, tmp_path: Path) -> None:
    (copy(staging) / "evil").symlink_to(tmp_path / "secret")
    (copy(staging) / "to-notebook").symlink_to(host / "analysis.ipynb")
    os.unlink(copy(staging) / "data.csv")
    (copy(staging) / "data.csv").symlink_to(tmp_path / "secret")  # replaces a file the host has
    notices = staging.write_back()
    assert any("'evil': a symlink" in n for n in notices) and any("'to-notebook': a symlink" in n for n in notices), (
        notices
    )
    assert not (host / "evil").exists() and not (host / "to-notebook").exists()
    assert (host / "data.csv").read_text() == "a,b\n1,2\n" and not (host / "data.csv").is_symlink()
    assert staging.write_back() == []  # each refusal is told once


def test_the_notebook_hidden_files_and_config_files_are_refused(host: Path, staging: Staging) -> None:
    (copy(staging) / "analysis.ipynb").write_text('{"cells": ["evil"]}')
    (copy(staging) / "new.IPYNB").write_text("{}")
    (copy(staging) / ".git" / "hooks").mkdir(parents=True)
    (copy(staging) / ".git" / "hooks" / "pre-commit").write_text("rm -rf ~")
    (copy(staging) / "jupyter_server_config.py").write_text("c.x = 1")
    (copy(staging) / "sandbox_kernel_config.py").write_text("c.LocalSandbox.require_isolation = False")
    notices = "\n".join(staging.write_back())
    assert "'analysis.ipynb' was not copied: it is a notebook" in notices
    assert "'new.IPYNB'" in notices and "'.git' is hidden" in notices and "load files of that name" in notices
    assert (host / "analysis.ipynb").read_text() == '{"cells": []}'
    assert sorted(p.name for p in host.iterdir()) == ["analysis.ipynb", "data.csv"]


def test_special_files_and_bad_names_are_refused(host: Path, staging: Staging) -> None:
    os.mkfifo(copy(staging) / "fifo")
    (copy(staging) / "two\nlines.txt").write_text("x")
    with open(os.open(os.fsencode(copy(staging)) + b"/bad-\xff.txt", os.O_WRONLY | os.O_CREAT, 0o644), "w") as f:
        f.write("x")
    notices = "\n".join(staging.write_back())
    assert "'fifo': not a regular file" in notices
    assert "control character" in notices and "not valid UTF-8" in notices
    assert sorted(p.name for p in host.iterdir()) == ["analysis.ipynb", "data.csv"]


def test_too_large_and_too_many_files_are_bounded(host: Path, tmp_path: Path) -> None:
    s = Staging(str(host), limit=1000, max_files=5)
    s.prepare(None)
    try:
        (copy(s) / "big.bin").write_bytes(b"x" * 2000)
        for i in range(8):
            (copy(s) / f"f{i}.txt").write_text("y")
        notices = "\n".join(s.write_back())
        assert "more than 5 files" in notices
        assert not (host / "big.bin").exists()
        assert len([p for p in host.iterdir() if p.name.startswith("f")]) <= 5
    finally:
        s.close()
    # The copy in is bounded the same way: files past the limit are left out, with a notice.
    other = tmp_path / "other"
    other.mkdir()
    (other / "huge.bin").write_bytes(b"z" * 5000)
    (other / "small.txt").write_text("s")
    s = Staging(str(other), limit=1000, max_files=5)
    try:
        notices = s.prepare(None)
        assert any("would hold more than" in n and "'huge.bin'" in n for n in notices), notices
        assert (copy(s) / "small.txt").exists()
        assert not (copy(s) / "huge.bin").exists()
    finally:
        s.close()


def test_a_host_symlink_on_the_way_is_refused(host: Path, staging: Staging, tmp_path: Path) -> None:
    """A directory of the host replaced by a symlink to elsewhere: the write stops there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (host / "sub").symlink_to(outside)
    (copy(staging) / "sub").mkdir()
    (copy(staging) / "sub" / "x.txt").write_text("x")
    (host / "link.txt").symlink_to(tmp_path / "secret")
    (copy(staging) / "link.txt").write_text("overwrite?")
    notices = "\n".join(staging.write_back())
    assert "'sub' was not copied: it is a symlink" in notices and "a symlink of that name" in notices
    assert list(outside.iterdir()) == [] and (tmp_path / "secret").read_text() == "SECRET"


def test_a_symlink_swapped_in_after_the_check_is_never_followed(host: Path, staging: Staging, tmp_path: Path) -> None:
    """The sandbox swaps a file for a symlink to a secret (and to the notebook) as fast as it can
    while the kernel writes back: the host only ever gets the file's own content."""
    target = copy(staging) / "race.txt"
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            tmp = copy(staging) / f".swap{i % 2}"
            if i % 2:
                tmp.symlink_to(tmp_path / "secret" if i % 4 == 1 else host / "analysis.ipynb")
            else:
                tmp.write_text(f"mine {i}")
            os.replace(tmp, target)
            i += 1

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    try:
        for _ in range(1500):
            staging.write_back()
            if (host / "race.txt").exists() or (host / "race.txt").is_symlink():
                assert not (host / "race.txt").is_symlink()
                assert (host / "race.txt").read_text().startswith("mine ")
    finally:
        stop.set()
        thread.join()
    assert (host / "analysis.ipynb").read_text() == '{"cells": []}' and (tmp_path / "secret").read_text() == "SECRET"


@pytest.mark.parametrize(
    "name,why",
    [
        ("/etc/passwd", "absolute path"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("", "empty"),
        (".", "directory itself"),
        ("a\nb", "control character"),
        (b"\xff", "not valid UTF-8"),
        ("x" * 300, "longer than 255"),
    ],
)
def test_names_that_may_not_cross(name: str | bytes, why: str) -> None:
    with pytest.raises(names.NameError_, match=why):
        names.split(name)


def test_names_that_may() -> None:
    assert names.split("data/./raw//x.csv") == ("data", "raw", "x.csv")
    assert names.protected(("data", "x.csv")) is None


def test_write_file_refuses_what_is_not_a_regular_file(host: Path) -> None:
    root = hostfs.open_root(str(host))
    try:
        (host / "adir").mkdir()
        with pytest.raises(WorkspaceError, match="a directory of that name"):
            hostfs.write_file(root, ("adir",), [b"x"], 10)
        with pytest.raises(WorkspaceError, match="larger than the limit"):
            hostfs.write_file(root, ("big",), [b"x" * 11], 10)
        assert not [p for p in host.iterdir() if ".sandbox-" in p.name]  # no temporary file left
        os.mkfifo(host / "fifo")
        with pytest.raises(WorkspaceError, match="a FIFO"):
            hostfs.open_file(root, ("fifo",))
    finally:
        os.close(root)


def test_the_copies_of_dead_kernels_are_swept(tmp_path: Path) -> None:
    from sandbox_kernel.workspace.staging import PREFIX, sweep_stale

    dead, alive = tmp_path / f"{PREFIX}999999999-x", tmp_path / f"{PREFIX}{os.getpid()}-y"
    (dead / "sub").mkdir(parents=True)
    alive.mkdir()
    (tmp_path / f"{PREFIX}999999998-link").symlink_to(alive)
    sweep_stale(str(tmp_path))
    assert not dead.exists() and alive.exists() and (tmp_path / f"{PREFIX}999999998-link").is_symlink()


def test_the_workspace_mode_is_checked_and_refused_where_it_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox_kernel.config import Sandbox
    from sandbox_kernel.errors import ConfigError
    from sandbox_kernel.local.workspace import LocalWorkspace

    # Under gVisor no host copy is bound: the kernel copies and writes back through the agent.
    through = LocalWorkspace(Sandbox(workspace="read-write").limits(), gvisor=True, host_dir=str(tmp_path))
    assert through.through_agent and through.staging is None and through.prepare(1234) is None
    assert "a copy in gVisor's memory" in through.describe()
    plain = LocalWorkspace(Sandbox(workspace="read-write").limits(), gvisor=False, host_dir=str(tmp_path))
    assert not plain.through_agent and plain.staging is not None
    plain.close()
    home = LocalWorkspace(Sandbox().limits(), gvisor=False, host_dir=os.path.expanduser("~"))
    assert home.mode == "hidden" and "the kernel's home directory" in (home.take_notice() or "")
    assert LocalWorkspace(Sandbox().limits(), gvisor=False, host_dir="/etc").mode == "hidden"
    monkeypatch.setenv("SANDBOX_WORKSPACE", "sometimes")
    with pytest.raises(ConfigError, match="SANDBOX_WORKSPACE"):
        Sandbox().limits()
