#!/usr/bin/env python
"""Soak: one kernel runs many cells mixing output, errors, displays and interrupts; its memory must stay flat.

    python benchmarks/bench_soak.py [--cells 10000] [--json benchmarks/results/soak.json]

Each kernel of ``--kernels`` (default: ``sandbox-python`` and the baseline, ipykernel's own
``python3``) is started once, through ``jupyter_client`` from the kernelspecs the tests use
(``tests/kernels.py``), and runs the same ``--cells`` cells; the kernels take turns cell by cell,
so drift on the machine hits them alike. The cells cycle through ten kinds:

    print(i) · one ~4 KB print · raise ValueError · display() of text/plain + text/html ·
    an expression result · a write to stderr · 50 prints of ~70 bytes · an assignment (no
    output) · 1/0 · print, display, print in one cell

(the same ten in Node.js and Bash for ``sandbox-node`` and ``sandbox-bash``; Bash has no
``display()``, so a ``seq`` and a mixed stdout/stderr cell take its place), and every
``--interrupt-every`` (200) cells one is ``time.sleep(10)`` (a 10 s ``setTimeout`` promise in
Node.js, ``sleep 10`` in Bash), interrupted with
``KernelManager.interrupt_kernel()`` ``--interrupt-delay`` (0.1 s) after the kernel said it is
busy with it. Every cell is checked: its ``execute_reply`` and ``status: idle`` arrived, the
reply's status is the expected one (``error`` with the expected exception for the raising and
the interrupted cells), and the expected output arrived (stream text, display, result). A cell
whose reply does not come within ``--timeout`` seconds is *lost*.

Memory: VmRSS of the kernel process (the pid ``KernelManager`` started, from
``/proc/<pid>/status``) after the first cell, every ``--sample-every`` (1000) cells and at the
end; for Sandbox kernels also the summed VmRSS of the sandbox's processes (the kernel process's
descendants: ``sh``, ``setpriv``, ``bwrap``, the agent's supervisor and worker; shared pages
count once per process) and the memory charged to its cgroup (``memory.usage_in_bytes``, page
cache included), which is what the sandbox's memory limit is enforced against.

The exit status is non-zero when a Sandbox kernel's RSS grew by more than ``--max-growth``
(30 MB, 10^6 bytes) from the end of the warm-up (``--warmup`` cells, default 1000) to the
end, or when any cell of any kernel lost its reply or had the wrong outcome.
"""

from __future__ import annotations

import argparse
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

from kernels import write_kernelspecs  # noqa: E402

MB = 1_000_000
KERNEL_LOG: Any = subprocess.DEVNULL


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


# -- the cells ---------------------------------------------------------------------------------
#
# A cell is (kind, code, check); check(reply content, outputs) returns None when the outcome is
# the expected one, else what was wrong. ``outputs`` are the IOPub messages of the request.


