"""Benchmark the Kubernetes backend against the original design's pod-per-cell approach, in one run.

    SANDBOX_KUBECONFIG=<kubeconfig> python benchmarks/bench_kubernetes.py [--cells 200] [--starts 5]

Measured on the real cluster (images already on the node):

- start → first result: a new sandbox (namespace, objects, pod, attach, agent) until ``1+1``
  answers, through the session (what the kernel does) and through a real Jupyter kernel process;
  baseline: a pod created for the cell, waited for, its log read.
- per-cell round trip of a trivial cell (``1``) through the session and through Jupyter;
  baseline: one pod per cell in an existing namespace.
- stdout throughput: one cell writing 16 MiB; baseline: the same in a pod, read from its log.
- 10 sandboxes started at once (wall time until all answered); baseline: 10 pods at once.

Prints a markdown table and writes benchmarks/results/kubernetes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # kernels.py, which the e2e fixtures import
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from kubernetes import client, config  # noqa: E402

from sandbox_kernel.config import Sandbox  # noqa: E402
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession  # noqa: E402
from sandbox_kernel.kubernetes.settings import KubernetesSandbox  # noqa: E402
from sandbox_kernel.languages import LANGUAGES  # noqa: E402
from sandbox_kernel.session import ExecuteResult, Stream  # noqa: E402

THROUGHPUT_BYTES = 16 * 2**20
THROUGHPUT_CODE = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(16 * 1024):\n    sys.stdout.write(line)\n"

from percentiles import pct  # noqa: E402  (the benchmarks' directory is on sys.path: it holds the script)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# The kernel's way: one long-lived pod per kernel, attached.


def make_session(kubeconfig: str, image: str, output_limit: str = "4Mi") -> KubernetesSandboxSession:
    settings = KubernetesSandbox(kubeconfig=kubeconfig, images={"python": image})
    limits = Sandbox(output_limit=output_limit, timeout=300).limits()
    return KubernetesSandboxSession(LANGUAGES["python"], limits, settings, kernel_id=f"bench-{uuid.uuid4().hex[:8]}")


async def run(session: KubernetesSandboxSession, code: str) -> tuple[str, int]:
    result, nbytes = "", 0
    async for event in session.execute(code):
        if isinstance(event, ExecuteResult):
            result = str(event.data.get("text/plain"))
        elif isinstance(event, Stream):
            nbytes += len(event.text.encode())
        else:
            raise RuntimeError(f"unexpected output: {event}")
    return result, nbytes


async def start_to_first_result(kubeconfig: str, image: str) -> tuple[float, KubernetesSandboxSession]:
    session = make_session(kubeconfig, image)
    t0 = time.perf_counter()
    await session.start()
    result, _ = await run(session, "1+1")
    elapsed = time.perf_counter() - t0
    assert result == "2", result
    return elapsed, session


async def bench_sessions(kubeconfig: str, image: str, starts: int, cells: int, concurrent: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    # Ten kernels are ten processes, each with its own executor: do not make them share six threads.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(8 * concurrent))
    out: dict[str, Any] = {}
    start_times = []
    for _ in range(starts):
        elapsed, session = await start_to_first_result(kubeconfig, image)
        start_times.append(elapsed)
        await session.close()
    out["start_to_first_result_s"] = summary(start_times)

    session = make_session(kubeconfig, image, output_limit="64Mi")
    await session.start()
    await run(session, "1")
    rtts = []
    for _ in range(cells):
        t0 = time.perf_counter()
        result, _ = await run(session, "1")
        rtts.append(time.perf_counter() - t0)
        assert result == "1"
    out["cell_round_trip_s"] = summary(rtts)
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        _, nbytes = await run(session, THROUGHPUT_CODE)
        elapsed = time.perf_counter() - t0
        assert nbytes == THROUGHPUT_BYTES, nbytes
        rates.append(THROUGHPUT_BYTES / 2**20 / elapsed)
    out["stdout_mib_per_s"] = statistics.median(rates)
    out["stdout_mib_per_s_runs"] = rates
    await session.close()

    t0 = time.perf_counter()
    results = await asyncio.gather(*(start_to_first_result(kubeconfig, image) for _ in range(concurrent)))
    out["concurrent_wall_s"] = time.perf_counter() - t0
    out["concurrent_each_s"] = summary([r[0] for r in results])
    await asyncio.gather(*(s.close() for _, s in results))
    return out


def bench_jupyter(kubeconfig: str, images: dict[str, str], starts: int, cells: int) -> dict[str, Any]:
    """The same through real kernel processes (jupyter_client), as a notebook sees it."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from fixtures_kubernetes import write_kernelspecs

    root = write_kernelspecs(Path(tempfile.mkdtemp(prefix="bench-k8s-")))
    env = {**os.environ, "SANDBOX_KUBECONFIG": kubeconfig, "SANDBOX_KERNEL_BACKEND": "kubernetes", **images}
    out: dict[str, Any] = {}
    times, rtts = [], []
    for i in range(starts):
        km = KernelManager(
            kernel_name="sandbox-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(root / "kernels")])
        )
        km.shutdown_wait_time = 60
        t0 = time.perf_counter()
        km.start_kernel(env=env)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive("1+1", timeout=120, output_hook=lambda m: None)
        times.append(time.perf_counter() - t0)
        assert reply["content"]["status"] == "ok", reply["content"]
        if i == 0:
            for _ in range(cells):
                t1 = time.perf_counter()
                kc.execute_interactive("1", timeout=30, output_hook=lambda m: None)
                rtts.append(time.perf_counter() - t1)
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    out["start_to_first_result_s"] = summary(times)
    out["cell_round_trip_s"] = summary(rtts)
    return out


