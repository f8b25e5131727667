"""Where a Kubernetes cold start's time goes, step by step, beside bare pods started in the same run.

    SANDBOX_KUBECONFIG=<admin kubeconfig> python benchmarks/bench_cold_start.py [--starts 10] [--jupyter-starts 10]

Every sandbox is made as the least-privilege service account (k8s/rbac/), direct mode, no pool.
Each step's time comes from where it happens, on one clock (the cluster is this machine):

- the kernel's side: the session's own event log (namespace and objects created, pod created,
  pod seen running, attached), ``start()`` returning (the agent's ``ready``), ``1+1`` answered;
- the API server's view: a watch on pods (as admin) records when the pod was created, when the
  scheduler bound it (``nodeName``), and when its status first showed the container running
  (the kubelet reports that at its next pod-status relist, PLEG, once a second);
- the node's side: containerd's log (``RunPodSandbox``: the pod sandbox and its network;
  ``StartContainer``: the agent's container), so the kubelet's own share (admission, cgroups,
  waiting for volumes) shows as "scheduled → sandbox requested".

Baselines in the same run, interleaved: a bare pod (same image, no volumes) and the same with one
emptyDir, created as admin and timed to "running" by the same watch: what any pod costs on this
cluster, and what one volume adds (the kubelet checks volumes every 300 ms).

Through Jupyter (``--jupyter-starts``): ``KernelManager.start_kernel()`` until ``1+1`` answered,
with the same node-side steps (the early start creates the pod while the kernel process imports).
With ``--baseline-tree DIR`` (another checkout, e.g. ``git worktree add /tmp/base main``) every
Jupyter start of this tree's kernel is paired with one of that tree's, in alternating order, so
both see the same load.

Prints markdown tables and writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # kernels.py, which the e2e fixtures import
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from kubernetes import client, config, watch  # noqa: E402

from fixtures_kubernetes import images_from_cache, kernel_environment  # noqa: E402
from sandbox_kernel.config import Sandbox  # noqa: E402
from sandbox_kernel.kubernetes import manifests  # noqa: E402
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession  # noqa: E402
from sandbox_kernel.kubernetes.settings import KubernetesSandbox  # noqa: E402
from sandbox_kernel.languages import LANGUAGES  # noqa: E402
from sandbox_kernel.session import ExecuteResult  # noqa: E402

LOGS = Path(os.environ.get("SANDBOX_CLUSTER_STATE", "/var/lib/sandbox-kernel-cluster")) / "logs"
CONTAINERD_LOG = LOGS / "containerd.log"
KUBE_ROUTER_LOG = LOGS / "kube-router.log"
BENCH_LABEL = "sandbox-kernel-bench"

from percentiles import pct  # noqa: E402  (the benchmarks' directory is on sys.path: it holds the script)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "min": min(values, default=float("nan")),
        "max": max(values, default=float("nan")),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The API server's view: a watch on every pod of ours.


class PodWatch:
    """Records, per (namespace, pod), when the watch first showed it created, bound, running."""

    def __init__(self, admin: client.ApiClient) -> None:
        self.core = client.CoreV1Api(admin)
        self.seen: dict[tuple[str, str], dict[str, float]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                for item in watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, timeout_seconds=60, _request_timeout=90
                ):
                    now = time.time()
                    pod = item["object"]
                    if not pod.metadata.namespace.startswith(("sandbox-", BENCH_LABEL)):
                        continue
                    marks = self.seen.setdefault((pod.metadata.namespace, pod.metadata.name), {})
                    marks.setdefault("created", now)
                    if pod.spec.node_name:
                        marks.setdefault("scheduled", now)
                    if pod.status and pod.status.pod_ip:
                        marks.setdefault("ip", now)
                    for status in (pod.status.container_statuses or []) if pod.status else []:
                        if status.state and status.state.running:
                            marks.setdefault("running", now)
                    if self._stop:
                        return
            except Exception as exc:  # noqa: BLE001 - keep watching
                log(f"watch restarted: {exc}")
                time.sleep(0.2)

    def marks(self, namespace: str, name: str, timeout: float = 5.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and "running" not in self.seen.get((namespace, name), {}):
            time.sleep(0.05)
        return dict(self.seen.get((namespace, name), {}))

    def stop(self) -> None:
        self._stop = True


# ---------------------------------------------------------------------------------------------
# The node's side: containerd's log.

_TIME = re.compile(r'time="([^"]+)"')


def _when(line: str) -> float | None:
    found = _TIME.search(line)
    if not found:
        return None
    text = found.group(1)
    # 2026-12-02T15:20:01.123456789Z: Python takes microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    from datetime import datetime, timezone

    base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def node_marks(namespace: str, since_offset: int) -> dict[str, float]:
    """containerd's times for the pod sandbox of ``namespace`` (from the log past ``since_offset``)."""
    marks: dict[str, float] = {}
    sandbox_id = container_id = ""
    with open(CONTAINERD_LOG, errors="replace") as f:
        f.seek(since_offset)
        for line in f:
            if f"Namespace:{namespace}," in line and "RunPodSandbox for" in line:
                when = _when(line)
                if "returns sandbox id" in line:
                    marks.setdefault("sandbox_ready", when or 0)
                    found = re.search(r'returns sandbox id \\"([0-9a-f]+)\\"', line)
                    sandbox_id = found.group(1) if found else ""
                else:
                    marks.setdefault("sandbox_requested", when or 0)
            elif sandbox_id and f'within sandbox \\"{sandbox_id}\\"' in line and "returns container id" in line:
                found = re.search(r'returns container id \\"([0-9a-f]+)\\"', line)
                container_id = found.group(1) if found else ""
                marks.setdefault("container_created", _when(line) or 0)
            elif container_id and f'StartContainer for \\"{container_id}\\" returns successfully' in line:
                marks.setdefault("container_started", _when(line) or 0)
    return marks


