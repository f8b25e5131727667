#!/usr/bin/env python
"""Local-backend benchmarks: Sandbox kernels side by side with ipykernel's own ``python3``.

    python benchmarks/bench_local.py [--cells 200] [--starts 10] [--floods 3] [--json benchmarks/results/local.json]

For each of ``sandbox-python``, ``sandbox-node``, ``sandbox-bash`` and the baseline ``python3``
(ipykernel), in the same run, with the kernels interleaved so that machine drift hits all of them
alike:

1. **start**: ``KernelManager.start_kernel`` until the first output (``execute_result`` or
   ``stream``) of a trivial cell sent right after it (no ``wait_for_ready``, whose 0.2 s IOPub
   flush would swamp the number), then the same kernel's ``shutdown_kernel`` time;
2. **round trip**: a trivial cell (``1``; ``true`` for Bash) measured client-side from sending
   ``execute_request`` until both the ``execute_reply`` and the ``status: idle`` have arrived,
   after a warm-up, p50/p95 over ``--cells`` cells per kernel (one cell per kernel in turn);
   Python kernels also run ``pass`` (no output message at all);
3. **throughput**: a cell that prints about 20 MB to stdout, as MB/s (10^6 bytes) of stream text
   received by the client, with ``--Sandbox.output_limit=64Mi`` so nothing is truncated; and a
   cell printing 100,000 short lines with one write each (time to idle, stream messages).

It also splits the Sandbox kernels' start into its parts: the interpreter importing the kernel
application (``python -c 'import …kernelapp'``, compared with ``ipykernel.kernelapp``) and the
sandbox itself (``LocalSandboxSession.start()`` run in this process: cgroup, bubblewrap, the
agent's ``ready``).

Sandbox kernels need what the local backend needs (root for cgroups, bubblewrap). The client
uses a ZeroMQ context whose reconnect interval is 5 ms instead of 100 ms, so the start time is
not rounded up to the client's next reconnect attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any, Callable

import zmq
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from kernels import write_kernelspecs  # noqa: E402

MB = 1_000_000
FLOOD_MIB = 20
LINES = 100_000

KERNELS: dict[str, dict[str, Any]] = {
    "python3": {
        "language": "python",
        "first": "1",
        "cells": {"1": "1", "pass": "pass"},
        "flood": f"import sys\nfor _ in range({FLOOD_MIB}):\n    sys.stdout.write('x' * (1 << 20))\n",
        "lines": f"for i in range({LINES}):\n    print(i)\n",
    },
    "sandbox-python": {
        "language": "python",
        "first": "1",
        "cells": {"1": "1", "pass": "pass"},
        "flood": f"import sys\nfor _ in range({FLOOD_MIB}):\n    sys.stdout.write('x' * (1 << 20))\n",
        "lines": f"for i in range({LINES}):\n    print(i)\n",
    },
    "sandbox-node": {
        "language": "node",
        "first": "1",
        "cells": {"1": "1"},
        "flood": f"for (let i = 0; i < {FLOOD_MIB}; i++) process.stdout.write('x'.repeat(1 << 20));",
        "lines": f"for (let i = 0; i < {LINES}; i++) console.log(i);",
    },
    "sandbox-bash": {
        "language": "bash",
        "first": "echo 1",
        "cells": {"true": "true"},
        "flood": f"head -c {FLOOD_MIB << 20} /dev/zero | tr '\\0' x",
        "lines": f"for ((i = 0; i < {LINES}; i++)); do echo $i; done",
    },
}
KERNELS["ipykernel-null"] = {
    # ipykernel's own messaging with nothing behind it: the floor any ipykernel-based kernel pays.
    "language": None,
    "first": "1",
    "cells": {"1": "1", "pass": "pass"},
    "flood": None,
    "lines": None,
}
NULL_KERNEL = '''
from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel


class NullKernel(Kernel):
    """Answers every cell at once; \'1\' gives an execute_result, like the other kernels."""

    implementation = "null"
    implementation_version = "0"
    banner = "null kernel (benchmark floor)"
    language_info = {"name": "null", "mimetype": "text/plain", "file_extension": ".txt"}

    async def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False, **kwargs):
        if not silent and code.strip() not in ("", "pass", "true"):
            self.send_response(self.iopub_socket, "execute_result", {"execution_count": self.execution_count, "data": {"text/plain": code.strip()}, "metadata": {}})
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}


