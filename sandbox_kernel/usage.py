"""What a sandbox consumes: the ``usage_reply`` JupyterLab shows, and per-cell accounting.

Backends measure (:meth:`SandboxSession.usage`, :meth:`SandboxSession.cell_usage_start` and
:meth:`SandboxSession.cell_usage_end`); this module only formats and keeps the figures, so it
knows neither Jupyter sockets nor cgroups.

``usage_reply`` (jupyter-resource-usage's "Kernel usage" panel, fed by
``/api/metrics/v1/kernel_usage/get_usage/<kernel>``, shows ``hostname``, ``pid``, ``kernel_cpu``,
``kernel_memory`` and, with ``show_host_usage`` on, ``host_cpu_percent`` "used on ``cpu_count``
CPUs" and ``host_virtual_memory``): the kernel's code runs in the sandbox, so the sandbox is
its host. ``kernel_memory`` is the sandbox's memory (what its limit is enforced against),
``kernel_cpu`` its CPU in percent of one core (like ipykernel's), ``cpu_count`` and
``host_cpu_percent`` its CPU limit and the share of it in use, and ``host_virtual_memory``
its memory limit: ``total`` = the limit, ``available``/``free`` = what is left of it. The
``sandbox`` key carries the same figures under plain names, for programs.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, cast


def format_bytes(value: int) -> str:
    """``254.4 MiB``: one decimal in the largest binary unit that keeps the number below 1024."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@dataclass(frozen=True)
class Usage:
    """The sandbox's resource use at one moment (what :meth:`SandboxSession.usage` returns)."""

    memory: int | None = None  # bytes charged to the sandbox now
    memory_limit: int | None = None
    memory_peak: int | None = None  # since the last reset (per cell) or start
    cpu_seconds: float | None = None  # cumulative CPU time of the sandbox
    cpu_limit: float | None = None  # cores
    pids: int | None = None
    active: int | None = None  # memory.stat active_anon + active_file
    inactive: int | None = None
    uptime: float | None = None  # seconds since this sandbox started
    hostname: str | None = None  # where the sandbox runs ("pod ns/name", …)
    source: str = ""  # how it was measured, e.g. "cgroup v1"
    reason: str | None = None  # why figures are missing


@dataclass(frozen=True)
class CellUsage:
    """One cell: wall time and what the backend could measure (None: not measured)."""

    wall: float
    cpu: float | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None
    reason: str | None = None  # why cpu or memory_peak is missing

    def metadata(self) -> dict[str, Any]:
        """The ``sandbox_usage`` entry of the cell's ``execute_reply`` metadata."""
        out: dict[str, Any] = {"wall_seconds": round(self.wall, 6)}
        if self.cpu is not None:
            out["cpu_seconds"] = round(self.cpu, 6)
        if self.memory_peak is not None:
            out["memory_peak_bytes"] = self.memory_peak
        if self.memory_limit:
            out["memory_limit_bytes"] = self.memory_limit
        if self.reason:
            out["unmeasured"] = self.reason
        return out

    def warning(self, threshold: float = 0.9) -> str | None:
        """A one-line stderr warning when the cell's peak came above ``threshold`` of the limit."""
        if not self.memory_peak or not self.memory_limit or self.memory_peak <= threshold * self.memory_limit:
            return None
        share = 100 * self.memory_peak / self.memory_limit
        return (
            f"[sandbox] this cell's memory peaked at {format_bytes(self.memory_peak)}, {share:.0f} % of the "
            f"sandbox's limit of {format_bytes(self.memory_limit)}; more gets it killed (raise Sandbox.memory_limit)\n"
        )


