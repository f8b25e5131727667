"""What a sandbox pod's status says, in the user's words (pure functions over ``kubectl get -o json`` dicts).

While a pod starts, :func:`start_problem` tells a pod that will never run (an image that cannot
be pulled, a container that cannot be created, no node that fits) from one that is merely slow;
once its stream ended, :func:`end_reason` and :func:`eviction_event` say why the agent is gone
(out of memory, evicted, the pod's lifetime reached, the NetworkPolicy not enforced, ...).
:func:`waiting_for` says what a slow start is waiting for (the scheduler, an image pull, ...),
for the progress line the first cell shows.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

from ..config import Limits
from ..errors import Evicted, OutOfMemory, SandboxError, SandboxLost, SandboxStartError, Unschedulable
from . import manifests, pod_command

_START_FAILURES = {
    "ErrImagePull": "could not be pulled",
    "ImagePullBackOff": "could not be pulled",
    "InvalidImageName": "is not a valid image name",
    "ErrImageNeverPull": "is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "could not be configured",
    "CreateContainerError": "could not be created",
    "RunContainerError": "could not be started",
}


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    """The status of the sandbox container in ``pod`` (``{}`` before the kubelet reports one)."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == manifests.CONTAINER_NAME:
            return cast("dict[str, Any]", status)
    return {}


