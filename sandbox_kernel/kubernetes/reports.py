"""What ``%sandbox status | quota | policy | events | manifests`` shows on the Kubernetes backend.

Each report reads the objects of one sandbox namespace from the API server (blocking calls)
and puts them beside what only the session knows (:class:`SandboxFacts`): the limits it asked
for, the stream's health, the kernel's own log of events, the manifests it applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import Limits
from ..session import REPORT_TOPICS, ReportTopic
from . import manifests
from .api import KubernetesApi
from .attach import AttachChannel
from .pod_command import SANDBOX_HOME
from .settings import KubernetesSandbox

TOPICS = REPORT_TOPICS
"""The topics :func:`report` answers: every one of the contract's."""


@dataclass(frozen=True)
class SandboxFacts:
    """What the session knows about its sandbox that the API server does not."""

    ident: manifests.SandboxIdentity
    pod_name: str | None
    settings: KubernetesSandbox
    limits: Limits
    language: str
    """The language and its version, e.g. ``python 3.12.7``."""
    image: str
    """The image a new pod would use (shown when there is no pod)."""
    cell_timeout: float
    stream: str
    """:func:`stream_health` of the session's attach channel."""
    kernel_events: tuple[tuple[float, str], ...]
    """``(time.time(), text)`` of what the kernel did, oldest first."""
    applied: tuple[dict[str, Any], ...]
    """Every object the session created, in creation order."""
    claim: str = ""
    """Claims mode: ``<namespace>/<name>`` of the SandboxClaim the sandbox came with ('' in direct mode)."""
    from_pool: bool = False
    """Claims mode: whether the controller handed over a pooled sandbox (else it made one for the claim)."""
    egress_line: str = ""
    """The egress line of ``%sandbox policy`` when the sandbox has an allow list (:mod:`.egress`)."""


def report(topic: str, api: KubernetesApi, facts: SandboxFacts) -> str:
    """The text of ``%sandbox TOPIC`` (blocking; raises SandboxError if the API server fails)."""
    if topic not in TOPICS:
        raise ValueError(topic)
    return _REPORTS[topic](api, facts)


def stream_health(channel: AttachChannel | None) -> str:
    """One line on the attach stream: whether it dropped, and what that cost."""
    if channel is None:
        return "not attached"
    if not channel.reattached:
        return "attach, never dropped"
    return (
        f"attach, re-attached {channel.reattached} times; {channel.lost_output:,} bytes of output lost, "
        f"{channel.resent} requests sent again"
    )


def _status(api: KubernetesApi, facts: SandboxFacts) -> str:
    ident, limits, settings = facts.ident, facts.limits, facts.settings
    pod = api.read_pod(ident.namespace, facts.pod_name) if facts.pod_name else None
    if pod:
        status = pod.get("status", {})
        phase = f"{status.get('phase', '?')} on node {pod.get('spec', {}).get('nodeName', '?')}"
        image = pod["spec"]["containers"][0]["image"]
    else:
        phase, image = "no pod", facts.image
    if facts.claim:
        origin = (
            f"claims mode: SandboxClaim {facts.claim}, "
            + ("from the warm pool (made before the claim, used once)" if facts.from_pool else "made for the claim")
            + " by the sandbox controller"
        )
        beat = f"annotation on the SandboxClaim, renewed every {settings.heartbeat_interval:g} s, expires after {settings.heartbeat_ttl} s"
    else:
        origin = "direct mode: made by the kernel"
        beat = f"Lease {manifests.LEASE_NAME}, renewed every {settings.heartbeat_interval:g} s, expires after {settings.heartbeat_ttl} s"
    rows = [
        ("sandbox", origin),
        ("namespace", ident.namespace),
        ("pod", f"{facts.pod_name or '-'} ({phase})"),
        ("image", image),
        ("language", facts.language),
        (
            "limits",
            f"cpu {limits.cpu}, memory {limits.memory} (requests {limits.cpu_request} / {limits.memory_request})",
        ),
        ("scratch", f"{limits.scratch} tmpfs at {SANDBOX_HOME}, {settings.tmp_size} at /tmp (in memory)"),
        ("seccomp", f"Localhost {settings.seccomp_profile}" if settings.seccomp_profile else "RuntimeDefault"),
        ("cell timeout", f"{facts.cell_timeout:g} s"),
        ("pod lifetime", f"{settings.pod_lifetime} s"),
        ("heartbeat", beat),
        ("owner", f"{ident.owner} ({ident.user or 'unknown user'})"),
        ("kernel", ident.kernel_id),
        ("stream", facts.stream),
        ("cluster", api.host),
    ]
    return _table(rows)