def log_offset() -> int:
    try:
        return CONTAINERD_LOG.stat().st_size
    except OSError:
        return 0


_KLOG = re.compile(r"^I(\d\d)(\d\d) (\d\d):(\d\d):(\d\d\.\d+) .*(Starting sync of iptables|sync iptables took)")


def policy_synced(after: float) -> dict[str, float]:
    """kube-router's first firewall sync that started after ``after`` (the pod's IP in the API):
    when it started and when it ended (its rules for the new pod are in force then)."""
    from datetime import datetime, timezone

    year = time.gmtime(after).tm_year
    marks: dict[str, float] = {}
    try:
        lines = KUBE_ROUTER_LOG.read_text(errors="replace").splitlines()[-4000:]
    except OSError:
        return marks
    for line in lines:
        found = _KLOG.match(line)
        if not found:
            continue
        month, day, hour, minute, sec, what = found.groups()
        when = datetime(year, int(month), int(day), int(hour), int(minute), tzinfo=timezone.utc).timestamp() + float(
            sec
        )
        # The watch sees the pod's IP a few ms after kube-router does: allow for that.
        if what.startswith("Starting") and when >= after - 0.05 and "policy_sync_started" not in marks:
            marks["policy_sync_started"] = when
        elif what.startswith("sync") and "policy_sync_started" in marks:
            marks["policy_synced"] = when
            return marks
    return marks


# ---------------------------------------------------------------------------------------------
# A sandbox session's cold start, step by step.


def session_steps(kubeconfig: str, image: str, pods: PodWatch) -> dict[str, float]:
    settings = KubernetesSandbox(kubeconfig=kubeconfig, images={"python": image})
    session = KubernetesSandboxSession(
        LANGUAGES["python"], Sandbox(timeout=60).limits(), settings, kernel_id=f"bench-{uuid.uuid4().hex[:8]}"
    )
    offset = log_offset()

    async def go() -> dict[str, float]:
        t0 = time.time()
        await session.start()
        ready = time.time()
        result = ""
        async for event in session.execute("1+1"):
            if isinstance(event, ExecuteResult):
                result = str(event.data.get("text/plain"))
        assert result == "2", result
        done = time.time()
        events = list(session._events)  # noqa: SLF001 - the session's own timeline
        namespace, pod = session.namespace or "", session.pod_name or ""
        await session.close()
        marks = {
            "t0": t0,
            "ready": ready,
            "result": done,
            **kernel_marks(events),
            **pods.marks(namespace, pod),
            **node_marks(namespace, offset),
        }
        return {**marks, **policy_synced(marks.get("ip", t0))}

    return asyncio.run(go())