def start_problem(pod: dict[str, Any], image: str) -> SandboxError | None:
    """Why a starting pod will not run (pull error, bad config, unschedulable), or None."""
    waiting = container_status(pod).get("state", {}).get("waiting") or {}
    reason = waiting.get("reason", "")
    if reason in _START_FAILURES:
        detail = waiting.get("message") or reason
        hint = ""
        if "pull" in _START_FAILURES[reason] or reason == "ErrImageNeverPull":
            hint = " Set c.KubernetesSandbox.images (or SANDBOX_IMAGE_<LANGUAGE>) to an image the cluster can use."
        return SandboxStartError(
            f"The sandbox image {image} {_START_FAILURES[reason]} ({reason}): {detail}.{hint}",
            hint="%sandbox events shows the kubelet's own account of the failure.",
        )
    for condition in pod.get("status", {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return Unschedulable(
                f"No node can run the sandbox pod: {condition.get('message', 'unschedulable')}. "
                "Check KubernetesSandbox.node_selector / tolerations and Sandbox.memory_request / cpu_request."
            )
    return None


def end_reason(pod: dict[str, Any] | None, limits: Limits, pod_lifetime: int) -> SandboxError | None:
    """Why the sandbox pod's agent ended, from the pod's status; None while it still runs."""
    gone = "A new sandbox pod is started; variables from earlier cells are gone."
    if pod is None:
        return SandboxLost(f"The sandbox pod was deleted. {gone}")
    status = pod.get("status", {})
    if status.get("reason") == "Evicted":
        why = (status.get("message") or "no reason given").strip().rstrip(".")
        return Evicted(f"Kubernetes evicted the sandbox pod: {why}. {gone}")
    if status.get("reason") == "DeadlineExceeded":
        return SandboxLost(
            f"The sandbox pod reached its maximum lifetime of {pod_lifetime} s (KubernetesSandbox.pod_lifetime). {gone}",
            hint="Raise KubernetesSandbox.pod_lifetime for longer sessions; re-run the cells you need in the new pod.",
        )
    terminated = container_status(pod).get("state", {}).get("terminated")
    if terminated:
        if terminated.get("reason") == "OOMKilled":
            return OutOfMemory(limits.memory)
        if terminated.get("exitCode") == pod_command.POLICY_NOT_ENFORCED:
            return SandboxStartError(
                "The sandbox pod could still reach the Kubernetes API server (over IPv4, or the node over IPv6 "
                "link-local) after KubernetesSandbox.network_policy_wait seconds: the deny-all NetworkPolicy is not "
                "enforced in this cluster (does its network plugin support NetworkPolicy, for IPv6 too?). Cells are "
                "not run without it.",
                hint="Use a network plugin that enforces NetworkPolicy (k8s/README.md); cells never run without it.",
            )
        if terminated.get("exitCode") == pod_command.NAMESPACES_REFUSED:
            return SandboxStartError(
                "The sandbox's stream relay could not run the agent in a user and PID namespace of its own: this "
                "runtime forbids them (the container's log has unshare's message). Cells are not run without it.",
                hint="Set KubernetesSandbox.stream_relay = 'off' for a runtime that honours the agent's "
                "non-dumpable processes (runc does), or use one that allows user namespaces (gVisor does).",
            )
        why = terminated.get("reason") or "stopped"
        detail = f": {terminated['message'].strip()}" if terminated.get("message") else ""
        return SandboxLost(f"The sandbox stopped ({why}, exit code {terminated.get('exitCode')}){detail}. {gone}")
    if status.get("phase") in ("Failed", "Succeeded"):
        return SandboxLost(f"The sandbox pod ended ({status.get('phase')}: {status.get('message', '')}). {gone}")
    return None


def eviction_event(events: list[dict[str, Any]], pod_name: str) -> Evicted | None:
    """The kubelet's Evicted event for ``pod_name`` among a namespace's events, as an error."""
    for event in events:
        obj = event.get("involvedObject") or {}
        if event.get("reason") == "Evicted" and obj.get("kind") == "Pod" and obj.get("name") == pod_name:
            why = (event.get("message") or "no reason given").strip().rstrip(".")
            return Evicted(
                f"Kubernetes evicted the sandbox pod: {why}. A new sandbox pod is started; variables from earlier cells are gone."
            )
    return None


def container_running(pod: dict[str, Any] | None) -> bool:
    """Whether the sandbox container runs and the pod is not being deleted (so it can be attached to)."""
    return bool(
        pod
        and pod.get("status", {}).get("phase") == "Running"
        and container_status(pod).get("state", {}).get("running")
        and not pod.get("metadata", {}).get("deletionTimestamp")
    )


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def waiting_for(pod: dict[str, Any] | None, events: Sequence[dict[str, Any]] = (), image: str = "") -> str:
    """What a starting sandbox pod waits for, in words (pure): the line its first cell shows.

    ``events`` are its namespace's events (the kubelet says "Pulling" only there), ``image`` the
    sandbox image. An empty answer never: a pod not yet created is "being created".
    """
    if pod is None:
        return "creating the sandbox pod"
    name = pod.get("metadata", {}).get("name", "")
    status = pod.get("status", {})
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            why = (condition.get("message") or condition.get("reason") or "no reason given").strip()[:300]
            return f"no node can run the sandbox pod yet ({why})"
    node = pod.get("spec", {}).get("nodeName", "")
    if not node:
        return "waiting for the scheduler to choose a node"
    state = container_status(pod).get("state", {})
    if state.get("running") is not None:
        return "the pod runs; waiting for its deny-all NetworkPolicy to be in force and the agent to start"
    waiting = state.get("waiting") or {}
    if waiting.get("reason") not in (None, "", "ContainerCreating", "PodInitializing"):
        detail = f": {str(waiting['message']).strip()[:300]}" if waiting.get("message") else ""
        return f"the container is waiting ({waiting['reason']}{detail})"
    mine = [
        e
        for e in events
        if (e.get("involvedObject") or {}).get("kind") == "Pod" and (e.get("involvedObject") or {}).get("name") == name
    ]
    pulling = [e for e in mine if e.get("reason") == "Pulling"]
    if pulling:
        since = max(_event_time(e) for e in pulling)
        if not any(e.get("reason") == "Pulled" and _event_time(e) >= since for e in mine):
            return f"pulling the image {image or 'of the sandbox'} on node {node}"
    mounts = [e for e in mine if e.get("reason") == "FailedMount"]
    if mounts:
        latest = max(mounts, key=_event_time)
        return f"waiting for its volumes on node {node} ({str(latest.get('message') or '').strip()[:300]})"
    return f"starting the container on node {node}"
