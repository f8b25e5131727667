"""Issue 11's agent defects, seen as a user sees them: real local kernels through jupyter_client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernels import errors, run_cell, running_kernel, text
from processes import sandbox_groups

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.fixture(scope="module")
def bash(local_kernelspecs: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-bash") as (km, kc):
        yield km, kc


def _sandbox_pids(kernel_pid: int) -> int:
    return sum(int((g / "pids.current").read_text()) for g in sandbox_groups(kernel_pid))


def test_bash_out_of_memory_is_reported_as_such(bash: tuple[Any, Any]) -> None:
    """It was reported as "the shell exited": the agent replaced the OOM-killed shell itself."""
    _km, kc = bash
    reply, out = run_cell(kc, "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived", timeout=120)
    assert reply["status"] == "error"
    assert [e["ename"] for e in errors(out)] == ["OutOfMemory"], errors(out)
    reply, out = run_cell(kc, "echo alive", timeout=60)
    assert reply["status"] == "ok" and "alive" in text(out)


def test_bash_fork_bomb_ends_with_its_cell(bash: tuple[Any, Any]) -> None:
    """A fork bomb kept running (at the pids limit) after its cell returned ok."""
    km, kc = bash
    run_cell(kc, "%timeout 20")
    reply, out = run_cell(kc, "bomb() { bomb | bomb & }; bomb; sleep 2; echo returned", timeout=90)
    deadline = time.monotonic() + 10
    while _sandbox_pids(km.provisioner.process.pid) > 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandbox_pids(km.provisioner.process.pid) <= 12, "the bomb outlived its cell"
    reply, out = run_cell(kc, "echo alive", timeout=60)
    assert reply["status"] == "ok" and "alive" in text(out)


def test_an_interrupted_bash_cell_leaves_the_next_cells_alone(bash: tuple[Any, Any]) -> None:
    km, kc = bash
    kc.execute("sleep 100")
    time.sleep(1.0)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"
    for i in range(3):
        reply, out = run_cell(kc, f"sleep 0.8; echo next{i}", timeout=30)
        assert reply["status"] == "ok" and f"next{i}" in text(out), (i, errors(out))
