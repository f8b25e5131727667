"""``%sandbox lab | describe | logs``: the troubleshooting lab of study notebook 06.

``%sandbox lab NAME`` makes one broken sandbox: a pod ``lab-NAME`` in the kernel's own sandbox
namespace, built like the kernel's pod (same builder, so the admission policies of
k8s/rbac/admission-policy.yaml admit it) with one thing wrong (:data:`SCENARIOS`). It prints what
``kubectl apply`` and ``kubectl get pod`` would — the symptom, never the cause — and the learner
finds the cause with ``%sandbox describe NAME``, ``%sandbox events``, ``%sandbox logs NAME`` and
``%sandbox quota``. ``%sandbox lab clean`` deletes the lab's pods; the kernel's shutdown deletes
the namespace with everything in it.

What a pod shows is written by the node and by the container (a log, a termination message):
untrusted, so it is bounded and stripped of control characters before it is printed.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Sequence

from ..errors import ConfigError, SandboxError
from ..quantity import parse_bytes
from . import manifests
from .api import KubernetesApi, is_not_found
from .pod_command import agent_command
from .settings import KubernetesSandbox

SCENARIOS = {
    "over-limits": "a sandbox whose container asks for more memory",
    "over-quota": "a sandbox that reserves more memory",
    "missing-image": "a sandbox on another image tag",
    "crash-loop": "a sandbox on a smaller image",
}
"""The broken sandboxes, with what the learner is told about each (not what is wrong)."""
PREFIX = "lab-"
LIFETIME = 600
"""activeDeadlineSeconds of a lab pod: a forgotten crash loop ends after 10 minutes."""
SETTLE = 60.0
"""Most seconds ``%sandbox lab NAME`` waits for the pod to show its trouble."""
LOG_BYTES = 16 * 1024
LOG_LINES = 50
FIELD = 300
"""Most characters shown of any one field the node or the container wrote."""

_POD = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Terminal escape sequences (CSI, OSC) and other control characters: removed from what is shown."""
_STARTING = {"Pending", "ContainerCreating", "PodInitializing", "Running", "Error", "Completed"}


def lab_pod(
    ident: manifests.SandboxIdentity, base: manifests.PodSpec, scenario: str, settings: KubernetesSandbox
) -> dict[str, Any]:
    """The broken pod of ``scenario``: the kernel's own pod (``base``), small, with one thing wrong. Pure."""
    small = dataclasses.replace(
        base,
        name=PREFIX + scenario,
        cpu_request="10m",
        memory_request="16Mi",
        cpu_limit="100m",
        memory_limit="32Mi",
        scratch_size="8Mi",
        tmp_size="8Mi",
        active_deadline_seconds=LIFETIME,
    )
    max_memory = parse_bytes(settings.limit_range_max_memory)
    if scenario == "over-limits":  # twice what the LimitRange allows one container
        spec = dataclasses.replace(small, memory_request="64Mi", memory_limit=f"{2 * max_memory // 2**20}Mi")
    elif scenario == "over-quota":  # within the LimitRange, but more than the quota has left
        spec = dataclasses.replace(
            small, memory_request=settings.limit_range_max_memory, memory_limit=settings.limit_range_max_memory
        )
    elif scenario == "missing-image":
        repository = base.image.rsplit(":", 1)[0] if base.image.startswith("localhost/") else "localhost/sandbox-python"
        spec = dataclasses.replace(small, image=f"{repository}:no-such-tag")
    elif scenario == "crash-loop":  # the Python sandbox's command on the Bash image, which has no python3
        spec = dataclasses.replace(small, image=settings.images.get("bash") or "bash:5.2")
    else:
        raise ValueError(scenario)
    pod = manifests.pod(ident, spec)
    pod["metadata"]["labels"]["app.kubernetes.io/name"] = "sandbox-lab"
    if scenario == "crash-loop":
        pod["spec"]["restartPolicy"] = "Always"
        pod["spec"]["containers"][0]["command"] = agent_command("python3", "python_agent.py", spec.network_policy_wait)
    return pod


