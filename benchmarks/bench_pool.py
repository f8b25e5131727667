"""Benchmark claims mode: a warm pool vs a cold start through the controller vs today's direct start, in one run.

    SANDBOX_KUBECONFIG=<admin kubeconfig> python benchmarks/bench_pool.py [--starts 10] [--concurrent 10]

On the real cluster, every kernel a real Jupyter kernel process (jupyter_client), each mode as its
own least-privilege identity (k8s/rbac/): claims mode as sandbox-kernel-claims with the controller
(`sandbox-kernel controller`, a host process as sandbox-kernel-controller, the in-cluster Deployment
scaled to 0 meanwhile), direct mode as sandbox-kernel. Starts are interleaved (warm, cold, direct,
warm, ...) so drift on the machine hits all three alike.

- **warm**: claims mode, a pooled sandbox ready (the script waits for the pool between starts);
- **cold (controller)**: claims mode, a claim the pool does not match (memory 248Mi), so the
  controller makes a sandbox for it;
- **direct**: the kernel makes its own sandbox, as before.

Measured: kernel start → first result (``KernelManager.start_kernel()`` until the
``execute_result`` of ``1+1``, the cell sent as soon as IOPub is subscribed, as bench_local.py
does); claim → bound (create to the controller's Ready status, read by the claimant polling every
5 ms; warm and cold); 10 kernels started at once with a pool of 10 (wall until all answered);
the pool's refill rate (sandboxes made ready per second, from the first of the 10 takes until the
pool is full again).

Prints a markdown table and writes benchmarks/results/pool.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # kernels.py, which the e2e fixtures import
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import zmq  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from kubernetes import client, config  # noqa: E402

from fixtures_claims import CLAIMS_SA, CONTROLLER_SA, ControllerProcess, mint, pool_ready, scale_deployment  # noqa: E402
from fixtures_kubernetes import SA_NAME, SA_NAMESPACE, apply_rbac, images_from_cache, write_kernelspecs  # noqa: E402
from sandbox_kernel.kubernetes import claims  # noqa: E402
from sandbox_kernel.kubernetes.api import micro_time  # noqa: E402

COLD_MEMORY = "248Mi"
"""A memory limit no pool has: the controller makes a sandbox for such a claim."""

from percentiles import pct  # noqa: E402  (the benchmarks' directory is on sys.path: it holds the script)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "mean": statistics.fmean(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


class Kernel:
    def __init__(self, specs: Path, env: dict[str, str], context: zmq.Context, argv: list[str]) -> None:
        self.km = KernelManager(
            kernel_name="sandbox-python",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]),
            context=context,
        )
        self.km.shutdown_wait_time = 60
        self.env, self.argv = env, argv
        self.kc: Any = None

    def start_to_first_result(self) -> float:
        t0 = time.perf_counter()
        self.km.start_kernel(
            env={**self.env, "SANDBOX_KERNEL_ID": str(uuid.uuid4())},
            extra_arguments=self.argv,
            stdout=subprocess_devnull(),
            stderr=subprocess_devnull(),
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        deadline = time.monotonic() + 120
        while True:  # IOPub subscribed (ipykernel >= 7 says iopub_welcome)
            try:
                if self.kc.iopub_channel.get_msg(timeout=0.5)["msg_type"] in ("iopub_welcome", "status"):
                    break
            except Empty:
                if time.monotonic() > deadline or not self.km.is_alive():
                    raise RuntimeError("the kernel did not start") from None
        msg_id = self.kc.execute("1+1")
        while True:
            msg = self.kc.iopub_channel.get_msg(timeout=max(1.0, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                assert msg["content"]["data"]["text/plain"] == "2", msg
                return time.perf_counter() - t0
            if msg["msg_type"] == "error":
                raise RuntimeError(f"the first cell failed: {msg['content']}")

    def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def subprocess_devnull() -> Any:
    import subprocess

    return subprocess.DEVNULL


def claim_to_bound(claimant: client.ApiClient, images: dict[str, str], memory: str = "") -> tuple[float, bool]:
    """Create a claim as the claimant; seconds until it reads Ready, and whether it came from the pool."""
    spec = claims.ClaimSpec(
        language="python",
        user=f"system:serviceaccount:{SA_NAMESPACE}:{CLAIMS_SA}",
        image=images["SANDBOX_IMAGE_PYTHON"],
        owner="bench",
        kernel_id="bench",
        **({"memory": memory} if memory else {}),
    )
    body = claims.claim_object(f"bench-{uuid.uuid4().hex[:8]}", SA_NAMESPACE, spec, micro_time())
    api = client.CustomObjectsApi(claimant)
    args = (claims.GROUP, claims.VERSION, SA_NAMESPACE, claims.PLURAL)
    t0 = time.perf_counter()
    api.create_namespaced_custom_object(*args, body)
    try:
        while time.perf_counter() - t0 < 120:
            status = api.get_namespaced_custom_object(*args, body["metadata"]["name"]).get("status") or {}
            if status.get("phase") == "Ready":
                return time.perf_counter() - t0, bool(status.get("fromPool"))
            if status.get("phase") in ("Refused", "Failed"):
                raise RuntimeError(status)
            time.sleep(0.005)
        raise RuntimeError("claim not Ready after 120 s")
    finally:
        try:
            api.delete_namespaced_custom_object(*args, body["metadata"]["name"])
        except client.ApiException as exc:
            if exc.status != 404:  # already gone (its sandbox with it)
                raise


def wait_pool(core: client.CoreV1Api, size: int, timeout: float = 180) -> float:
    t0 = time.monotonic()
    while len(pool_ready(core)) < size:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the pool did not reach {size} in {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("SANDBOX_KUBECONFIG", ""), help="an admin kubeconfig")
    parser.add_argument("--starts", type=int, default=10, help="kernel starts per mode")
    parser.add_argument("--claims", type=int, default=20, help="claim-to-bound samples per kind (warm, cold)")
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pool.json"))
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("set SANDBOX_KUBECONFIG or --kubeconfig")
    images = {k: v for k, v in images_from_cache().items() if k.startswith("SANDBOX_IMAGE_")}
    work = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    apply_rbac(args.kubeconfig)
    kubeconfigs = {
        sa: mint(args.kubeconfig, sa, work / f"{sa}.kubeconfig") for sa in (CLAIMS_SA, CONTROLLER_SA, SA_NAME)
    }
    admin = config.new_client_from_config(config_file=args.kubeconfig)
    core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
    claimant = config.new_client_from_config(config_file=kubeconfigs[CLAIMS_SA])
    specs = write_kernelspecs(work / "jupyter") / "kernels"
    base_env = {
        **os.environ,
        **images,
        "SANDBOX_KERNEL_BACKEND": "kubernetes",
        "JUPYTER_PATH": str(work / "jupyter"),
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH", "")))),
    }
    modes = {
        "warm": ({**base_env, "SANDBOX_KUBECONFIG": kubeconfigs[CLAIMS_SA], "SANDBOX_KUBERNETES_MODE": "claims"}, []),
        "cold (controller)": (
            {**base_env, "SANDBOX_KUBECONFIG": kubeconfigs[CLAIMS_SA], "SANDBOX_KUBERNETES_MODE": "claims"},
            [f"--Sandbox.memory_limit={COLD_MEMORY}"],
        ),
        "direct": ({**base_env, "SANDBOX_KUBECONFIG": kubeconfigs[SA_NAME], "SANDBOX_KUBERNETES_MODE": "direct"}, []),
    }
    context = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, 5)
    pool_size = max(args.concurrent, 3)
    replicas = scale_deployment(apps, 0)
    controller = ControllerProcess(
        kubeconfigs[CONTROLLER_SA],
        images,
        work / "controller.log",
        f"--SandboxController.pool=python={pool_size}",
        "--SandboxController.pool_resync=2",
        "--SandboxController.lease_duration=6",
        "--SandboxController.renew_deadline=4",
        "--SandboxController.retry_period=1",
    )
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load": os.getloadavg(),
        },
        "pool_size": pool_size,
    }
    try:
        controller.wait_for("leading", 60)
        log(f"pool of {pool_size}: ready after {wait_pool(core, pool_size):.1f} s")
        starts: dict[str, list[float]] = {mode: [] for mode in modes}
        for i in range(args.starts):
            for mode, (env, argv) in modes.items():
                if mode == "warm":
                    wait_pool(core, pool_size)
                kernel = Kernel(specs, env, context, argv)
                try:
                    starts[mode].append(kernel.start_to_first_result())
                finally:
                    kernel.stop()
            log(f"start round {i + 1}: " + ", ".join(f"{m} {v[-1]:.2f} s" for m, v in starts.items()))
        results["start_to_first_result_s"] = {mode: summary(v) for mode, v in starts.items()}

        bound: dict[str, list[float]] = {"warm": [], "cold": []}
        for _ in range(args.claims):
            wait_pool(core, pool_size)
            seconds, pooled = claim_to_bound(claimant, images)
            assert pooled, "a warm claim did not come from the pool"
            bound["warm"].append(seconds)
            seconds, pooled = claim_to_bound(claimant, images, COLD_MEMORY)
            assert not pooled
            bound["cold"].append(seconds)
        results["claim_to_bound_s"] = {kind: summary(v) for kind, v in bound.items()}
        log("claim → bound:", {k: f"{summary(v)['p50'] * 1000:.0f} ms" for k, v in bound.items()})

        wait_pool(core, pool_size)
        each: list[float] = []
        errors: list[str] = []
        kernels = [Kernel(specs, modes["warm"][0], context, []) for _ in range(args.concurrent)]

        def one(kernel: Kernel) -> None:
            try:
                each.append(kernel.start_to_first_result())
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(str(exc))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(k,)) for k in kernels]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        wall = time.perf_counter() - t0
        log(f"{args.concurrent} at once: wall {wall:.2f} s, each p50 {pct(each, 50):.2f} s, errors {errors}")
        # The controller refills as soon as a sandbox is taken (not when its kernel stops): from
        # the first take (within the start above) until the pool is full again. On a small
        # cluster the running kernels' sandboxes and a full pool may not fit (CPU requests): then
        # the refill is reported as not reached, with how far it got, and the rest still printed.
        refill: float | None = None
        try:
            wait_pool(core, pool_size, timeout=120)
            refill = time.perf_counter() - t0
        except RuntimeError:
            log(f"the pool did not refill within 120 s: {len(pool_ready(core))} of {pool_size} ready")
        for kernel in kernels:
            kernel.stop()
        results["concurrent"] = {
            "kernels": args.concurrent,
            "wall_s": wall,
            "each_s": summary(each),
            "errors": errors,
            "refill_s": refill,
            "refill_rate_per_s": pool_size / refill if refill else None,
            "refilled": len(pool_ready(core)),
        }
        if refill is not None:
            log(f"pool refilled in {refill:.1f} s")
    finally:
        controller.stop()
        from fixtures_claims import delete_controller_leftovers

        delete_controller_leftovers(core, client.CustomObjectsApi(admin))
        if replicas:
            scale_deployment(apps, replicas)
    print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


def table(results: dict[str, Any]) -> str:
    s = results["start_to_first_result_s"]
    b = results["claim_to_bound_s"]
    c = results["concurrent"]
    lines = [
        "| measurement | warm pool | cold (controller) | direct |",
        "|---|---|---|---|",
        "| kernel start → first result p50 / p95 | "
        + " | ".join(
            f"{s[m]['p50']:.2f} s / {s[m]['p95']:.2f} s (n={s[m]['n']})"
            for m in ("warm", "cold (controller)", "direct")
        )
        + " |",
        f"| claim → bound p50 / p95 | {b['warm']['p50'] * 1000:.0f} ms / {b['warm']['p95'] * 1000:.0f} ms (n={b['warm']['n']}) | "
        f"{b['cold']['p50'] * 1000:.0f} ms / {b['cold']['p95'] * 1000:.0f} ms | – |",
        f"| {c['kernels']} kernels at once (pool of {results['pool_size']}): wall (each p50 / p95) | {c['wall_s']:.2f} s "
        f"({c['each_s']['p50']:.2f} / {c['each_s']['p95']:.2f} s) | – | – |",
        (
            f"| pool refill after {c['kernels']} taken (first take → full) | {c['refill_s']:.1f} s "
            f"({c['refill_rate_per_s']:.2f} sandboxes/s) | – | – |"
            if c["refill_s"] is not None
            else f"| pool refill after {c['kernels']} taken | not full within 120 s ({c['refilled']} of "
            f"{results['pool_size']} ready) | – | – |"
        ),
        f"| warm speed-up over cold (p50) | {s['cold (controller)']['p50'] / s['warm']['p50']:.1f}× | 1× | – |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