class CpuMeter:
    """CPU percent between two usage samples (the first against the sandbox's start)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._last: tuple[float, float] | None = None

    def reset(self) -> None:
        self._last = None

    def percent(self, cpu_seconds: float | None, uptime: float | None = None) -> float | None:
        """Percent of one core since the last sample; for the first sample (or the first of a
        new sandbox) the average since the sandbox started, when its ``uptime`` is known."""
        if cpu_seconds is None:
            return None
        now = self._clock()
        last, self._last = self._last, (now, cpu_seconds)
        if last is None or cpu_seconds < last[1] or now <= last[0] or (uptime is not None and uptime < now - last[0]):
            return 100.0 * cpu_seconds / uptime if uptime else 0.0
        return cast("float | None", 100.0 * (cpu_seconds - last[1]) / (now - last[0]))


def usage_reply(usage: Usage | None, cpu_percent: float | None, hostname: str, pid: int) -> dict[str, Any]:
    """The content of a ``usage_reply`` for ``usage`` (None: the sandbox could not tell)."""
    reply: dict[str, Any] = {"hostname": usage.hostname if usage and usage.hostname else hostname, "pid": pid}
    # Always there: the panel reads host_virtual_memory.active unguarded (a reply without it
    # breaks the panel until the page is reloaded); missing figures show as 0.
    reply["host_virtual_memory"] = {}
    if usage is None:
        reply["sandbox"] = {"reason": "the sandbox is not running"}
        return reply
    if usage.memory_limit:
        reply["host_virtual_memory"] = {"total": usage.memory_limit}
    sandbox: dict[str, Any] = {}
    for key in (
        "memory",
        "memory_limit",
        "memory_peak",
        "cpu_seconds",
        "cpu_limit",
        "pids",
        "uptime",
        "source",
        "reason",
    ):
        value = getattr(usage, key)
        if value is not None and value != "":
            sandbox[key] = value
    if cpu_percent is not None:
        sandbox["cpu_percent"] = round(cpu_percent, 1)  # of one core
        reply["kernel_cpu"] = round(cpu_percent, 1)
        if usage.cpu_limit:
            reply["cpu_count"] = usage.cpu_limit
            share = cpu_percent / usage.cpu_limit
            if share:
                reply["host_cpu_percent"] = round(share, 1)
    if usage.memory is not None:
        reply["kernel_memory"] = usage.memory
        if usage.memory_limit:
            left = max(0, usage.memory_limit - usage.memory)
            memory = {
                "total": usage.memory_limit,
                "available": left,
                "free": left,
                "used": usage.memory,
                "percent": round(100 * usage.memory / usage.memory_limit, 1),
            }
            if usage.active is not None:
                memory["active"] = usage.active
            if usage.inactive is not None:
                memory["inactive"] = usage.inactive
            reply["host_virtual_memory"] = memory
    reply["sandbox"] = sandbox
    return reply


class Accounting:
    """The last cells' usage and the totals since the kernel started (``%sandbox usage``)."""

    def __init__(self, keep: int = 10) -> None:
        self.recent: collections.deque[tuple[int, CellUsage]] = collections.deque(maxlen=keep)
        self.cells = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.peak = 0

    def add(self, count: int, cell: CellUsage) -> None:
        self.recent.append((count, cell))
        self.cells += 1
        self.wall += cell.wall
        self.cpu += cell.cpu or 0.0
        self.peak = max(self.peak, cell.memory_peak or 0)

    def report(self, now: Usage | None) -> str:
        rows = [("CELL", "WALL", "CPU", "PEAK MEMORY")]
        for count, cell in self.recent:
            rows.append(
                (
                    f"[{count}]",
                    f"{cell.wall:.3f} s",
                    "-" if cell.cpu is None else f"{cell.cpu:.3f} s",
                    "-" if cell.memory_peak is None else format_bytes(cell.memory_peak),
                )
            )
        rows.append(
            (
                f"total ({self.cells} cells)",
                f"{self.wall:.3f} s",
                f"{self.cpu:.3f} s",
                format_bytes(self.peak) if self.peak else "-",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
        if now is not None:
            if now.memory is not None:
                limit = f" of {format_bytes(now.memory_limit)}" if now.memory_limit else ""
                lines.append(
                    f"now: memory {format_bytes(now.memory)}{limit}"
                    + (
                        f", CPU {now.cpu_seconds:.3f} s since the sandbox started"
                        if now.cpu_seconds is not None
                        else ""
                    )
                )
            if now.reason:
                lines.append(f"note: {now.reason}")
        reasons = {cell.reason for _, cell in self.recent if cell.reason}
        for reason in sorted(reasons):
            lines.append(f"note: {reason}")
        return "\n".join(lines)