def kernel_marks(events: list[tuple[float, str]]) -> dict[str, float]:
    marks: dict[str, float] = {}
    for when, text in events:
        for key, words in (
            ("objects_created", "namespace sandbox-"),
            ("pod_posted", " created (image "),
            ("running_seen", " running on node "),
            ("attached", "attached to pod "),
        ):
            if words in text:
                marks.setdefault(key, when)
    return marks


STEPS = [
    ("kernel: namespace and its objects created", "t0", "objects_created"),
    ("kernel: pod POST answered", "objects_created", "pod_posted"),
    ("scheduler: pod bound to the node (watch)", "pod_posted", "scheduled"),
    ("kubelet: admission, cgroups, volumes (until it asks for the pod sandbox)", "scheduled", "sandbox_requested"),
    ("containerd: pod sandbox and its network (CNI)", "sandbox_requested", "sandbox_ready"),
    ("containerd: agent container created and started", "sandbox_ready", "container_started"),
    ("kubelet: container started → status shows it running (PLEG relist)", "container_started", "running"),
    ("kube-router: status running → its firewall sync starts", "running", "policy_sync_started"),
    (
        "kube-router: firewall sync (the pod's deny-all rules in force at its end)",
        "policy_sync_started",
        "policy_synced",
    ),
    ("pod: rules in force → guard passed, agent `ready` read by the kernel", "policy_synced", "ready"),
    ("(kernel: status running → seen by its poll)", "running", "running_seen"),
    ("(kernel: seen running → attached)", "running_seen", "attached"),
    ("first cell `1+1`", "ready", "result"),
    ("total: start → first result", "t0", "result"),
]


def breakdown(samples: list[dict[str, float]], steps: list[tuple[str, str, str]]) -> dict[str, dict[str, float]]:
    out = {}
    for label, a, b in steps:
        deltas = [s[b] - s[a] for s in samples if a in s and b in s]
        out[label] = summary(deltas)
    return out


# ---------------------------------------------------------------------------------------------
# Baselines: bare pods.