def _quota(api: KubernetesApi, facts: SandboxFacts) -> str:
    quota = api.read_resource_quota(facts.ident.namespace, manifests.QUOTA_NAME) or {}
    hard = quota.get("status", {}).get("hard") or quota.get("spec", {}).get("hard") or {}
    used = quota.get("status", {}).get("used") or {}
    rows = [("RESOURCE", "USED", "HARD")] + [(k, str(used.get(k, "0")), str(v)) for k, v in sorted(hard.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _policy(api: KubernetesApi, facts: SandboxFacts) -> str:
    namespace, settings = facts.ident.namespace, facts.settings
    policy = api.read_network_policy(namespace, manifests.NETWORK_POLICY_NAME)
    if facts.claim:  # claims mode: the kernel's identity cannot read namespaces; the controller labelled it
        ns = {"metadata": {"labels": manifests.namespace(facts.ident)["metadata"]["labels"]}}
    else:
        ns = api.read_namespace(namespace) or {}
    pss = {
        k: v
        for k, v in (ns.get("metadata", {}).get("labels") or {}).items()
        if k.startswith("pod-security.kubernetes.io/")
    }
    words = [
        f"network: NetworkPolicy {manifests.NETWORK_POLICY_NAME} selects every pod and allows no ingress and no egress "
        "(no DNS, no API server, no other pod, no internet)"
        if policy
        else "network: NO NetworkPolicy found",
        *([facts.egress_line] if facts.egress_line else []),
        "pod security: "
        + (", ".join(f"{k.rsplit('/', 1)[1]}={v}" for k, v in sorted(pss.items())) or "none")
        + " (uid 1000, no privilege escalation, all capabilities dropped)",
        _seccomp_line(settings.seccomp_profile),
        "service account token: not mounted; environment: HOME, PATH, LANG only"
        + (" (and the egress proxy's variables)" if facts.egress_line else ""),
        f"files: read-only root file system; {facts.limits.scratch} at {SANDBOX_HOME} and "
        f"{settings.tmp_size} at /tmp, memory-backed emptyDirs (a write past their size fails with "
        f"'No space left on device'; what they hold counts against the memory limit {facts.limits.memory})",
    ]
    shown = []
    if policy:
        shown.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": policy["metadata"]["name"], "namespace": namespace},
                "spec": policy.get("spec"),
            }
        )
    egress = api.read_network_policy(namespace, manifests.EGRESS_POLICY_NAME) if facts.egress_line else None
    if egress:
        shown.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": manifests.EGRESS_POLICY_NAME, "namespace": namespace},
                "spec": egress.get("spec"),
            }
        )
    shown.append({"namespace": namespace, "labels": pss})
    return "\n".join(words) + "\n\n" + yaml.safe_dump_all(shown, sort_keys=False)


def _events(api: KubernetesApi, facts: SandboxFacts) -> str:
    events = api.list_events(facts.ident.namespace)

    def when(event: dict[str, Any]) -> str:
        return str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or event.get("metadata", {}).get("creationTimestamp")
            or ""
        )

    lines = []
    for event in sorted(events, key=when):
        obj = event.get("involvedObject", {})
        lines.append(
            f"{when(event)[11:19]}  {event.get('type', ''):7} {event.get('reason', ''):18} "
            f"{obj.get('kind', '').lower()}/{obj.get('name', '')}: {event.get('message', '').strip()}"
        )
    local = [time.strftime("%H:%M:%S", time.gmtime(t)) + "  kernel  " + text for t, text in facts.kernel_events]
    return (
        "Kubernetes events (newest last):\n"
        + ("\n".join(lines) or "none")
        + "\n\nKernel:\n"
        + ("\n".join(local) or "none")
    )


def _manifests(api: KubernetesApi, facts: SandboxFacts) -> str:
    return yaml.safe_dump_all(list(facts.applied), sort_keys=False)


_REPORTS = {
    ReportTopic.STATUS.value: _status,
    ReportTopic.QUOTA.value: _quota,
    ReportTopic.POLICY.value: _policy,
    ReportTopic.EVENTS.value: _events,
    ReportTopic.MANIFESTS.value: _manifests,
}


def _seccomp_line(profile: str) -> str:
    """What ``%sandbox policy`` says about the pod's seccomp profile (KubernetesSandbox.seccomp_profile)."""
    if not profile:
        return (
            "seccomp: RuntimeDefault, the container runtime's default profile (KubernetesSandbox.seccomp_profile = ''; "
            f"containerd 1.6's allows io_uring: '{manifests.SECCOMP_PROFILE}' refuses it, see k8s/README.md)"
        )
    head = f"seccomp: Localhost {profile} (KubernetesSandbox.seccomp_profile), read by the kubelet from its node"
    if profile != manifests.SECCOMP_PROFILE:
        return head
    from ..local import seccomp_policy

    return head + ", generated from the local sandbox's table:\n  " + seccomp_policy.summary().replace("\n", "\n  ")


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
