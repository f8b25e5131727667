"""Host processes and the local sandbox's cgroups, as the tests look at them (read from /proc
and /sys/fs/cgroup; nothing here changes them).

Each local sandbox gets the cgroup ``sandbox-kernel/k<kernel pid>-<n>`` (local/cgroups.py): on
cgroup v1 in the pids hierarchy (the one every sandbox has), on v2 in the unified one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

CGROUP_V1_PIDS = Path("/sys/fs/cgroup/pids/sandbox-kernel")
CGROUP_V2 = Path("/sys/fs/cgroup/sandbox-kernel")


def sandbox_cgroup_parent() -> Path:
    """Where the sandboxes' cgroups are: the v1 pids hierarchy if there is one, else v2's."""
    return CGROUP_V1_PIDS if CGROUP_V1_PIDS.is_dir() else CGROUP_V2


def sandbox_groups(kernel_pid: int | str = "*") -> list[Path]:
    """The cgroups of a kernel's sandboxes (one per sandbox it runs); every kernel's with ``*``."""
    return sorted(sandbox_cgroup_parent().glob(f"k{kernel_pid}-*"))


def group_pids(group: Path) -> set[int]:
    """The processes in one cgroup (none once it is gone)."""
    try:
        return {int(pid) for pid in (group / "cgroup.procs").read_text().split()}
    except OSError:
        return set()


def sandbox_pids(kernel_pid: int) -> set[int]:
    """Host pids of every process in the kernel's sandbox cgroups."""
    pids: set[int] = set()
    for group in sandbox_groups(kernel_pid):
        pids |= group_pids(group)
    return pids


def kernel_pid(km: Any) -> int:
    """The pid of a kernel that a jupyter_client KernelManager started."""
    return int(km.provisioner.process.pid)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    return [child for child in all_pids() if parent_pid(child) == pid]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    found = []
    for pid in all_pids():
        fields = _stat(pid)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(pid)
    return found


def wait_gone(pids: Iterable[int], seconds: float = 10) -> list[int]:
    """Wait up to ``seconds`` for the processes to be gone; return those still there."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def descendants_named(ancestor: int, comm: str) -> set[int]:
    """Live processes called ``comm`` (e.g. ``bwrap``) that have ``ancestor`` among their ancestors."""
    found = set()
    for candidate in all_pids():
        try:
            name = Path(f"/proc/{candidate}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if name != comm:
            continue
        pid: int | None = candidate
        while pid and pid > 1:
            pid = parent_pid(pid)
            if pid == ancestor:
                found.add(candidate)
                break
    return found


def sandbox_kernels(parent: int) -> list[int]:
    """The Sandbox kernels among the children of ``parent`` (a Jupyter server, a console)."""
    found = []
    for pid in children(parent):
        try:
            if b"sandbox_kernel.kernelapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found