def bare_pod(name: str, image: str, volume: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", "import time; time.sleep(120)"],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
    }
    if volume:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
        container["volumeMounts"] = [{"name": "scratch", "mountPath": "/home/sandbox"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def bare_steps(core: client.CoreV1Api, namespace: str, image: str, volume: bool, pods: PodWatch) -> dict[str, float]:
    name = f"bare-{uuid.uuid4().hex[:6]}"
    offset = log_offset()
    t0 = time.time()
    core.create_namespaced_pod(namespace, bare_pod(name, image, volume))
    posted = time.time()
    marks = pods.marks(namespace, name, timeout=60)
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    found = {"t0": t0, "pod_posted": posted, **marks}
    # containerd names the sandbox by pod namespace: one bare pod at a time, so the namespace is enough.
    found.update(node_marks(namespace, offset))
    return found


BARE_STEPS = [
    ("pod POST answered", "t0", "pod_posted"),
    ("scheduler: bound (watch)", "pod_posted", "scheduled"),
    ("kubelet: until it asks for the pod sandbox", "scheduled", "sandbox_requested"),
    ("containerd: pod sandbox and network", "sandbox_requested", "sandbox_ready"),
    ("containerd: container created and started", "sandbox_ready", "container_started"),
    ("kubelet: started → status running (PLEG relist)", "container_started", "running"),
    ("total: POST → status running", "t0", "running"),
]


# ---------------------------------------------------------------------------------------------
# Through Jupyter.


SITECUSTOMIZE = """
import logging, os, time
_t0 = time.time()
_out = open(os.environ["BENCH_KERNEL_TIMELINE"], "a", buffering=1)
_out.write(f"{_t0:.6f} process started\\n")
class _Timeline(logging.Handler):
    def emit(self, record):
        _out.write(f"{record.created:.6f} {record.getMessage()}\\n")
_log = logging.getLogger("sandbox_kernel")
_log.setLevel(logging.DEBUG)
_log.addHandler(_Timeline())
"""
"""A sitecustomize for the kernel process (on its PYTHONPATH): its own timeline, from the
interpreter's start, with the session's events at millisecond resolution."""

_TIMELINE_MARKS = (
    ("process_started", "process started"),
    ("early_made", "early sandbox start: created"),
    ("session_took_over", "took over the early attach"),
    ("session_attached", "attached to pod"),
)


def timeline_marks(path: Path) -> dict[str, float]:
    marks: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return marks
    for line in lines:
        when, _, text = line.partition(" ")
        for key, words in _TIMELINE_MARKS:
            if words in text:
                marks.setdefault(key, float(when))
    return marks


def jupyter_steps(env: dict[str, str], pods: PodWatch, admin_core: client.CoreV1Api) -> dict[str, float]:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernel_id = f"bench-{uuid.uuid4().hex[:8]}"
    site = Path(tempfile.mkdtemp(prefix="bench-site-"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    timeline = site / "timeline.txt"
    env = {**env, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(site)]), "BENCH_KERNEL_TIMELINE": str(timeline)}
    km = KernelManager(
        kernel_name="sandbox-python",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(Path(env["JUPYTER_PATH"]) / "kernels")]),
    )
    km.shutdown_wait_time = 60
    offset = log_offset()
    t0 = time.time()
    km.start_kernel(env={**os.environ, **env, "SANDBOX_KERNEL_ID": kernel_id})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        ready = time.time()
        reply = kc.execute_interactive("1+1", timeout=120, output_hook=lambda m: None)
        done = time.time()
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        namespaces = admin_core.list_namespace(
            label_selector=f"sandbox-kernel/kernel-id={manifests.label_value(kernel_id)}"
        ).items
        km.shutdown_kernel(now=False)
    namespace = namespaces[0].metadata.name if namespaces else ""
    marks = {
        "t0": t0,
        "kernel_info": ready,
        "result": done,
        **pods.marks(namespace, "sandbox-1"),
        **node_marks(namespace, offset),
        **timeline_marks(timeline),
    }
    return {**marks, **policy_synced(marks.get("ip", t0))}


JUPYTER_STEPS = [
    ("jupyter_client: start_kernel() → the kernel's interpreter runs", "t0", "process_started"),
    ("kernel process: interpreter → pod created (early start)", "process_started", "created"),
    ("scheduler: bound (watch)", "created", "scheduled"),
    ("kubelet: until it asks for the pod sandbox", "scheduled", "sandbox_requested"),
    ("containerd: pod sandbox and network", "sandbox_requested", "sandbox_ready"),
    ("containerd: container created and started", "sandbox_ready", "container_started"),
    ("kubelet: started → status running (PLEG relist)", "container_started", "running"),
    ("kube-router: status running → its firewall sync starts", "running", "policy_sync_started"),
    ("kube-router: firewall sync", "policy_sync_started", "policy_synced"),
    ("rules in force → kernel_info answered (guard, agent, kernel)", "policy_synced", "kernel_info"),
    ("(kernel process: interpreter → session takes the sandbox over)", "process_started", "session_took_over"),
    ("(kernel process: interpreter → session attached itself, baseline)", "process_started", "session_attached"),
    ("kernel_info → `1+1` answered", "kernel_info", "result"),
    ("total: start_kernel() → first result", "t0", "result"),
]


