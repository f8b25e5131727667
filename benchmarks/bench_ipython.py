#!/usr/bin/env python
"""IPython mode against ipykernel's ``python3``, in the same run (issue 9's performance bullet).

    python benchmarks/bench_ipython.py [--starts 10] [--cells 200] [--plots 10] [--json benchmarks/results/ipython.json]

``sandbox-python`` runs with ``--Sandbox.ipython=on`` (every cell through IPython's shell in the
sandbox; a sandbox without IPython would fail every cell, not fall back), interleaved with
``python3`` so that machine drift hits both alike:

1. **start**: ``start_kernel`` until the first output of a trivial cell sent right after it
   (``bench_local.py``'s measurement; IPython's import in the sandbox overlaps the kernel's start);
2. **trivial cell**: ``1`` and ``pass``, client-side from ``execute_request`` to reply and idle,
   p50/p95 after a warm-up;
3. **plot**: a matplotlib figure of noise whose PNG is just over 1 MiB (640 x 640 pixels that do
   not compress, the axes filling the figure), shown with ``plt.show()``: time until its
   ``display_data`` reached the client, and until idle, after one unmeasured plot per kernel
   (matplotlib's imports and font cache). It travels as base64 (4/3 of its size) in one agent
   frame (at most 2 MiB, ``MAX_PAYLOAD``).

Targets (issue 9): trivial cell p50 no slower than ``python3``, start within ``python3`` + 10 %,
the plot in under 2x ``python3``'s time.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_local as bl  # noqa: E402

NAMES = ["python3", "sandbox-python"]
PLOT = (
    "import numpy as np, matplotlib.pyplot as plt\n"
    "fig = plt.figure(figsize=(6.4, 6.4), dpi=100)\n"
    "ax = fig.add_axes([0, 0, 1, 1]); ax.axis('off')\n"
    "ax.imshow(np.random.default_rng(0).random((640, 640, 3)), interpolation='nearest')\n"
    "plt.show()\n"
)


def bench_plots(kernels: list[bl.Kernel], rounds: int, results: dict[str, Any]) -> None:
    for k in kernels:  # matplotlib's imports and font cache, outside the measurement
        k.run(PLOT)
    for i in range(rounds):
        order = kernels[i % len(kernels) :] + kernels[: i % len(kernels)]
        for k in order:
            sizes: list[int] = []

            def seen(msg: dict[str, Any]) -> None:
                png = msg["content"].get("data", {}).get("image/png")
                if msg["msg_type"] == "display_data" and png:
                    sizes.append(len(base64.b64decode(png)))

            t0 = time.perf_counter()
            first, reply = k.run(PLOT, on_output=seen)
            idle = time.perf_counter() - t0
            if reply.get("status") != "ok" or first is None or len(sizes) != 1:
                raise RuntimeError(f"{k.name}: the plot cell gave {reply}, PNGs {sizes}")
            raw = results[k.name]["raw"]
            raw.setdefault("plot", []).append(first - t0)
            raw.setdefault("plot_idle", []).append(idle)
            raw["png_bytes"] = sizes[0]


def report(results: dict[str, Any]) -> str:
    rows = [
        ("start → first output", "start"),
        ("cell `1`", "cell 1"),
        ("cell `pass`", "cell pass"),
        ("1 MiB PNG plot → display_data", "plot"),
        ("1 MiB PNG plot → idle", "plot_idle"),
    ]
    lines = ["| p50 (p95), ms | python3 | sandbox-python (IPython mode) | ratio p50 |", "|---|---|---|---|"]
    for label, key in rows:
        a, b = (bl.summary(results[n]["raw"].get(key, []), 1000) for n in NAMES)
        if not a.get("n") or not b.get("n"):
            continue
        lines.append(
            f"| {label} | {a['p50']:.1f} ({a['p95']:.1f}) | {b['p50']:.1f} ({b['p95']:.1f}) | {b['p50'] / a['p50']:.2f} |"
        )
    sizes = ", ".join(f"{n} {results[n]['raw'].get('png_bytes', 0) / 2**20:.2f} MiB" for n in NAMES)
    return "\n".join(lines) + f"\n\nPNG sizes: {sizes}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=10, help="kernel starts per kernel (default 10)")
    parser.add_argument("--cells", type=int, default=200, help="measured trivial cells per kernel (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured trivial cells per kernel first (default 20)")
    parser.add_argument("--plots", type=int, default=10, help="measured plot cells per kernel (default 10)")
    parser.add_argument(
        "--cpu-limit",
        default="",
        help="Sandbox.cpu_limit for sandbox-python (default: the setting's own, 500m): a CPU-bound cell such "
        "as a PNG's encoding runs at that share of a core, while python3 has no limit",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    compileall.compile_dir(str(bl.REPO / "sandbox_kernel"), quiet=1)  # as an install does (see bench_local)
    bl.SANDBOX_ARGS = ["--Sandbox.ipython=on", *([f"--Sandbox.cpu_limit={args.cpu_limit}"] if args.cpu_limit else [])]
    context = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, 5)
    results: dict[str, Any] = {
        n: {"raw": {k: [] for k in ("start", "start_reply", "start_spawn", "start_iopub", "shutdown")}} for n in NAMES
    }
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-ipython-") as tmp:
        root = bl.write_kernelspecs(Path(tmp), backend="local")
        os.environ["JUPYTER_PATH"] = str(root) + (
            os.pathsep + os.environ["JUPYTER_PATH"] if os.environ.get("JUPYTER_PATH") else ""
        )
        bl.log(f"[1/3] start: {args.starts} starts per kernel")
        bl.bench_start(NAMES, args.starts, context, results)
        kernels = [bl.Kernel(n, context) for n in NAMES]
        try:
            for k in kernels:
                k.start()
                k.wait_iopub()
                k.run("1")
            bl.log(f"[2/3] trivial cells: {args.warmup} warm-up + {args.cells} per kernel, interleaved")
            bl.bench_cells(kernels, args.cells, args.warmup, results)
            bl.log(f"[3/3] plots: 1 warm-up + {args.plots} per kernel, interleaved")
            bench_plots(kernels, args.plots, results)
        finally:
            for k in kernels:
                k.stop()
    for n in NAMES:
        results[n]["summary"] = {
            key: bl.summary(v, 1000) for key, v in results[n]["raw"].items() if isinstance(v, list)
        }
    results["_run"] = {
        "seconds": time.time() - started,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "machine": bl.machine(),
    }
    print(report(results))
    print(f"\nload average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