def answer(
    topic: str,
    words: list[str],
    api: KubernetesApi,
    ident: manifests.SandboxIdentity,
    pod_name: str | None,
    base: manifests.PodSpec,
    settings: KubernetesSandbox,
) -> str:
    namespace = ident.namespace
    if topic == "lab":
        if not words:
            return listing(api, namespace)
        if words == ["clean"]:
            return clean(api, namespace)
        if len(words) != 1 or words[0] not in SCENARIOS:
            raise ConfigError("%sandbox lab", f"usage: %sandbox lab [{' | '.join(SCENARIOS)} | clean]")
        if settings.mode == "claims":
            raise ConfigError(
                "%sandbox lab",
                "the lab's pods are made with the kernel's identity, which in claims mode may make none",
                hint="Use a kernel in direct mode (KubernetesSandbox.mode = 'direct') for notebook 06.",
            )
        return start(api, lab_pod(ident, base, words[0], settings))
    previous = "--previous" in words or "-p" in words
    names = [w for w in words if w not in ("--previous", "-p")]
    if len(names) > 1 or (topic == "describe" and previous):
        raise ConfigError(f"%sandbox {topic}", "usage: %sandbox describe [POD]; %sandbox logs [POD] [--previous]")
    name = names[0] if names else (pod_name or "")
    name = PREFIX + name if name in SCENARIOS else name
    if not _POD.match(name):
        raise ConfigError(f"%sandbox {topic}", f"{name[:80]!r} is not a pod name")
    return describe(api, namespace, name) if topic == "describe" else logs(api, namespace, name, previous)


def start(api: KubernetesApi, pod: dict[str, Any]) -> str:
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    if api.read_pod(namespace, name) is not None:
        api.delete_pod(namespace, name)  # made again from scratch
        _wait(lambda: api.read_pod(namespace, name) is None, 30)
    try:
        api.create(pod)
    except SandboxError as exc:
        if exc.api_status is None:
            raise
        return f"Error from server ({exc.api_status.reason or exc.api_status.code}): {exc.api_status.message}"
    shown: dict[str, Any] = {}

    def settled() -> bool:
        shown.update(api.read_pod(namespace, name) or {})
        return status_word(shown) not in _STARTING

    _wait(settled, SETTLE)
    return f"pod/{name} created\n" + _get_pods([shown])


def listing(api: KubernetesApi, namespace: str) -> str:
    rows = [("SCENARIO", "WHAT YOU ARE TOLD", "POD")]
    for scenario, told in SCENARIOS.items():
        pod = api.read_pod(namespace, PREFIX + scenario)
        rows.append((scenario, told, f"{PREFIX}{scenario}: {status_word(pod)}" if pod else "-"))
    return columns(rows) + "\n\nStart one with %sandbox lab NAME; %sandbox lab clean deletes the lab's pods."


def clean(api: KubernetesApi, namespace: str) -> str:
    gone = [f"pod/{PREFIX}{s}" for s in SCENARIOS if api.delete_pod(namespace, PREFIX + s)]
    return f"deleted {', '.join(gone)}" if gone else "no lab pods to delete"


