#!/usr/bin/env python
"""gVisor next to bubblewrap on the local backend, in the same run.

    python benchmarks/bench_gvisor.py [--starts 5] [--cells 100] [--json benchmarks/results/gvisor.json]

For Python, Bash and Node.js Sandbox kernels under each ``LocalSandbox.runtime`` (bubblewrap and
gvisor), interleaved so that machine drift hits both alike:

1. **start**: ``KernelManager.start_kernel`` until the first output of a trivial cell, then the
   kernel's shutdown (as ``bench_local.py`` measures it), ``--starts`` times per kernel; and the
   sandbox alone (``LocalSandboxSession.start()`` in this process: cgroup, bundle or bubblewrap,
   the agent's ``ready``), with its ``close()``;
2. **idle memory**: the sandbox cgroup's ``memory.usage_in_bytes`` after the first cell (under
   gVisor this includes the Sentry, the Gofer and runsc);
3. **per cell**: client-side round trip of a trivial cell (``1``; ``true`` for Bash), p50/p95 over
   ``--cells``; and cells that make the kernel under the sandbox work: 20,000 ``os.stat`` calls,
   20 ``subprocess.run(['true'])`` (fork + exec), writing and reading back 32 MiB in HOME, and in
   Bash 20 runs of ``/bin/true``.

Needs root (cgroups), bubblewrap and runsc (``scripts/install-deps.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_local as bl  # noqa: E402
from bench_local import log, summary, write_kernelspecs  # noqa: E402

RUNTIMES = ("bubblewrap", "gvisor")
FIRST = {"sandbox-python": "1", "sandbox-bash": "echo 1", "sandbox-node": "1"}
CELLS: dict[str, dict[str, str]] = {
    "sandbox-python": {
        "1": "1",
        "20k stat": "import os\nfor _ in range(20000):\n    os.stat('/')",
        "20 spawns": "import subprocess\nfor _ in range(20):\n    subprocess.run(['true'])",
        "32 MiB file": "import os\np = os.path.expanduser('~/f')\nopen(p, 'wb').write(b'x' * (32 << 20))\nassert len(open(p, 'rb').read()) == 32 << 20\nos.unlink(p)",
    },
    "sandbox-bash": {"true": "true", "20 spawns": "for i in {1..20}; do /bin/true; done"},
    "sandbox-node": {"1": "1"},
}
WORK_CELLS = 10  # runs of each non-trivial cell per kernel
CGROUPS = Path("/sys/fs/cgroup/memory/sandbox-kernel")


class RuntimeKernel(bl.Kernel):
    def __init__(self, name: str, runtime: str, context: zmq.Context) -> None:
        super().__init__(name, context)
        self.runtime = runtime
        self.key = f"{name} ({runtime})"

    def start(self) -> None:
        args = [*bl.SANDBOX_ARGS, f"--LocalSandbox.runtime={self.runtime}"]
        self.km.start_kernel(extra_arguments=args, stderr=bl.KERNEL_LOG, stdout=bl.KERNEL_LOG)
        self.kc = self.km.client()
        self.kc.start_channels()

    def memory(self) -> int | None:
        pid = self.km.provisioner.process.pid  # type: ignore[union-attr]
        for group in CGROUPS.glob(f"k{pid}-*"):
            try:
                return int((group / "memory.usage_in_bytes").read_text())
            except OSError:
                pass
        return None


def sandbox_alone(language: str, runtime: str) -> tuple[float, float]:
    from sandbox_kernel.config import Sandbox
    from sandbox_kernel.languages import get_language
    from sandbox_kernel.local.backend import LocalSandbox, LocalSandboxSession

    async def run() -> tuple[float, float]:
        session = LocalSandboxSession(get_language(language), Sandbox().limits(), LocalSandbox(runtime=runtime))
        t0 = time.perf_counter()
        await session.start()
        t1 = time.perf_counter()
        await session.close()
        return t1 - t0, time.perf_counter() - t1

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="kernel starts per kernel and runtime (default 5)")
    parser.add_argument("--cells", type=int, default=100, help="measured trivial cells per kernel (default 100)")
    parser.add_argument("--kernels", default=",".join(CELLS), help="comma-separated subset of " + ", ".join(CELLS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = [n for n in args.kernels.split(",") if n]
    context = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, 5)
    raw: dict[str, dict[str, list[float]]] = {}
    started, load_before = time.time(), os.getloadavg()

    def add(key: str, what: str, value: float) -> None:
        raw.setdefault(key, {}).setdefault(what, []).append(value)

    with tempfile.TemporaryDirectory(prefix="bench-gvisor-") as tmp:
        root = write_kernelspecs(Path(tmp), backend="local")
        os.environ["JUPYTER_PATH"] = str(root) + (
            os.pathsep + os.environ["JUPYTER_PATH"] if os.environ.get("JUPYTER_PATH") else ""
        )
        pairs = [(n, r) for n in names for r in RUNTIMES]

        log(f"[1/3] start: {args.starts} kernel starts and sandbox starts per kernel and runtime")
        for i in range(args.starts):
            for name, runtime in pairs[i % len(pairs) :] + pairs[: i % len(pairs)]:
                k = RuntimeKernel(name, runtime, context)
                t0 = time.perf_counter()
                k.start()
                k.wait_iopub()
                first, reply = k.run(FIRST[name], timeout=60)
                if reply.get("status") != "ok" or first is None:
                    raise RuntimeError(f"{k.key} did not start: {reply}")
                add(k.key, "start", first - t0)
                add(k.key, "shutdown", k.stop())
                alone, close = sandbox_alone(name.split("-")[1].replace("node", "node"), runtime)
                add(k.key, "sandbox start", alone)
                add(k.key, "sandbox close", close)
                log(f"  {k.key}: start {1000 * (first - t0):.0f} ms, sandbox alone {1000 * alone:.0f} ms")

        kernels = [RuntimeKernel(n, r, context) for n, r in pairs]
        try:
            for k in kernels:
                k.start()
                k.wait_iopub()
                k.run(FIRST[k.name])
            time.sleep(1)
            for k in kernels:
                mem = k.memory()
                if mem is not None:
                    add(k.key, "idle memory", mem)
            log(f"[2/3] per cell: 10 warm-up + {args.cells} trivial cells, {WORK_CELLS} of each workload cell")
            jobs = [(k, label, code) for k in kernels for label, code in CELLS[k.name].items()]
            for k, _label, code in jobs:
                for _ in range(3 if _label in ("1", "true") else 1):
                    k.run(code)
            for i in range(args.cells):
                shift = i % len(jobs)
                for k, label, code in jobs[shift:] + jobs[:shift]:
                    if label not in ("1", "true") and i >= WORK_CELLS:
                        continue
                    t0 = time.perf_counter()
                    _, reply = k.run(code, timeout=300)
                    if reply.get("status") != "ok":
                        raise RuntimeError(f"{k.key}: {label} failed: {reply}")
                    add(k.key, f"cell {label}", time.perf_counter() - t0)
        finally:
            for k in kernels:
                try:
                    k.stop()
                except Exception as exc:  # noqa: BLE001
                    log(f"stopping {k.key} failed: {exc}")

    results = {
        key: {what: summary(v, 1 if what == "idle memory" else 1000) for what, v in whats.items()}
        for key, whats in raw.items()
    }
    what_order = ["start", "sandbox start", "sandbox close", "shutdown", "idle memory"] + sorted(
        {w for r in raw.values() for w in r if w.startswith("cell ")}
    )
    print("| kernel (runtime) | " + " | ".join(what_order) + " |")
    print("|---|" + "---|" * len(what_order))
    for key in raw:
        cells = []
        for what in what_order:
            s = results[key].get(what)
            if not s or not s.get("n"):
                cells.append("")
            elif what == "idle memory":
                cells.append(f"{s['p50'] / 2**20:.0f} MiB")
            else:
                cells.append(
                    f"{s['p50']:.0f} / {s['p95']:.0f}" if s["p50"] >= 10 else f"{s['p50']:.1f} / {s['p95']:.1f}"
                )
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\n(ms, p50 / p95; idle memory: the sandbox cgroup after the first cell)")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "loadavg": {"before": load_before, "after": os.getloadavg()},
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