IPKernelApp.launch_instance(kernel_class=NullKernel)
'''


def write_null_kernelspec(root: Path) -> None:
    target = root / "kernels" / "ipykernel-null"
    target.mkdir(parents=True, exist_ok=True)
    (target / "null_kernel.py").write_text(NULL_KERNEL)
    spec = {
        "argv": [sys.executable, str(target / "null_kernel.py"), "-f", "{connection_file}"],
        "display_name": "null",
        "language": "null",
    }
    (target / "kernel.json").write_text(json.dumps(spec))


SANDBOX_ARGS = ["--Sandbox.output_limit=64Mi"]
SANDBOX_IMPORTS = (
    "sandbox_kernel.kernelapp, sandbox_kernel.kernel, sandbox_kernel.kernel_sockets, sandbox_kernel.local.backend"
)
KERNEL_LOG: Any = subprocess.DEVNULL


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank on the sorted values)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(values: list[float], scale: float = 1.0) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = [x * scale for x in values]
    return {
        "n": len(v),
        "p50": pct(v, 50),
        "p95": pct(v, 95),
        "mean": statistics.fmean(v),
        "min": min(v),
        "max": max(v),
    }


# -- talking to a kernel -----------------------------------------------------------------------


class Kernel:
    """One running kernel and a blocking client to it."""

    def __init__(self, name: str, context: zmq.Context) -> None:
        self.name = name
        self.km = KernelManager(kernel_name=name, context=context)
        self.kc: Any = None

    def start(self) -> None:
        extra = SANDBOX_ARGS if self.name.startswith("sandbox-") else []
        # The kernels' own stderr (the TCP-without-encryption warning, logs) goes to a file.
        self.km.start_kernel(extra_arguments=extra, stderr=KERNEL_LOG, stdout=KERNEL_LOG)
        self.kc = self.km.client()
        self.kc.start_channels()

    def wait_iopub(self, timeout: float = 60) -> float:
        """Wait until IOPub is subscribed (ipykernel >= 7 says ``iopub_welcome``); return when.

        Sending a cell before that would lose its outputs: the SUB socket may still be connecting.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.5)
            except Empty:
                if not self.km.is_alive():
                    raise TimeoutError(f"{self.name}: the kernel died while starting") from None
                continue
            if msg["msg_type"] in ("iopub_welcome", "status"):
                return time.perf_counter()
        raise TimeoutError(f"{self.name}: no IOPub message within {timeout} s")

    def run(
        self, code: str, timeout: float = 120, on_output: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[float | None, dict[str, Any]]:
        """Execute ``code``; return (time of the first output or None, reply content).

        Returns once both the execute_reply and the idle status of this request have arrived.
        """
        kc = self.kc
        msg_id = kc.execute(code)
        deadline = time.monotonic() + timeout
        first: float | None = None
        idle = False
        while not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no idle after {timeout} s for {code[:40]!r}")
            try:
                msg = kc.iopub_channel.get_msg(timeout=left)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind in ("stream", "execute_result", "display_data", "error"):
                if first is None:
                    first = time.perf_counter()
                if on_output is not None:
                    on_output(msg)
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no execute_reply after {timeout} s")
            reply = kc.get_shell_msg(timeout=left)
            if reply["parent_header"].get("msg_id") == msg_id:
                return first, reply["content"]

    def stop(self) -> float:
        t0 = time.perf_counter()
        if self.kc is not None:
            self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
        return time.perf_counter() - t0


# -- the measurements --------------------------------------------------------------------------


def bench_start(names: list[str], rounds: int, context: zmq.Context, results: dict[str, Any]) -> None:
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            kernel = Kernel(name, context)
            t0 = time.perf_counter()
            kernel.start()
            spawned = time.perf_counter()
            try:
                subscribed = kernel.wait_iopub()
                first, reply = kernel.run(KERNELS[name]["first"], timeout=60)
            except TimeoutError as exc:
                first, reply = None, {"status": "error", "ename": "TimeoutError", "evalue": str(exc)}
            done = time.perf_counter()
            shutdown = kernel.stop()
            entry = results[name]["raw"]
            if reply.get("status") != "ok" or first is None:
                entry.setdefault("start_errors", []).append(str(reply.get("evalue") or reply))
                log(f"  start {name}: FAILED {reply.get('ename')}: {reply.get('evalue')}")
                continue
            entry["start"].append(first - t0)
            entry["start_reply"].append(done - t0)
            entry["start_spawn"].append(spawned - t0)
            entry["start_iopub"].append(subscribed - t0)
            entry["shutdown"].append(shutdown)
            log(f"  start {name}: {1000 * (first - t0):.0f} ms (shutdown {1000 * shutdown:.0f} ms)")


def bench_cells(kernels: list[Kernel], cells: int, warmup: int, results: dict[str, Any]) -> None:
    jobs = [(k, label, code) for k in kernels for label, code in KERNELS[k.name]["cells"].items()]
    for k, label, code in jobs:  # warm-up (imports, JIT, caches) outside the measurement
        for _ in range(warmup):
            k.run(code)
    for i in range(cells):
        # one cell per (kernel, cell) in turn; rotate the order so no kernel is always first
        shift = i % len(jobs)
        for k, label, code in jobs[shift:] + jobs[:shift]:
            t0 = time.perf_counter()
            _, reply = k.run(code)
            elapsed = time.perf_counter() - t0
            if reply.get("status") != "ok":
                raise RuntimeError(f"{k.name}: {code!r} failed: {reply}")
            results[k.name]["raw"].setdefault(f"cell {label}", []).append(elapsed)


def bench_flood(kernels: list[Kernel], floods: int, results: dict[str, Any]) -> None:
    kernels = [k for k in kernels if KERNELS[k.name]["flood"]]
    for r in range(floods):
        for k in kernels[r % len(kernels) :] + kernels[: r % len(kernels)]:
            got = {"bytes": 0, "messages": 0}

            def count(msg: dict[str, Any]) -> None:
                if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                    got["bytes"] += len(msg["content"]["text"].encode("utf-8"))
                    got["messages"] += 1

            t0 = time.perf_counter()
            _, reply = k.run(KERNELS[k.name]["flood"], timeout=300, on_output=count)
            elapsed = time.perf_counter() - t0
            entry = results[k.name]["raw"]
            if reply.get("status") != "ok" or got["bytes"] < FLOOD_MIB << 20:
                log(f"  flood {k.name}: {got['bytes']} bytes, reply {reply.get('status')} {reply.get('evalue', '')}")
            entry["flood_seconds"].append(elapsed)
            entry["flood_bytes"].append(got["bytes"])
            entry["flood_messages"].append(got["messages"])
            entry["flood_mbps"].append(got["bytes"] / MB / elapsed)
            log(
                f"  flood {k.name}: {got['bytes'] / MB:.1f} MB in {elapsed:.2f} s = {got['bytes'] / MB / elapsed:.1f} MB/s, {got['messages']} stream messages"
            )


def bench_lines(kernels: list[Kernel], rounds: int, results: dict[str, Any]) -> None:
    """A cell printing LINES short lines, one write each: the per-message cost of streaming."""
    kernels = [k for k in kernels if KERNELS[k.name].get("lines")]
    expected = sum(len(str(i)) + 1 for i in range(LINES))
    for r in range(rounds):
        for k in kernels[r % len(kernels) :] + kernels[: r % len(kernels)]:
            got = {"chars": 0, "messages": 0}

            def count(msg: dict[str, Any]) -> None:
                if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                    got["chars"] += len(msg["content"]["text"])
                    got["messages"] += 1

            t0 = time.perf_counter()
            _, reply = k.run(KERNELS[k.name]["lines"], timeout=300, on_output=count)
            elapsed = time.perf_counter() - t0
            if reply.get("status") != "ok" or got["chars"] != expected:
                log(
                    f"  lines {k.name}: {got['chars']} of {expected} characters, reply {reply.get('status')} {reply.get('evalue', '')}"
                )
            entry = results[k.name]["raw"]
            entry.setdefault("lines_seconds", []).append(elapsed)
            entry.setdefault("lines_messages", []).append(got["messages"])
            log(f"  lines {k.name}: {LINES} lines in {elapsed:.2f} s, {got['messages']} stream messages")


def bench_parts(names: list[str], rounds: int, cells: int, results: dict[str, Any]) -> None:
    """The sandbox's own share: importing the kernel app, starting the sandbox alone, and a
    trivial cell through ``AgentSession.execute`` with no Jupyter in between."""
    # What each kernel process imports before it answers (the Sandbox kernel's own modules, its
    # protocol base and the local backend; ipykernel's app imports its kernel and IPython).
    imports: dict[str, list[float]] = {"ipykernel.kernelapp": [], SANDBOX_IMPORTS: []}
    for _ in range(rounds):
        for module, times in imports.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            times.append(time.perf_counter() - t0)
    results["_parts"] = {"import " + m: summary(t, 1000) for m, t in imports.items()}

    from sandbox_kernel.sessions import make_session

    async def sandbox_start(language: str) -> float:
        session = make_session("local", language)
        t0 = time.perf_counter()
        await session.start()
        elapsed = time.perf_counter() - t0
        await session.close()
        return elapsed

    async def sandbox_cells(language: str, code: str, cells: int) -> list[float]:
        session = make_session("local", language)
        await session.start()
        try:
            for _ in range(20):
                async for _event in session.execute(code):
                    pass
            times = []
            for _ in range(cells):
                t0 = time.perf_counter()
                async for _event in session.execute(code):
                    pass
                times.append(time.perf_counter() - t0)
            return times
        finally:
            await session.close()

    for name in names:
        if name.startswith("sandbox-"):
            language = KERNELS[name]["language"]
            label, code = next(iter(KERNELS[name]["cells"].items()))
            try:
                results[name]["raw"][f"sandbox_cell {label}"] = asyncio.run(sandbox_cells(language, code, cells))
            except Exception as exc:  # noqa: BLE001
                results[name]["raw"].setdefault("sandbox_start_errors", []).append(str(exc))

    for _ in range(rounds):
        for name in names:
            if not name.startswith("sandbox-"):
                continue
            try:
                elapsed = asyncio.run(sandbox_start(KERNELS[name]["language"]))
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                results[name]["raw"].setdefault("sandbox_start_errors", []).append(str(exc))
                continue
            results[name]["raw"].setdefault("sandbox_start", []).append(elapsed)


def bench_accounting(cells: int) -> dict[str, Any]:
    """What per-cell accounting adds to a cell (issue 13: at most 0.2 ms p50): the kernel's own
    calls around a trivial cell on a real local Python sandbox, timed alone — the backend's
    readings before (reset the peak, CPU time) and after (CPU time, peak), the accounting, the
    execute_reply metadata and the warning check."""
    from sandbox_kernel.sessions import make_session
    from sandbox_kernel.usage import Accounting

    async def run() -> list[float]:
        session = make_session("local", "python")
        await session.start()
        accounting = Accounting()
        times = []
        try:
            for n in range(cells + 20):
                t0 = time.perf_counter()
                session.cell_usage_start()
                t1 = time.perf_counter()
                async for _event in session.execute("1"):
                    pass
                t2 = time.perf_counter()
                cell = session.cell_usage_end(t2 - t1)
                accounting.add(n, cell)
                cell.metadata()
                cell.warning()
                t3 = time.perf_counter()
                if n >= 20:
                    times.append((t1 - t0) + (t3 - t2))
            return times
        finally:
            await session.close()

    return summary(asyncio.run(run()), 1000)


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("ipykernel", "jupyter_client", "zmq", "tornado"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            pass
    for tool, argv in {
        "node": ["node", "--version"],
        "bash": ["bash", "-c", "echo $BASH_VERSION"],
        "bwrap": ["bwrap", "--version"],
    }.items():
        try:
            versions[tool] = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _fmt(d: dict[str, Any] | None, digits: int = 1) -> str:
    return f"{d['p50']:.{digits}f} / {d['p95']:.{digits}f}" if d and d.get("n") else "–"


def _cell_label(summary_: dict[str, Any]) -> str | None:
    return next((k for k in summary_ if k.startswith("cell ") and k != "cell pass"), None)


def table(results: dict[str, Any], names: list[str]) -> str:
    """The headline table (markdown)."""
    base = results.get("python3", {}).get("summary", {}).get("cell 1")
    rows = [
        "| kernel | start → first output, p50 / p95 (best) (ms) | trivial cell, p50 / p95 (ms) | p50 over python3 (ms) "
        "| `pass`, p50 / p95 (ms) | stdout, median (min–max) MB/s | stream messages per 20 MiB "
        f"| {LINES // 1000}k lines: median s (messages) | shutdown p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        s = results[name]["summary"]
        label = _cell_label(s)
        cell = s.get(label) if label else None
        over = "–"
        if name != "python3" and cell and base:
            over = f"{cell['p50'] - base['p50']:+.2f}"
        flood = s.get("flood_mbps")
        throughput = f"{flood['p50']:.0f} ({flood['min']:.0f}–{flood['max']:.0f})" if flood else "–"
        messages = f"{s['flood_messages']['p50']:.0f}" if s.get("flood_messages") else "–"
        shutdown = f"{s['shutdown']['p50']:.0f}" if s.get("shutdown") else "–"
        lines = f"{s['lines_seconds']['p50']:.2f} ({s['lines_messages']['p50']:.0f})" if s.get("lines_seconds") else "–"
        what = f" (`{label[5:]}`)" if label else ""
        start = f"{_fmt(s.get('start'), 0)} ({s['start']['min']:.0f})" if s.get("start") else "–"
        rows.append(
            f"| {name} | {start} | {_fmt(cell, 2)}{what} | {over} | {_fmt(s.get('cell pass'), 2)} "
            f"| {throughput} | {messages} | {lines} | {shutdown} |"
        )
    return "\n".join(rows)


def share_table(results: dict[str, Any], names: list[str]) -> str:
    """Where a Sandbox kernel's time goes (markdown)."""
    rows = [
        "| kernel | IOPub up after (ms p50) | start → first output (ms p50) | sandbox alone: start, p50 / p95 (ms) "
        "| sandbox alone: trivial cell, p50 / p95 (ms) | trivial cell through Jupyter (ms p50) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        s = results[name]["summary"]
        label = _cell_label(s)
        cell = s.get(label) if label else None
        alone = next((v for k, v in s.items() if k.startswith("sandbox_cell ")), None)
        iopub = f"{s['start_iopub']['p50']:.0f}" if s.get("start_iopub") else "–"
        start = f"{s['start']['p50']:.0f}" if s.get("start") else "–"
        rows.append(
            f"| {name} | {iopub} | {start} | {_fmt(s.get('sandbox_start'), 0)} | {_fmt(alone, 2)} "
            f"| {format(cell['p50'], '.2f') if cell else '–'} |"
        )
    parts = results.get("_parts", {})
    lines = ["\n".join(rows), "", "| interpreter start + import | p50 (ms) | p95 (ms) |", "|---|---|---|"]
    for label, v in parts.items():
        lines.append(f"| `python -c '{label}'` | {v['p50']:.0f} | {v['p95']:.0f} |")
    base = results.get("python3", {}).get("summary", {}).get("start")
    if base:
        lines.append("")
        for name in names:
            start = results[name]["summary"].get("start")
            if name != "python3" and start:
                lines.append(
                    f"Start → first output, {name}: {start['p50']:.0f} ms p50 = {start['p50'] / base['p50']:.2f} × python3's {base['p50']:.0f} ms"
                )
    acc = results.get("_accounting")
    if acc:
        lines += [
            "",
            f"Per-cell accounting (sandbox-python, {acc['n']} cells): {acc['p50']:.3f} ms p50, {acc['p95']:.3f} ms p95",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200, help="measured trivial cells per kernel (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured cells per kernel first (default 20)")
    parser.add_argument("--starts", type=int, default=10, help="kernel starts per kernel (default 10)")
    parser.add_argument("--floods", type=int, default=3, help="20 MB output cells per kernel (default 3)")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated subset of " + ", ".join(KERNELS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kernel-log", type=Path, help="append the kernels' stdout/stderr here (default: discarded)")
    parser.add_argument("--accounting-only", action="store_true", help="only time per-cell accounting (ms per cell)")
    args = parser.parse_args()
    if args.accounting_only:
        print(json.dumps({"accounting_ms": bench_accounting(args.cells), "loadavg": os.getloadavg()}, indent=1))
        return 0
    names = [n for n in args.kernels.split(",") if n]
    for n in names:
        if n not in KERNELS:
            parser.error(f"unknown kernel {n!r}")

    # An installed package has its bytecode (pip compiles it at install, as it did ipykernel's and
    # IPython's); without it every kernel start would compile the package's ~40 modules, and
    # this machine's environment sets PYTHONDONTWRITEBYTECODE, so nothing would write it.
    compileall.compile_dir(str(REPO / "sandbox_kernel"), quiet=1)
    global KERNEL_LOG
    if args.kernel_log:
        KERNEL_LOG = open(args.kernel_log, "ab")  # noqa: SIM115 - open for the whole run
    context = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, 5)

    results: dict[str, Any] = {
        name: {
            "raw": {
                k: []
                for k in (
                    "start",
                    "start_reply",
                    "start_spawn",
                    "start_iopub",
                    "shutdown",
                    "flood_seconds",
                    "flood_bytes",
                    "flood_messages",
                    "flood_mbps",
                )
            }
        }
        for name in names
    }
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        root = write_kernelspecs(Path(tmp), backend="local")
        write_null_kernelspec(root)
        os.environ["JUPYTER_PATH"] = str(root) + (
            os.pathsep + os.environ["JUPYTER_PATH"] if os.environ.get("JUPYTER_PATH") else ""
        )

        log(f"[1/4] start: {args.starts} starts per kernel")
        bench_start(names, args.starts, context, results)

        log(f"[2/4] start breakdown: {args.starts} rounds")
        bench_parts(names, args.starts, args.cells, results)
        if "sandbox-python" in names:
            results["_accounting"] = bench_accounting(args.cells)

        working = [n for n in names if results[n]["raw"]["start"]]
        for name in sorted(set(names) - set(working)):
            log(f"{name} never started; left out of the rest")
        kernels = [Kernel(name, context) for name in working]
        try:
            for k in kernels:
                k.start()
                k.wait_iopub()
                k.run(KERNELS[k.name]["first"])
            log(f"[3/4] round trip: {args.warmup} warm-up + {args.cells} cells per kernel, interleaved")
            bench_cells(kernels, args.cells, args.warmup, results)
            log(f"[4/4] throughput: {args.floods} x {FLOOD_MIB} MiB and {args.floods} x {LINES} lines per kernel")
            bench_flood(kernels, args.floods, results)
            bench_lines(kernels, args.floods, results)
        finally:
            for k in kernels:
                try:
                    k.stop()
                except Exception as exc:  # noqa: BLE001
                    log(f"stopping {k.name} failed: {exc}")

    for name in names:
        raw = results[name]["raw"]
        results[name]["summary"] = {
            key: summary(values, 1 if key.startswith(("flood_", "lines_")) else 1000)
            for key, values in raw.items()
            if values and isinstance(values[0], (int, float))
        }
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "loadavg": {"before": load_before, "after": os.getloadavg()},
        "units": {
            "start, cells, shutdown, sandbox_start": "ms",
            "flood_mbps": "MB/s (10^6 bytes)",
            "flood_seconds": "s",
        },
        "flood_bytes_expected": FLOOD_MIB << 20,
        "results": results,
    }
    print(table(results, names))
    print()
    print(share_table(results, names))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
