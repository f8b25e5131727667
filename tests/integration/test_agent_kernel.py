"""Issue 11's agent defects (item 7, "smaller"), seen as a user sees them: real local kernels
through jupyter_client, under both local runtimes (bubblewrap, and gVisor: runsc is installed
in CI by scripts/install-deps.sh). The checks are tests/agent_defects.py's, which the
Kubernetes attack suite runs under runc and gVisor too (tests/security/test_kubernetes_runtimes.py).

/proc, ``id`` and the read-only ``/`` are checked for both runtimes by
tests/security/test_local_seccomp.py (test_no_host_path_pid_or_cgroup_in_proc,
test_id_names_the_sandbox_user_whose_home_is_the_scratch_dir, test_root_file_system_is_read_only).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import agent_defects
from kernels import LOCAL_RUNTIMES, run_cell, running_kernel
from processes import sandbox_groups

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.fixture(scope="module", params=LOCAL_RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def notebook_dir() -> Iterator[Path]:
    """Where the kernels start, as Jupyter starts them: not the checkout (the sandbox sees the
    notebook's directory at /workspace, and its host path in mountinfo)."""
    with tempfile.TemporaryDirectory(prefix="notebook-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.fixture(scope="module")
def bash(local_kernelspecs: Path, runtime: str, notebook_dir: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-bash", argv=[f"--LocalSandbox.runtime={runtime}"], cwd=notebook_dir) as (km, kc):
        yield km, kc


@pytest.fixture(scope="module")
def node(local_kernelspecs: Path, runtime: str, notebook_dir: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-node", argv=[f"--LocalSandbox.runtime={runtime}"], cwd=notebook_dir) as (km, kc):
        yield km, kc


def _sandbox_pids(kernel_pid: int) -> int:
    return sum(int((g / "pids.current").read_text()) for g in sandbox_groups(kernel_pid))


def test_bash_out_of_memory_is_reported_as_such(bash: tuple[Any, Any]) -> None:
    """bubblewrap: the OOM killer SIGKILLs the shell and the agent exits (the sandbox is replaced).
    gVisor: the OOM killer kills gVisor's process that serves the shell's memory (systrap's stub,
    "exe"), the shell exits with status 1 and the agent starts a new one; the kernel tells it was
    the memory limit by the OOM count of the sandbox's cgroup (ShellOutOfMemory)."""
    agent_defects.check_bash_out_of_memory_is_reported_as_such(bash[1])


def test_bash_fork_bomb_ends_with_its_cell(bash: tuple[Any, Any], runtime: str) -> None:
    km, kc = bash
    agent_defects.check_bash_fork_bomb_ends_with_its_cell(kc)
    if runtime == "bubblewrap":
        # Seen from the host too (under gVisor the cgroup holds gVisor's own threads instead).
        deadline = time.monotonic() + 10
        while _sandbox_pids(km.provisioner.process.pid) > 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sandbox_pids(km.provisioner.process.pid) <= 12, "the bomb outlived its cell"


def test_an_interrupted_bash_cell_leaves_the_next_cells_alone(bash: tuple[Any, Any]) -> None:
    agent_defects.check_an_interrupted_bash_cell_leaves_the_next_cells_alone(*bash)


def test_node_closing_stdout_loses_it_for_that_cell_only(node: tuple[Any, Any]) -> None:
    agent_defects.check_node_closing_stdout_loses_it_for_that_cell_only(node[1])


def test_the_kernel_s_host_details_are_not_in_proc(bash: tuple[Any, Any]) -> None:
    """From a Bash sandbox (test_local_seccomp.py does it from Python): no host pid, path or cgroup."""
    km, kc = bash
    run_cell(kc, "true")
    agent_defects.check_no_kernel_host_details_in_proc(kc, km.provisioner.process.pid, "bash")
