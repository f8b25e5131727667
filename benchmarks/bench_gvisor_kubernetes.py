"""The Kubernetes backend's runtimes side by side in one run: runc, gVisor with the stream relay
(the default under a runtime class), and gVisor without it.

    SANDBOX_KUBECONFIG=<kubeconfig> python benchmarks/bench_gvisor_kubernetes.py [--starts 5] [--cells 100]

For each variant, through ``KubernetesSandboxSession`` (what the kernel does, without Jupyter):
start → first result of ``1+1`` (namespace, objects, pod, attach, agent; images already on the
node; the notebook's directory is an empty one), a trivial cell's round trip (``1``), and stdout throughput of one 16 MiB cell. Starts
rotate through the variants, so load drifts alike for all. Needs RuntimeClass ``gvisor``
(tests/cluster/up). Prints a markdown table and writes benchmarks/results/gvisor_kubernetes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_kubernetes import THROUGHPUT_BYTES, THROUGHPUT_CODE, REPO, run, summary

from sandbox_kernel.config import Sandbox
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

VARIANTS: dict[str, dict[str, str]] = {
    "runc": {},
    "gvisor-relay": {"runtime_class_name": "gvisor"},
    "gvisor-no-relay": {"runtime_class_name": "gvisor", "stream_relay": "off"},
}


def make_session(kubeconfig: str, image: str, variant: str, output_limit: str = "4Mi") -> KubernetesSandboxSession:
    settings = KubernetesSandbox(kubeconfig=kubeconfig, images={"python": image}, **VARIANTS[variant])
    limits = Sandbox(output_limit=output_limit, timeout=300).limits()
    return KubernetesSandboxSession(LANGUAGES["python"], limits, settings, kernel_id=f"bench-{uuid.uuid4().hex[:8]}")


async def start_once(kubeconfig: str, image: str, variant: str) -> float:
    session = make_session(kubeconfig, image, variant)
    t0 = time.perf_counter()
    await session.start()
    result, _ = await run(session, "1+1")
    elapsed = time.perf_counter() - t0
    assert result == "2", result
    await session.close()
    return elapsed


async def cells(kubeconfig: str, image: str, variant: str, count: int) -> dict[str, Any]:
    session = make_session(kubeconfig, image, variant, output_limit="64Mi")
    await session.start()
    try:
        await run(session, "1")
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            result, _ = await run(session, "1")
            rtts.append(time.perf_counter() - t0)
            assert result == "1", result
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            _, nbytes = await run(session, THROUGHPUT_CODE)
            assert nbytes == THROUGHPUT_BYTES, nbytes
            rates.append(THROUGHPUT_BYTES / 2**20 / (time.perf_counter() - t0))
    finally:
        await session.close()
    return {"cell_round_trip_s": summary(rtts), "stdout_mib_per_s": statistics.median(rates), "stdout_runs": rates}


async def bench(kubeconfig: str, image: str, starts: int, count: int, variants: list[str]) -> dict[str, Any]:
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(starts):
        for variant in variants:
            times[variant].append(await start_once(kubeconfig, image, variant))
    results: dict[str, Any] = {}
    for variant in variants:
        results[variant] = {
            "start_to_first_result_s": summary(times[variant]),
            **await cells(kubeconfig, image, variant, count),
        }
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| runtime | start → first result p50 / p95 (s) | trivial cell p50 / p95 (ms) | stdout, 16 MiB cell, median MiB/s |",
        "|---|---|---|---|",
    ]
    for variant, r in results.items():
        s, c = r["start_to_first_result_s"], r["cell_round_trip_s"]
        lines.append(
            f"| {variant} | {s['p50']:.2f} / {s['p95']:.2f} (n={s['n']}) | {c['p50'] * 1e3:.1f} / {c['p95'] * 1e3:.1f} "
            f"| {r['stdout_mib_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("SANDBOX_KUBECONFIG", ""))
    parser.add_argument(
        "--image", default="", help="the Python image (default: the test cluster's, else the official one)"
    )
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="a comma-separated subset of: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gvisor_kubernetes.json"))
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("set SANDBOX_KUBECONFIG or --kubeconfig")
    from fixtures_kubernetes import images_from_cache

    image = args.image or images_from_cache().get("SANDBOX_IMAGE_PYTHON") or LANGUAGES["python"].default_image
    os.chdir(tempfile.mkdtemp(prefix="bench-notebook-"))  # the notebook's directory: empty, nothing to copy in
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    variants = [v.strip() for v in args.variants.split(",")]
    if set(variants) - set(VARIANTS):
        parser.error(f"--variants: not one of {', '.join(VARIANTS)}: {', '.join(set(variants) - set(VARIANTS))}")
    results = asyncio.run(bench(args.kubeconfig, image, args.starts, args.cells, variants))
    report = {"began": began, "load_average": os.getloadavg(), "machine": platform.node(), "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"run of {began}, load average now {os.getloadavg()[0]:.1f}")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