def _stream(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream" and m["content"]["name"] == name)


def _kinds(outputs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["content"] for m in outputs if m["msg_type"] == kind]


def expect(
    status: str = "ok",
    stdout: str | None = None,
    stderr: str | None = None,
    displays: list[str] | None = None,
    result: str | None = None,
    ename: str | None = None,
) -> Callable[[dict[str, Any], list[dict[str, Any]]], str | None]:
    def check(reply: dict[str, Any], outputs: list[dict[str, Any]]) -> str | None:
        wrong = []
        if reply.get("status") != status:
            wrong.append(
                f"status {reply.get('status')} ({reply.get('ename')}: {str(reply.get('evalue'))[:80]}), expected {status}"
            )
        if ename is not None:
            errors = _kinds(outputs, "error")
            if reply.get("ename") != ename and not any(e.get("ename") == ename for e in errors):
                wrong.append(
                    f"ename {reply.get('ename')!r} (errors on IOPub: {[e.get('ename') for e in errors]}), expected {ename!r}"
                )
        if stdout is not None and _stream(outputs) != stdout:
            got = _stream(outputs)
            wrong.append(f"stdout {len(got)} chars {got[:60]!r}…, expected {len(stdout)} chars {stdout[:60]!r}…")
        if stderr is not None and _stream(outputs, "stderr") != stderr:
            wrong.append(f"stderr {_stream(outputs, 'stderr')[:60]!r}, expected {stderr[:60]!r}")
        if displays is not None:
            got = [d["data"].get("text/plain") for d in _kinds(outputs, "display_data")]
            if got != displays:
                wrong.append(f"displays {got}, expected {displays}")
        if result is not None:
            got = [r["data"].get("text/plain") for r in _kinds(outputs, "execute_result")]
            if got != [result]:
                wrong.append(f"results {got}, expected [{result!r}]")
        return "; ".join(wrong) or None

    return check


def python_cell(i: int) -> tuple[str, str, Any]:
    kind = i % 10
    if kind == 0:
        return "print", f"print({i})", expect(stdout=f"{i}\n")
    if kind == 1:
        line = f"line {i} " * 400
        return "4KB print", f"print('line {i} ' * 400)", expect(stdout=line + "\n")
    if kind == 2:
        return "raise", f"raise ValueError('soak {i}')", expect("error", ename="ValueError")
    if kind == 3:
        return (
            "display",
            f"display({{'text/plain': 'd{i}', 'text/html': '<b>d{i}</b>'}}, raw=True)",
            expect(displays=[f"d{i}"]),
        )
    if kind == 4:
        return "result", f"{i} * 2", expect(result=str(i * 2))
    if kind == 5:
        return "stderr", f"import sys; sys.stderr.write('e{i}\\n')", expect(stderr=f"e{i}\n")
    if kind == 6:
        text = "".join(f"{j} {'y' * 66}\n" for j in range(50))
        return "50 prints", "for j in range(50):\n    print(j, 'y' * 66)", expect(stdout=text)
    if kind == 7:
        return "assign", f"x{i % 100} = list(range(1000))", expect(stdout="")
    if kind == 8:
        return "1/0", "1/0", expect("error", ename="ZeroDivisionError")
    return (
        "mixed",
        f"print('a{i}')\ndisplay({{'text/plain': 'm{i}'}}, raw=True)\nprint('b{i}')",
        expect(stdout=f"a{i}\nb{i}\n", displays=[f"m{i}"]),
    )


def node_cell(i: int) -> tuple[str, str, Any]:
    kind = i % 10
    if kind == 0:
        return "print", f"console.log({i})", expect(stdout=f"{i}\n")
    if kind == 1:
        return "4KB print", f"console.log('line {i} '.repeat(400))", expect(stdout=f"line {i} " * 400 + "\n")
    if kind == 2:
        return "raise", f"throw new Error('soak {i}')", expect("error", ename="Error")
    if kind == 3:
        return "display", f"display({{'text/plain': 'd{i}', 'text/html': '<b>d{i}</b>'}})", expect(displays=[f"d{i}"])
    if kind == 4:
        return "result", f"{i} * 2", expect(result=str(i * 2))
    if kind == 5:
        return "stderr", f"process.stderr.write('e{i}\\n'); undefined", expect(stderr=f"e{i}\n")
    if kind == 6:
        text = "".join(f"{j} {'y' * 66}\n" for j in range(50))
        return "50 prints", "for (let j = 0; j < 50; j++) console.log(j, 'y'.repeat(66))", expect(stdout=text)
    if kind == 7:
        return (
            "assign",
            f"globalThis.x{i % 100} = Array.from({{length: 1000}}, (_, k) => k); undefined",
            expect(stdout=""),
        )
    if kind == 8:
        return "1/0", "null.x", expect("error", ename="TypeError")
    return (
        "mixed",
        f"console.log('a{i}'); display({{'text/plain': 'm{i}'}}); console.log('b{i}')",
        expect(stdout=f"a{i}\nb{i}\n", displays=[f"m{i}"]),
    )


def bash_cell(i: int) -> tuple[str, str, Any]:
    """Bash has no display(): kinds 3 and 9 are other outputs instead."""
    kind = i % 10
    if kind == 0:
        return "print", f"echo {i}", expect(stdout=f"{i}\n")
    if kind == 1:
        return "4KB print", f"printf 'line {i} %.0s' {{1..400}}; echo", expect(stdout=f"line {i} " * 400 + "\n")
    if kind == 2:
        return "raise", "(exit 3)", expect("error", ename="BashError")
    if kind == 3:
        return "seq", f"seq {i} {i + 499}", expect(stdout="".join(f"{j}\n" for j in range(i, i + 500)))
    if kind == 4:
        return "result", f"echo $(( {i} * 2 ))", expect(stdout=f"{i * 2}\n")
    if kind == 5:
        return "stderr", f"echo e{i} >&2", expect(stderr=f"e{i}\n")
    if kind == 6:
        text = "".join(f"{j} {'y' * 66}\n" for j in range(50))
        return "50 prints", f"for j in {{0..49}}; do echo $j {'y' * 66}; done", expect(stdout=text)
    if kind == 7:
        return "assign", f"x{i % 100}=$(seq 1 1000)", expect(stdout="")
    if kind == 8:
        return "1/0", "false", expect("error", ename="BashError")
    return "mixed", f"echo a{i}; echo m{i} >&2; echo b{i}", expect(stdout=f"a{i}\nb{i}\n", stderr=f"m{i}\n")


CELLS = {"python3": python_cell, "sandbox-python": python_cell, "sandbox-node": node_cell, "sandbox-bash": bash_cell}
INTERRUPT = {  # (cell, the error it must end with)
    "python3": ("import time\ntime.sleep(10)", "KeyboardInterrupt"),
    "sandbox-python": ("import time\ntime.sleep(10)", "KeyboardInterrupt"),
    "sandbox-node": ("await new Promise(r => setTimeout(r, 10000))", "KeyboardInterrupt"),
    "sandbox-bash": ("sleep 10", "Interrupted"),
}


# -- memory ------------------------------------------------------------------------------------


def vm_rss(pid: int) -> int | None:
    """VmRSS of a process in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cgroup_memory(kernel_pid: int) -> int | None:
    """Memory charged to the kernel's sandbox cgroup(s) (v1 memory.usage_in_bytes, v2 memory.current)."""
    root = Path("/sys/fs/cgroup")
    total = None
    for f in list(root.glob(f"memory/sandbox-kernel/k{kernel_pid}-*/memory.usage_in_bytes")) + list(
        root.glob(f"sandbox-kernel/k{kernel_pid}-*/memory.current")
    ):
        try:
            total = (total or 0) + int(f.read_text())
        except (OSError, ValueError):
            pass
    return total


# -- one kernel ----------------------------------------------------------------------------------


class Kernel:
    def __init__(self, name: str, context: zmq.Context, args: argparse.Namespace) -> None:
        self.name = name
        self.args = args
        self.km = KernelManager(kernel_name=name, context=context)
        self.km.start_kernel(stdout=KERNEL_LOG, stderr=KERNEL_LOG)
        self.pid = self.km.provisioner.process.pid  # type: ignore[union-attr]
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.times: dict[str, list[float]] = {}
        self.interrupt_latency: list[float] = []
        self.lost: list[str] = []
        self.wrong: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.busy_seconds = 0.0

    def sample(self, cells_done: int) -> dict[str, Any]:
        rss = vm_rss(self.pid)
        sandbox = [vm_rss(p) for p in descendants(self.pid)]
        entry = {
            "cells": cells_done,
            "t": time.time(),
            "rss": rss,
            "sandbox_rss": sum(x for x in sandbox if x),
            "sandbox_processes": len(sandbox),
            "sandbox_cgroup_memory": cgroup_memory(self.pid),
        }
        self.samples.append(entry)
        return entry

    def run(self, index: int, kind: str, code: str, check: Any, interrupt: bool = False) -> None:
        kc = self.kc
        t0 = time.perf_counter()
        msg_id = kc.execute(code)
        deadline = time.monotonic() + self.args.timeout
        outputs: list[dict[str, Any]] = []
        idle = False
        interrupted_at: float | None = None
        try:
            while not idle:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no idle")
                try:
                    msg = kc.iopub_channel.get_msg(timeout=left)
                except Empty:
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind_ = msg["msg_type"]
                if kind_ in ("stream", "execute_result", "display_data", "error"):
                    outputs.append(msg)
                elif kind_ == "status":
                    state = msg["content"]["execution_state"]
                    if state == "busy" and interrupt and interrupted_at is None:
                        time.sleep(self.args.interrupt_delay)
                        interrupted_at = time.perf_counter()
                        self.km.interrupt_kernel()
                    elif state == "idle":
                        idle = True
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no execute_reply")
                reply = kc.get_shell_msg(timeout=left)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        except (TimeoutError, Empty) as exc:
            self.lost.append(f"cell {index} ({kind}): {exc} within {self.args.timeout} s")
            log(f"  {self.name}: LOST cell {index} ({kind}): {exc}")
            return
        elapsed = time.perf_counter() - t0
        self.busy_seconds += elapsed
        self.times.setdefault(kind, []).append(elapsed)
        if interrupted_at is not None:
            self.interrupt_latency.append(time.perf_counter() - interrupted_at)
        problem = check(reply["content"], outputs)
        if problem:
            self.wrong.append(f"cell {index} ({kind}): {problem}")
            if len(self.wrong) <= 20:
                log(f"  {self.name}: cell {index} ({kind}) wrong: {problem}")

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def summarize(k: Kernel, warmup: int, cells: int) -> dict[str, Any]:
    rss = [s["rss"] for s in k.samples if s["rss"]]
    at_warmup = next((s["rss"] for s in k.samples if s["cells"] >= warmup and s["rss"]), rss[0] if rss else None)
    sandbox = [s["sandbox_rss"] for s in k.samples]
    normal = [t for kind, ts in k.times.items() if kind != "interrupt" for t in ts]
    all_times = [t for ts in k.times.values() for t in ts]
    return {
        "cells": sum(len(ts) for ts in k.times.values()),
        "lost": k.lost,
        "wrong": k.wrong,
        "rss_start": rss[0] if rss else None,
        "rss_warmup": at_warmup,
        "rss_end": rss[-1] if rss else None,
        "rss_max": max(rss) if rss else None,
        "growth_after_warmup": (rss[-1] - at_warmup) if rss and at_warmup else None,
        "sandbox_rss_start": sandbox[0] if sandbox else None,
        "sandbox_rss_end": sandbox[-1] if sandbox else None,
        "sandbox_rss_max": max(sandbox) if sandbox else None,
        "sandbox_cgroup_start": k.samples[0].get("sandbox_cgroup_memory") if k.samples else None,
        "sandbox_cgroup_end": k.samples[-1].get("sandbox_cgroup_memory") if k.samples else None,
        "sandbox_cgroup_max": max((s["sandbox_cgroup_memory"] or 0 for s in k.samples), default=None),
        "cells_per_s": len(all_times) / sum(all_times) if all_times else None,
        "cells_per_s_without_interrupts": len(normal) / sum(normal) if normal else None,
        "cell_ms": {
            kind: {"n": len(ts), "p50": 1000 * pct(ts, 50), "p95": 1000 * pct(ts, 95), "max": 1000 * max(ts)}
            for kind, ts in k.times.items()
        },
        "interrupt_latency_ms": {
            "n": len(k.interrupt_latency),
            "p50": 1000 * pct(k.interrupt_latency, 50),
            "p95": 1000 * pct(k.interrupt_latency, 95),
            "max": 1000 * max(k.interrupt_latency) if k.interrupt_latency else None,
        },
        "samples": k.samples,
    }


def mb(x: float | None) -> str:
    return "–" if x is None else f"{x / MB:.1f}"


def table(results: dict[str, Any]) -> str:
    rows = [
        "| kernel | cells (lost, wrong) | kernel RSS start / after warm-up / end / max (MB) | growth after warm-up (MB) "
        "| sandbox processes' RSS start / end / max (MB) | sandbox cgroup memory start / end (MB) | cells/s (without the interrupted ones) "
        "| cell p50 / p95 (ms, all but interrupts) | interrupt → reply p50 / max (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        normal = [v for kind, v in s["cell_ms"].items() if kind != "interrupt"]
        p50 = statistics.median(v["p50"] for v in normal) if normal else float("nan")
        p95 = max(v["p95"] for v in normal) if normal else float("nan")
        sandbox = (
            f"{mb(s['sandbox_rss_start'])} / {mb(s['sandbox_rss_end'])} / {mb(s['sandbox_rss_max'])}"
            if s["sandbox_rss_max"]
            else "–"
        )
        il = s["interrupt_latency_ms"]
        rows.append(
            f"| {name} | {s['cells']} ({len(s['lost'])}, {len(s['wrong'])}) "
            f"| {mb(s['rss_start'])} / {mb(s['rss_warmup'])} / {mb(s['rss_end'])} / {mb(s['rss_max'])} "
            f"| {'–' if s['growth_after_warmup'] is None else format(s['growth_after_warmup'] / MB, '+.1f')} | {sandbox} "
            f"| {mb(s.get('sandbox_cgroup_start'))} / {mb(s.get('sandbox_cgroup_end'))} "
            f"| {s['cells_per_s']:.0f} ({s['cells_per_s_without_interrupts']:.0f}) | {p50:.1f} / {p95:.1f} "
            f"| {il['p50']:.0f} / {il['max'] or float('nan'):.0f} |"
        )
    return "\n".join(rows)


def rss_table(results: dict[str, Any]) -> str:
    names = list(results)
    header = (
        "| cells | "
        + " | ".join(f"{n} kernel RSS{' (sandbox cgroup)' if n.startswith('sandbox-') else ''} (MB)" for n in names)
        + " |"
    )
    rows = [header, "|" + "---|" * (len(names) + 1)]
    by_cells: dict[int, dict[str, Any]] = {}
    for n in names:
        for s in results[n]["samples"]:
            by_cells.setdefault(s["cells"], {})[n] = s
    for cells in sorted(by_cells):
        cols = []
        for n in names:
            sample = by_cells[cells].get(n, {})
            col = mb(sample.get("rss"))
            if n.startswith("sandbox-"):
                col += f" ({mb(sample.get('sandbox_cgroup_memory'))})"
            cols.append(col)
        rows.append(f"| {cells} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=10_000, help="cells per kernel (default 10000)")
    parser.add_argument("--kernels", default="sandbox-python,python3", help="comma-separated, of " + ", ".join(CELLS))
    parser.add_argument(
        "--interrupt-every",
        type=int,
        default=200,
        help="every N-th cell is an interrupted time.sleep(10) (default 200)",
    )
    parser.add_argument(
        "--interrupt-delay", type=float, default=0.1, help="seconds from 'busy' to interrupt_kernel() (default 0.1)"
    )
    parser.add_argument("--sample-every", type=int, default=1000, help="RSS sample every N cells (default 1000)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="cells before the RSS baseline (default min(1000, cells / 5))"
    )
    parser.add_argument(
        "--max-growth", type=float, default=30, help="MB a Sandbox kernel's RSS may grow after the warm-up (default 30)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds a cell may take before it counts as lost (default 60)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kernel-log", type=Path, help="append the kernels' stdout/stderr here (default: discarded)")
    args = parser.parse_args()
    names = [n for n in args.kernels.split(",") if n]
    for n in names:
        if n not in CELLS:
            parser.error(f"unknown kernel {n!r}")
    warmup = args.warmup if args.warmup is not None else min(1000, args.cells // 5)

    global KERNEL_LOG
    if args.kernel_log:
        KERNEL_LOG = open(args.kernel_log, "ab")  # noqa: SIM115 - open for the whole run
    context = zmq.Context()
    started = time.time()
    load_before = os.getloadavg()
    loads = [(0, load_before[0])]
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        root = write_kernelspecs(Path(tmp), backend="local")
        os.environ["JUPYTER_PATH"] = str(root) + (
            os.pathsep + os.environ["JUPYTER_PATH"] if os.environ.get("JUPYTER_PATH") else ""
        )
        kernels = [Kernel(name, context, args) for name in names]
        try:
            for k in kernels:
                k.run(-1, "first", *CELLS[k.name](0)[1:])
                k.times.clear()
                k.busy_seconds = 0.0
                k.sample(0)
            t0 = time.perf_counter()
            for i in range(args.cells):
                interrupt = args.interrupt_every > 0 and i % args.interrupt_every == args.interrupt_every - 1
                shift = (i // max(1, args.sample_every)) % len(kernels)  # who goes first rotates per block
                for k in kernels[shift:] + kernels[:shift]:
                    if interrupt:
                        code, ename = INTERRUPT[k.name]
                        k.run(i, "interrupt", code, expect("error", ename=ename), interrupt=True)
                    else:
                        kind, code, check = CELLS[k.name](i)
                        k.run(i, kind, code, check)
                    if len(k.lost) > 3:
                        raise RuntimeError(f"{k.name}: more than 3 lost cells, giving up")
                done = i + 1
                if done % args.sample_every == 0 or done == args.cells or done == warmup:
                    loads.append((done, os.getloadavg()[0]))
                    for k in kernels:
                        s = k.sample(done)
                        if done % args.sample_every == 0 or done == args.cells:
                            log(
                                f"  {done:6d} cells {k.name}: RSS {mb(s['rss'])} MB, sandbox {mb(s['sandbox_rss'])} MB, "
                                f"{len(k.lost)} lost, {len(k.wrong)} wrong, {time.perf_counter() - t0:.0f} s, load {loads[-1][1]:.1f}"
                            )
        finally:
            for k in kernels:
                try:
                    k.stop()
                except Exception as exc:  # noqa: BLE001
                    log(f"stopping {k.name} failed: {exc}")

    results = {k.name: summarize(k, warmup, args.cells) for k in kernels}
    failed = []
    for name, s in results.items():
        if s["lost"] or s["wrong"]:
            failed.append(f"{name}: {len(s['lost'])} lost, {len(s['wrong'])} wrong cells")
        if (
            name.startswith("sandbox-")
            and s["growth_after_warmup"] is not None
            and s["growth_after_warmup"] > args.max_growth * MB
        ):
            failed.append(
                f"{name}: RSS grew {s['growth_after_warmup'] / MB:.1f} MB after the warm-up (limit {args.max_growth:g} MB)"
            )
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "loadavg": {"before": load_before, "after": os.getloadavg(), "samples": loads},
        "warmup": warmup,
        "results": results,
        "failed": failed,
    }
    print(table(results))
    print()
    print(rss_table(results))
    print()
    la = [x for _, x in loads]
    print(f"load average (1 min) {min(la):.1f}–{max(la):.1f} during the run; {out['seconds']:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")
    for f in failed:
        log("FAILED: " + f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