# ---------------------------------------------------------------------------------------------
# The original design's way: a pod per cell.


class PodPerCell:
    """Create a pod running the cell, wait for it to finish, read its log, delete it."""

    def __init__(self, kubeconfig: str, image: str) -> None:
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.image = image
        self.namespace = f"bench-podpercell-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(
            {"metadata": {"name": self.namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
        )
        self._sa_ready()

    def _sa_ready(self) -> None:
        # Pods cannot be created before the namespace's default service account exists.
        for _ in range(100):
            try:
                self.core.read_namespaced_service_account("default", self.namespace)
                return
            except client.ApiException:
                time.sleep(0.1)

    def pod(self, name: str, code: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "cell",
                        "image": self.image,
                        "command": ["python3", "-c", code],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "64Mi"},
                            "limits": {"cpu": "500m", "memory": "256Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True,
                        },
                    }
                ],
            },
        }

    def run(self, code: str) -> tuple[float, str]:
        name = f"cell-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        self.core.create_namespaced_pod(self.namespace, self.pod(name, code))
        while True:
            phase = self.core.read_namespaced_pod(name, self.namespace).status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.05)
        log = self.core.read_namespaced_pod_log(name, self.namespace, _preload_content=False).data
        elapsed = time.perf_counter() - t0
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        return elapsed, log.decode()

    def close(self) -> None:
        self.core.delete_namespace(self.namespace)
        self.api.close()


def bench_baseline(kubeconfig: str, image: str, cells: int, concurrent: int) -> dict[str, Any]:
    base = PodPerCell(kubeconfig, image)
    out: dict[str, Any] = {}
    try:
        rtts = []
        for _ in range(cells):
            elapsed, log = base.run("print(1)")
            assert log.strip() == "1", log
            rtts.append(elapsed)
        out["cell_round_trip_s"] = summary(rtts)
        elapsed, log = base.run(THROUGHPUT_CODE)
        out["stdout_mib_per_s"] = len(log.encode()) / 2**20 / elapsed
        out["stdout_bytes_read"] = len(log.encode())
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as pool:
            each = list(pool.map(lambda _: base.run("print(1+1)")[0], range(concurrent)))
        out["concurrent_wall_s"] = time.perf_counter() - t0
        out["concurrent_each_s"] = summary(each)
    finally:
        base.close()
    return out


