"""Memory, CPU and process limits for local sandboxes, through the host's cgroups.

Both cgroup v1 (one hierarchy per controller, as on our CI machines) and the unified v2
hierarchy are handled. Each sandbox gets its own group ``sandbox-kernel/k<kernel pid>-<n>``;
because a SIGKILLed kernel cannot clean up after itself, every new kernel first removes the
empty groups of kernels that no longer exist (:func:`sweep_stale`).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Limits

ROOT = Path("/sys/fs/cgroup")
PARENT = "sandbox-kernel"
V1_CONTROLLERS = ("memory", "cpu", "pids")

CPU_PERIOD_US = 1_000_000
"""The CFS period of ``Sandbox.cpu_limit``'s quota: one second, not the kernel's (and
Kubernetes') 100 ms. The share over every second is the same, but a burst of work within a
second — importing IPython at the sandbox's start, rendering a plot — runs at full speed for up
to ``cpu_limit`` seconds of CPU instead of being spread at half speed over twice the time (at
500m: a 1 MiB plot's savefig 345 -> ~140 ms). A sandbox that keeps the CPU busy is held to its
share just the same, only in coarser steps (runs ``cpu_limit`` s, waits the rest of the second)."""


def version(root: Path = ROOT) -> int | None:
    """2 for the unified hierarchy, 1 for per-controller v1 mounts, None when unusable."""
    if (root / "cgroup.controllers").exists():
        return 2
    if all((root / c).is_dir() for c in V1_CONTROLLERS):
        return 1
    return None


def set_up_parent_groups(root: Path = ROOT) -> str | None:
    """Create the ``sandbox-kernel`` parent group(s) and, on cgroup v2, enable the memory, cpu and
    pids controllers for it and its children: this *writes* to the host's cgroup tree. Called
    once per sandbox start, before :meth:`SandboxCgroup.create`.

    Returns ``None`` when limits can be enforced, else why not (a sentence part for the user).
    """
    v = version(root)
    if v is None:
        return f"no memory, cpu and pids cgroup controllers are mounted under {root}"
    parents = [root / PARENT] if v == 2 else [root / c / PARENT for c in V1_CONTROLLERS]
    for parent in parents:
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            return f"cannot create {parent} ({exc.strerror}); run the kernel as root or give it a delegated cgroup"
    if v == 2:
        try:
            (root / "cgroup.subtree_control").write_text("+memory +cpu +pids")
            (root / PARENT / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        except OSError as exc:
            return f"cannot enable the memory, cpu and pids controllers ({exc.strerror})"
    return None


@dataclass
class SandboxCgroup:
    """The cgroup(s) of one sandbox."""

    name: str
    root: Path = ROOT

    @property
    def paths(self) -> list[Path]:
        if version(self.root) == 2:
            return [self.root / PARENT / self.name]
        paths = [self.root / c / PARENT / self.name for c in V1_CONTROLLERS]
        if _separate_cpuacct(self.root):
            paths.append(self.root / "cpuacct" / PARENT / self.name)  # CPU time (accounting only)
        return paths

    def _file(self, controller: str, v1: str, v2: str) -> Path:
        if version(self.root) == 2:
            return self.root / PARENT / self.name / v2
        return self.root / controller / PARENT / self.name / v1

    def create(self, limits: Limits, extra_memory: int = 0, extra_pids: int = 0) -> None:
        """Apply ``limits`` (plus an allowance for the runtime's own processes, e.g. gVisor's)."""
        for path in self.paths:
            path.mkdir(parents=True, exist_ok=True)
        period = CPU_PERIOD_US
        quota = max(1000, int(limits.cpu_cores * period))
        memory, pids = limits.memory_bytes + extra_memory, limits.pids + extra_pids
        if version(self.root) == 2:
            self._write("memory", "", "memory.max", memory)
            self._write("memory", "", "memory.swap.max", 0, optional=True)
            self._write("cpu", "", "cpu.max", f"{quota} {period}")
            self._write("pids", "", "pids.max", pids)
        else:
            self._write("memory", "memory.limit_in_bytes", "", memory)
            # Without this the sandbox could swap past its limit where swap accounting is on.
            self._write("memory", "memory.memsw.limit_in_bytes", "", memory, optional=True)
            self._write("cpu", "cpu.cfs_period_us", "", period)
            self._write("cpu", "cpu.cfs_quota_us", "", quota)
            self._write("pids", "pids.max", "", pids)

    def _write(self, controller: str, v1: str, v2: str, value: object, optional: bool = False) -> None:
        try:
            self._file(controller, v1, v2).write_text(str(value))
        except OSError:
            if not optional:
                raise

    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.paths]

    def oom_kills(self) -> int:
        """How many times the kernel's OOM killer acted in this group."""
        path = self._file("memory", "memory.oom_control", "memory.events")
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        # Old v1 kernels have no oom_kill counter; hitting the limit is the best evidence left.
        try:
            return int(self._file("memory", "memory.failcnt", "memory.events").read_text().split()[0] or 0) and 1
        except (OSError, ValueError, IndexError):
            return 0

    def usage(self) -> dict[str, int]:
        """Current memory bytes and process count."""
        out: dict[str, int] = {}
        for key, controller, v1, v2 in (
            ("memory", "memory", "memory.usage_in_bytes", "memory.current"),
            ("pids", "pids", "pids.current", "pids.current"),
        ):
            try:
                out[key] = int(self._file(controller, v1, v2).read_text().strip())
            except (OSError, ValueError):
                pass
        return out

    def meter(self) -> "CellMeter":
        """Cheap per-cell readings of this group (CPU time, peak memory)."""
        if version(self.root) == 2:
            base = self.root / PARENT / self.name
            return CellMeter(str(base / "cpu.stat"), str(base / "memory.peak"), v2=True)
        cpu = "cpuacct" if _separate_cpuacct(self.root) else "cpu"
        return CellMeter(
            str(self.root / cpu / PARENT / self.name / "cpuacct.usage"),
            str(self.root / "memory" / PARENT / self.name / "memory.max_usage_in_bytes"),
            v2=False,
        )

    def memory_stat(self) -> dict[str, int]:
        """memory.stat as numbers (v1: the group's own ``total_*`` lines win)."""
        out: dict[str, int] = {}
        try:
            text = self._file("memory", "memory.stat", "memory.stat").read_text()
        except OSError:
            return out
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            try:
                out[key] = int(value)
            except ValueError:
                pass
        return out

    def destroy(self) -> None:
        """Kill whatever is left in the group and remove it."""
        for _ in range(50):
            pids: set[int] = set()
            for procs in self.procs_files():
                try:
                    pids.update(int(p) for p in Path(procs).read_text().split())
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            removed = True
            for path in self.paths:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        removed = False
            if removed:
                return
            time.sleep(0.02)


def _separate_cpuacct(root: Path) -> bool:
    """Whether v1's cpuacct is mounted apart from cpu (as here), not co-mounted as cpu,cpuacct."""
    cpuacct = root / "cpuacct"
    try:
        return cpuacct.is_dir() and os.path.realpath(cpuacct) != os.path.realpath(root / "cpu")
    except OSError:
        return False


def _read_int(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return int(os.read(fd, 64))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


class CellMeter:
    """CPU seconds and peak memory of one group, read with a few system calls (per cell)."""

    def __init__(self, cpu_file: str, peak_file: str, v2: bool) -> None:
        self.cpu_file = cpu_file
        self.peak_file = peak_file
        self.v2 = v2
        self.peak_resettable: bool | None = None  # known after the first reset_peak()

    def cpu_seconds(self) -> float | None:
        if not self.v2:
            ns = _read_int(self.cpu_file)
            return None if ns is None else ns / 1e9
        try:
            with open(self.cpu_file, "rb") as f:
                for line in f:
                    if line.startswith(b"usage_usec "):
                        return int(line.split()[1]) / 1e6
        except (OSError, ValueError, IndexError):
            pass
        return None

    def peak(self) -> int | None:
        return _read_int(self.peak_file)

    def reset_peak(self) -> bool:
        """Start a new peak (v1: write 0 to memory.max_usage_in_bytes). On v2 the peak is not
        reset (writing memory.peak resets it for that open file only): it is the sandbox's."""
        if self.v2 or self.peak_resettable is False:
            return False
        try:
            fd = os.open(self.peak_file, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
            self.peak_resettable = True
        except OSError:
            self.peak_resettable = False
        return self.peak_resettable


def sweep_stale(root: Path = ROOT) -> list[str]:
    """Remove the groups of kernels that are gone (SIGKILLed ones cannot clean up themselves)."""
    removed: list[str] = []
    v = version(root)
    if v is None:
        return removed
    parent = root / PARENT if v == 2 else root / "memory" / PARENT
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("k")]
    except OSError:
        return removed
    for name in names:
        pid = name[1:].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            SandboxCgroup(name, root).destroy()
            removed.append(name)
    return removed
