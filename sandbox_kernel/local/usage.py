"""A local sandbox's usage (:mod:`sandbox_kernel.usage`'s figures), read from its cgroup.

The session asks for the figures now (the usage panel, ``%sandbox usage``) and around each cell
(its CPU time and peak memory). A sandbox replaced during a cell, or one without a cgroup (limits
not enforced), has no cell figures, and the reason says why.
"""

from __future__ import annotations

from ..config import Limits
from ..usage import CellUsage, Usage
from . import cgroups


class SandboxUsage:
    """The usage of one session's sandboxes, each read from its own cgroup."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._meter: tuple[cgroups.SandboxCgroup, cgroups.CellMeter] | None = None
        self._cell_start: tuple[cgroups.SandboxCgroup, float | None] | None = None

    def now(self, cgroup: cgroups.SandboxCgroup | None, running: bool, uptime: float) -> Usage | None:
        """The sandbox's usage now (``cgroup`` is the running sandbox's, ``uptime`` its age in seconds)."""
        if cgroup is None:
            if not running:
                return None
            return Usage(
                memory_limit=None, source="none", reason="no cgroup: limits are not enforced, usage is not measured"
            )
        meter = self._meter_for(cgroup)
        figures = cgroup.usage()
        stat = cgroup.memory_stat()
        active = inactive = None
        if "active_anon" in stat:
            active = stat["active_anon"] + stat.get("active_file", 0)
            inactive = stat.get("inactive_anon", 0) + stat.get("inactive_file", 0)
        return Usage(
            memory=figures.get("memory"),
            memory_limit=self.limits.memory_bytes,
            memory_peak=meter.peak(),
            cpu_seconds=meter.cpu_seconds(),
            cpu_limit=self.limits.cpu_cores,
            pids=figures.get("pids"),
            uptime=uptime,
            active=active,
            inactive=inactive,
            source=f"cgroup v{cgroups.version()}",
        )

    def _meter_for(self, cgroup: cgroups.SandboxCgroup) -> cgroups.CellMeter:
        if self._meter is None or self._meter[0] is not cgroup:
            self._meter = (cgroup, cgroup.meter())
        return self._meter[1]

    def cell_start(self, cgroup: cgroups.SandboxCgroup | None) -> None:
        """A cell starts in the sandbox of ``cgroup``: its CPU time is counted from here, its peak memory reset."""
        if cgroup is None:
            self._cell_start = None
            return
        meter = self._meter_for(cgroup)
        meter.reset_peak()
        self._cell_start = (cgroup, meter.cpu_seconds())

    def cell_end(self, cgroup: cgroups.SandboxCgroup | None, wall: float) -> CellUsage:
        """The cell that :meth:`cell_start` began ended after ``wall`` seconds; ``cgroup`` is the sandbox's now."""
        start, self._cell_start = self._cell_start, None
        if start is None or cgroup is None:
            return CellUsage(wall, reason="no cgroup: CPU and memory are not measured (limits are not enforced)")
        if start[0] is not cgroup:
            return CellUsage(
                wall, memory_limit=self.limits.memory_bytes, reason="the sandbox was replaced during the cell"
            )
        meter = self._meter_for(cgroup)
        cpu = meter.cpu_seconds()
        before = start[1]
        reason = None
        if meter.v2:
            reason = "cgroup v2: the peak memory is the sandbox's since it started (memory.peak is not reset per cell)"
        elif not meter.peak_resettable:
            reason = "the peak memory is the sandbox's since it started (memory.max_usage_in_bytes could not be reset)"
        return CellUsage(
            wall,
            cpu=None if cpu is None or before is None else max(0.0, cpu - before),
            memory_peak=meter.peak(),
            memory_limit=self.limits.memory_bytes,
            reason=reason,
        )