def table(title: str, steps: dict[str, dict[str, float]]) -> str:
    lines = [f"| {title} | p50 ms | p95 ms | min–max ms |", "|---|---|---|---|"]
    for label, s in steps.items():
        lines.append(
            f"| {label} | {s['p50'] * 1000:.0f} | {s['p95'] * 1000:.0f} | {s['min'] * 1000:.0f}–{s['max'] * 1000:.0f} (n={s['n']}) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("SANDBOX_KUBECONFIG", ""), help="an admin kubeconfig")
    parser.add_argument("--starts", type=int, default=10, help="sandbox session starts (and bare pods of each kind)")
    parser.add_argument("--jupyter-starts", type=int, default=10)
    parser.add_argument("--baseline-tree", default="", help="a checkout whose kernel alternates with this one's")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cold_start.json"))
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("set SANDBOX_KUBECONFIG or --kubeconfig")
    images = {k: v for k, v in images_from_cache().items() if k.startswith("SANDBOX_IMAGE_")}
    image = images.get("SANDBOX_IMAGE_PYTHON") or LANGUAGES["python"].default_image
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    env = kernel_environment(args.kubeconfig, images, work)
    admin = config.new_client_from_config(config_file=args.kubeconfig)
    core = client.CoreV1Api(admin)
    bench_ns = f"{BENCH_LABEL}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": bench_ns}})
    time.sleep(1.0)  # its default ServiceAccount
    pods = PodWatch(admin)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "image": image,
    }
    raw: dict[str, list[dict[str, float]]] = {
        "session": [],
        "bare": [],
        "bare+emptyDir": [],
        "jupyter": [],
        "jupyter (baseline)": [],
    }
    failures: list[str] = []
    baseline_env = None
    if args.baseline_tree:
        tree = str(Path(args.baseline_tree).resolve())
        baseline_env = {**env, "PYTHONPATH": os.pathsep.join([tree, *env["PYTHONPATH"].split(os.pathsep)[1:]])}
        results["baseline_tree"] = {"path": tree, "commit": os.popen(f"git -C {tree} rev-parse HEAD").read().strip()}
    try:
        time.sleep(1.0)  # the watch is listening
        for i in range(max(args.starts, args.jupyter_starts)):
            runs: list[tuple[str, Callable[[], dict[str, float]]]] = []
            if i < args.starts:
                runs += [
                    ("session", lambda: session_steps(env["SANDBOX_KUBECONFIG"], image, pods)),
                    ("bare", lambda: bare_steps(core, bench_ns, image, False, pods)),
                    ("bare+emptyDir", lambda: bare_steps(core, bench_ns, image, True, pods)),
                ]
            if i < args.jupyter_starts:
                pair = [("jupyter", lambda: jupyter_steps(env, pods, core))]
                if baseline_env is not None:
                    pair.append(("jupyter (baseline)", lambda: jupyter_steps(baseline_env, pods, core)))
                runs += pair if i % 2 == 0 else pair[::-1]  # neither always follows the other
            for kind, run in runs:
                try:
                    raw[kind].append(run())
                except Exception as exc:  # noqa: BLE001 - a failed start is reported, not measured
                    failures.append(f"{kind}: {exc}"[:500])
                    log(f"{kind} failed: {exc}"[:500])
            last = {k: v[-1] for k, v in raw.items() if v}
            log(
                f"round {i + 1}: "
                + ", ".join(f"{k} {(v.get('result') or v.get('running', 0)) - v['t0']:.2f} s" for k, v in last.items())
            )
    finally:
        pods.stop()
        core.delete_namespace(bench_ns)
    results["load_after"] = os.getloadavg()
    results["failures"] = failures
    results["session"] = breakdown(raw["session"], STEPS)
    results["bare"] = breakdown(raw["bare"], BARE_STEPS)
    results["bare+emptyDir"] = breakdown(raw["bare+emptyDir"], BARE_STEPS)
    results["jupyter"] = breakdown(raw["jupyter"], JUPYTER_STEPS)
    results["jupyter (baseline)"] = breakdown(raw["jupyter (baseline)"], JUPYTER_STEPS)
    results["raw"] = raw
    print(table("sandbox session (direct mode), step", results["session"]))
    print()
    print(table("Jupyter kernel, step", results["jupyter"]))
    print()
    if raw["jupyter (baseline)"]:
        print(table(f"Jupyter kernel of {args.baseline_tree}, step", results["jupyter (baseline)"]))
        print()
    print(table("bare pod, step", results["bare"]))
    print()
    print(table("bare pod + one emptyDir, step", results["bare+emptyDir"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