def describe(api: KubernetesApi, namespace: str, name: str) -> str:
    """``kubectl describe pod``, the parts that tell why a pod does not run."""
    pod = api.read_pod(namespace, name)
    if pod is None:
        return f'Error from server (NotFound): pods "{name}" not found'
    spec, status = pod.get("spec", {}), pod.get("status", {})
    container = (spec.get("containers") or [{}])[0]
    command = " ".join(container.get("command") or [])
    resources = container.get("resources", {})
    rows = [
        ("Name:", name),
        ("Namespace:", namespace),
        ("Node:", str(spec.get("nodeName", "<none>"))),
        ("Status:", f"{status.get('phase', '?')}" + (f" ({_clean(status['reason'])})" if status.get("reason") else "")),
        ("Image:", str(container.get("image", ""))),
        ("Command:", _clean(command[:70]) + (f"... ({len(command):,} characters)" if len(command) > 70 else "")),
        ("Restart Policy:", str(spec.get("restartPolicy", ""))),
        ("Limits:", _quantities(resources.get("limits"))),
        ("Requests:", _quantities(resources.get("requests"))),
    ]
    for cs in status.get("containerStatuses") or []:
        rows += (
            [("Container:", str(cs.get("name", "")))]
            + _state("  State:", cs.get("state"))
            + _state("  Last State:", cs.get("lastState"))
        )
        rows += [("  Ready:", str(cs.get("ready", False))), ("  Restart Count:", str(cs.get("restartCount", 0)))]
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True" and cond.get("message"):
            rows.append((f"Condition {cond.get('type')}:", _clean(cond["message"])))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.ljust(width)} {v}" for k, v in rows)
    events = [e for e in api.list_events(namespace) if e.get("involvedObject", {}).get("name") == name]
    events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    table = [("TYPE", "REASON", "COUNT", "MESSAGE")] + [
        (str(e.get("type", "")), str(e.get("reason", "")), str(e.get("count") or 1), _clean(e.get("message", "")))
        for e in events[-15:]
    ]
    return text + "\nEvents:\n" + ("  " + columns(table).replace("\n", "\n  ") if events else "  <none>")


def logs(api: KubernetesApi, namespace: str, name: str, previous: bool) -> str:
    """``kubectl logs [--previous]``: the container's output, its last lines, bounded."""
    query = [
        ("container", manifests.CONTAINER_NAME),
        ("limitBytes", str(LOG_BYTES)),
        ("tailLines", str(LOG_LINES)),
        ("previous", "true" if previous else "false"),
    ]
    try:
        text = api.read_log(namespace, name, query)
    except SandboxError as exc:
        if exc.api_status is None:
            raise
        if is_not_found(exc) and "pods" in exc.api_status.message:
            return f'Error from server (NotFound): pods "{name}" not found'
        return f"Error from server ({exc.api_status.reason or exc.api_status.code}): {_clean(exc.api_status.message)}"
    lines = [_CONTROL.sub("", line)[:FIELD] for line in text.splitlines()]
    return "\n".join(lines) if lines else f"(pod {name} wrote nothing{' before its last restart' if previous else ''})"


def status_word(pod: dict[str, Any] | None) -> str:
    """The STATUS column of ``kubectl get pods``."""
    if not pod:
        return "-"
    status = pod.get("status", {})
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state", {})
        for key in ("waiting", "terminated"):
            if state.get(key, {}).get("reason"):
                return _clean(state[key]["reason"])[:40]
    return _clean(status.get("reason") or status.get("phase") or "Pending")[:40]


def _get_pods(pods: list[dict[str, Any]]) -> str:
    rows = [("NAME", "READY", "STATUS", "RESTARTS")]
    for pod in pods:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        ready = sum(1 for cs in statuses if cs.get("ready"))
        rows.append(
            (
                str(pod.get("metadata", {}).get("name", "")),
                f"{ready}/{len(pod.get('spec', {}).get('containers') or [])}",
                status_word(pod),
                str(sum(int(cs.get("restartCount", 0)) for cs in statuses)),
            )
        )
    return columns(rows)


def _state(label: str, state: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not state:
        return []
    key = next(iter(state))
    rows = [(label, key.capitalize())]
    for field, title in (("reason", "Reason"), ("message", "Message"), ("exitCode", "Exit Code"), ("signal", "Signal")):
        if field in state[key]:
            rows.append((f"    {title}:", _clean(str(state[key][field]))))
    return rows


def _quantities(values: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((values or {}).items())) or "<none>"


def _clean(text: Any) -> str:
    return _CONTROL.sub("", str(text)).replace("\n", " ")[:FIELD]


def _wait(done: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.5)


def columns(table: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns, as kubectl prints tables."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
