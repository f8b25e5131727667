"""Per-sandbox host uids: leases are exclusive, released on close, reclaimed from dead kernels."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox_kernel.local import uids

# The top of the default range: running sandboxes (other tests, real kernels) take the bottom.
FIRST = 1879048192 + 65000


@pytest.fixture(autouse=True)
def no_other_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.name != "test_uids_of_running_processes_are_skipped":
        monkeypatch.setattr(uids, "uids_in_use", set)


def test_parse_range() -> None:
    assert uids.parse_range("1879048192-1879113727") == (1879048192, 1879113727)
    for bad in ("", "5", "10-5", "0-100000", "60000-70000", "a-b", "1000-4294967295"):
        with pytest.raises(ValueError):
            uids.parse_range(bad)


def test_two_leases_never_share_a_uid_and_a_released_one_is_reused(tmp_path: Path) -> None:
    a = uids.allocate(FIRST, FIRST + 9, tmp_path)
    b = uids.allocate(FIRST, FIRST + 9, tmp_path)
    assert a.uid != b.uid
    assert (tmp_path / str(a.uid)).read_text() == f"{os.getpid()}\n"
    a.release()
    c = uids.allocate(FIRST, FIRST + 9, tmp_path)
    assert c.uid == a.uid
    b.release()
    c.release()


def test_another_process_lease_is_respected_until_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; from pathlib import Path; from sandbox_kernel.local import uids; "
            f"l = uids.allocate({FIRST}, {FIRST + 9}, Path({str(tmp_path)!r})); print(l.uid, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        held = int(holder.stdout.readline())
        mine = uids.allocate(FIRST, FIRST + 9, tmp_path)
        assert mine.uid != held
        mine.release()
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    again = uids.allocate(FIRST, FIRST + 9, tmp_path)
    assert again.uid == held  # the host kernel dropped the dead process's lock
    again.release()


def test_uids_of_running_processes_are_skipped(tmp_path: Path) -> None:
    sleeper = (
        subprocess.Popen(["setpriv", f"--reuid={FIRST}", f"--regid={FIRST}", "--clear-groups", "sleep", "30"])
        if os.geteuid() == 0
        else None
    )
    if sleeper is None:
        pytest.skip("needs root to run a process as another uid")
    try:
        for _ in range(250):  # until setpriv has exec'd
            if FIRST in uids.uids_in_use():
                break
            time.sleep(0.02)
        lease = uids.allocate(FIRST, FIRST + 1, tmp_path)
        assert lease.uid == FIRST + 1
        lease.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_uids_with_accounts_are_skipped(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="in use"):
        uids.allocate(65534, 65534, tmp_path)  # nobody


def test_full_range_is_an_error(tmp_path: Path) -> None:
    a = uids.allocate(FIRST, FIRST, tmp_path)
    with pytest.raises(OSError, match="in use"):
        uids.allocate(FIRST, FIRST, tmp_path)
    a.release()