# ---------------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    k, j, b = results["kernel_session"], results["jupyter_kernel"], results["pod_per_cell"]
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    sec = lambda s: f"{s:.2f} s"  # noqa: E731
    rows = [
        ("| measurement | pod per kernel (session) | pod per kernel (Jupyter kernel) | pod per cell (baseline) |"),
        ("|---|---|---|---|"),
        (
            f"| start → first result p50 / p95 | {sec(k['start_to_first_result_s']['p50'])} / {sec(k['start_to_first_result_s']['p95'])} "
            f"(n={k['start_to_first_result_s']['n']}) | {sec(j['start_to_first_result_s']['p50'])} / {sec(j['start_to_first_result_s']['p95'])} "
            f"(n={j['start_to_first_result_s']['n']}) | = one cell: {sec(b['cell_round_trip_s']['p50'])} |"
        ),
        (
            f"| trivial cell round trip p50 / p95 | {ms(k['cell_round_trip_s']['p50'])} / {ms(k['cell_round_trip_s']['p95'])} "
            f"(n={k['cell_round_trip_s']['n']}) | {ms(j['cell_round_trip_s']['p50'])} / {ms(j['cell_round_trip_s']['p95'])} "
            f"(n={j['cell_round_trip_s']['n']}) | {ms(b['cell_round_trip_s']['p50'])} / {ms(b['cell_round_trip_s']['p95'])} "
            f"(n={b['cell_round_trip_s']['n']}) |"
        ),
        (
            f"| stdout throughput (16 MiB cell; median of 5 / once) | {k['stdout_mib_per_s']:.1f} MiB/s | – | {b['stdout_mib_per_s']:.1f} MiB/s "
            f"(log holds {b['stdout_bytes_read'] / 2**20:.1f} MiB) |"
        ),
        (
            f"| {results['concurrent']} started at once: wall (each p50 / p95) | {sec(k['concurrent_wall_s'])} "
            f"({sec(k['concurrent_each_s']['p50'])} / {sec(k['concurrent_each_s']['p95'])}) | – | {sec(b['concurrent_wall_s'])} "
            f"({sec(b['concurrent_each_s']['p50'])} / {sec(b['concurrent_each_s']['p95'])}) |"
        ),
        (
            f"| per-cell speed-up vs pod per cell (p50) | {b['cell_round_trip_s']['p50'] / k['cell_round_trip_s']['p50']:.0f}× | "
            f"{b['cell_round_trip_s']['p50'] / j['cell_round_trip_s']['p50']:.0f}× | 1× |"
        ),
    ]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("SANDBOX_KUBECONFIG", ""))
    parser.add_argument("--image", default="")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--baseline-cells", type=int, default=20, help="pod-per-cell cells (each takes seconds)")
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument(
        "--jupyter-starts", type=int, default=0, help="kernel starts through Jupyter (default: --starts, at most 3)"
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="leave out the pod-per-cell baseline (its numbers do not change)"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kubernetes.json"))
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("set SANDBOX_KUBECONFIG or --kubeconfig")
    from fixtures_kubernetes import images_from_cache

    images = {
        k: v
        for k, v in images_from_cache().items()
        if k in ("SANDBOX_IMAGE_PYTHON", "SANDBOX_IMAGE_NODE", "SANDBOX_IMAGE_BASH")
    }
    image = args.image or images.get("SANDBOX_IMAGE_PYTHON") or LANGUAGES["python"].default_image
    images["SANDBOX_IMAGE_PYTHON"] = image

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "image": image,
        "concurrent": args.concurrent,
    }
    print("kernel sessions…", file=sys.stderr)
    results["kernel_session"] = asyncio.run(
        bench_sessions(args.kubeconfig, image, args.starts, args.cells, args.concurrent)
    )
    print("Jupyter kernels…", file=sys.stderr)
    results["jupyter_kernel"] = bench_jupyter(
        args.kubeconfig, images, args.jupyter_starts or min(args.starts, 3), args.cells
    )
    if args.skip_baseline:
        for kind, numbers in results.items():
            if isinstance(numbers, dict) and "start_to_first_result_s" in numbers:
                print(f"{kind}: start → first result {numbers['start_to_first_result_s']}")
    else:
        print("pod-per-cell baseline…", file=sys.stderr)
        results["pod_per_cell"] = bench_baseline(args.kubeconfig, image, args.baseline_cells, args.concurrent)
        print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
