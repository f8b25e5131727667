"""SandboxClaims (claims mode): what a kernel asks the sandbox controller for, as plain dicts.

In claims mode (``KubernetesSandbox.mode = 'claims'``) the kernel's identity creates no
namespace, RoleBinding or pod. It creates one ``SandboxClaim`` (the CRD in
``k8s/crd/sandboxclaims.yaml``) in its own namespace; the controller (:mod:`sandbox_kernel.controller`)
makes the sandbox (or hands over a pooled one), binds the ClusterRole ``sandbox-kernel-claimant``
to the claim's user in that namespace, and records namespace and pod in the claim's status. The
kernel renews the claim's heartbeat annotation; deleting the claim deletes the sandbox.

This module is pure: builders and parsers shared by the kernel and the controller, no I/O.
Everything read from a claim is untrusted (a claim is whatever its creator wrote, within the
CRD's schema): :func:`parse_spec` checks it again field by field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ..egress import policy
from ..languages import LANGUAGES
from ..quantity import QuantityError, parse_bytes, parse_cpu
from . import manifests

GROUP = "sandbox-kernel.dev"
VERSION = "v1alpha1"
PLURAL = "sandboxclaims"
KIND = "SandboxClaim"
API_VERSION = f"{GROUP}/{VERSION}"

ANNOTATION_HEARTBEAT = f"{GROUP}/heartbeat"
"""The kernel's heartbeat on its claim: a MicroTime it renews every ``heartbeat_interval``."""

CLAIMANT_ROLE = "sandbox-kernel-claimant"
"""ClusterRole the controller binds to a claim's user in the claim's sandbox namespace (k8s/rbac/claims.yaml)."""
CLAIMANT_BINDING = "sandbox-kernel-claimant"

# Labels and annotations of the namespaces the controller makes.
LABEL_MADE_BY = "sandbox-kernel/made-by"
MADE_BY_CONTROLLER = "controller"
LABEL_POOL = "sandbox-kernel/pool"
"""On a pooled sandbox: the pool key (:meth:`ClaimSpec.pool_key`) it was made for."""
LABEL_STATE = "sandbox-kernel/state"
"""``warming`` (pooled, pod not yet running), ``ready`` (pooled, waiting for a claim), ``bound``."""
ANNOTATION_EGRESS_ALLOW = f"{GROUP}/egress-allow"
ANNOTATION_EGRESS_DENY = f"{GROUP}/egress-deny"
"""On a claim with ``spec.egress``: the running allow and deny lists (``%sandbox allow``/``deny``,
space-separated ``name:port,port`` entries), written by the kernel; the controller copies them to
the sandbox namespace (:func:`egress_lists`), never beyond the claim's ``spec.egress.hosts``."""
ANNOTATION_CLAIM = "sandbox-kernel/claim"
"""``<namespace>/<name>`` of the claim a sandbox is bound to."""
ANNOTATION_CLAIM_UID = "sandbox-kernel/claim-uid"
ANNOTATION_CLAIM_USER = "sandbox-kernel/claim-user"

PHASE_PENDING = "Pending"
PHASE_READY = "Ready"
PHASE_REFUSED = "Refused"
PHASE_FAILED = "Failed"

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]*")
_LABELISH = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?")
SECCOMP_PROFILES = ("", manifests.SECCOMP_PROFILE)


_PROXY = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_EGRESS_HOSTS = 100


class ClaimInvalid(ValueError):
    """A claim's spec that the controller will not serve; ``str()`` says why, for the claim's status."""


@dataclass(frozen=True)
class ClaimEgress:
    """A claim's ``spec.egress``: the sandbox may reach ``hosts`` through the egress proxy (k8s/EGRESS.md).

    The kernel draws the proxy credential and puts only its SHA-256 here; the credential itself
    travels to the pod in the gate line, as in direct mode."""

    token_sha256: str
    hosts: tuple[str, ...]
    """Entries in the policy's ``name:port,port`` form: the kernel's ``Sandbox.allow_hosts``, within
    the controller's ``SandboxController.allow_hosts``; ``%sandbox allow`` can only narrow them."""


@dataclass(frozen=True)
class ClaimSpec:
    """A claim's ``spec``, checked."""

    language: str
    user: str
    image: str = ""
    owner: str = ""
    kernel_id: str = ""
    heartbeat_seconds: int = 60
    seccomp_profile: str = ""
    cpu: str = "500m"
    memory: str = "256Mi"
    cpu_request: str = "100m"
    memory_request: str = "64Mi"
    scratch: str = "64Mi"
    egress: ClaimEgress | None = None

    def pool_key(self, image: str) -> str:
        """What makes two sandboxes interchangeable before a claim: language, image, pod limits, seccomp.

        A label value (12 hex digits of a hash), for the label selector that finds pooled sandboxes.
        """
        text = "|".join(
            (
                self.language,
                image,
                self.seccomp_profile,
                self.cpu,
                self.memory,
                self.cpu_request,
                self.memory_request,
                self.scratch,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_spec(spec: Any) -> ClaimSpec:
    """Check a claim's ``spec`` (a dict from the API server) again; raise :class:`ClaimInvalid`."""
    if not isinstance(spec, dict):
        raise ClaimInvalid("spec is missing")
    language = spec.get("language")
    if language not in LANGUAGES:
        raise ClaimInvalid(f"spec.language must be one of {', '.join(LANGUAGES)}")
    user = spec.get("user")
    if not isinstance(user, str) or not 0 < len(user) <= 253:
        raise ClaimInvalid("spec.user must name the claim's creator")
    resources = spec.get("resources") or {}
    if not isinstance(resources, dict):
        raise ClaimInvalid("spec.resources must be an object")

    def text(value: Any, name: str, pattern: re.Pattern[str], limit: int) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > limit or not pattern.fullmatch(value):
            raise ClaimInvalid(f"{name} is not valid")
        return value

    defaults = ClaimSpec(language=language, user=user)
    fields: dict[str, str] = {}
    for name, key, kind in (
        ("cpu", "cpu", "cpu"),
        ("memory", "memory", "bytes"),
        ("cpu_request", "cpuRequest", "cpu"),
        ("memory_request", "memoryRequest", "bytes"),
        ("scratch", "scratch", "bytes"),
    ):
        value = resources.get(key, getattr(defaults, name))
        if not isinstance(value, str) or len(value) > 16:
            raise ClaimInvalid(f"spec.resources.{key} is not a quantity")
        try:
            (parse_cpu if kind == "cpu" else parse_bytes)(value)
        except QuantityError:
            raise ClaimInvalid(f"spec.resources.{key} {value!r} is not a quantity") from None
        fields[name] = value
    heartbeat = spec.get("heartbeatSeconds", 60)
    if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or not 5 <= heartbeat <= 3600:
        raise ClaimInvalid("spec.heartbeatSeconds must be 5 to 3600")
    seccomp = spec.get("seccompProfile", "") or ""
    if seccomp not in SECCOMP_PROFILES:
        raise ClaimInvalid(f"spec.seccompProfile must be '' or {manifests.SECCOMP_PROFILE!r}")
    return ClaimSpec(
        language=language,
        user=user,
        egress=_parse_egress(spec.get("egress")),
        image=text(spec.get("image"), "spec.image", _IMAGE, 200),
        owner=text(spec.get("owner"), "spec.owner", _LABELISH, 63),
        kernel_id=text(spec.get("kernelId"), "spec.kernelId", re.compile(r"[A-Za-z0-9._-]*"), 64),
        heartbeat_seconds=heartbeat,
        seccomp_profile=seccomp,
        **fields,
    )


def _parse_egress(value: Any) -> ClaimEgress | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ClaimInvalid("spec.egress must be an object")
    token = value.get("tokenSha256")
    if not isinstance(token, str) or not _HEX64.fullmatch(token):
        raise ClaimInvalid("spec.egress.tokenSha256 must be a hex SHA-256")
    hosts = value.get("hosts")
    if not isinstance(hosts, list) or not 0 < len(hosts) <= MAX_EGRESS_HOSTS:
        raise ClaimInvalid(f"spec.egress.hosts must list 1 to {MAX_EGRESS_HOSTS} hosts")
    return ClaimEgress(token, tuple(entry_text(e, "spec.egress.hosts") for e in hosts))


def entry_text(value: Any, where: str) -> str:
    """One ``name:port,port`` entry, checked and normalized; ClaimInvalid naming ``where`` otherwise."""
    if not isinstance(value, str) or len(value) > 300 or value.count(":") != 1:
        raise ClaimInvalid(f"{where}: {str(value)[:80]!r} is not a name:port,port entry")
    name, _, ports = value.partition(":")
    try:
        parsed = [policy.parse_entry(f"{name}:{port}") for port in ports.split(",")]
    except policy.PolicyError as exc:
        raise ClaimInvalid(f"{where}: {exc}") from None
    return parsed[0].name + ":" + ",".join(str(e.ports[0]) for e in parsed)


def egress_lists(claim: dict[str, Any], egress: ClaimEgress) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """The running lists a claim's annotations ask for: ``(allow, deny, refused)``. Allow entries
    that the claim's ``spec.egress.hosts`` do not cover, and malformed entries, are left out and
    named in ``refused``; without the allow annotation the list is ``hosts`` itself."""
    notes = (claim.get("metadata") or {}).get("annotations") or {}
    hosts = policy.entries_from_json(egress.hosts)
    refused: list[str] = []

    def entries(key: str, default: tuple[str, ...]) -> list[str]:
        raw = notes.get(key)
        if not isinstance(raw, str):
            return list(default)
        out = []
        for item in raw.split()[:MAX_EGRESS_HOSTS]:
            try:
                out.append(entry_text(item, key))
            except ClaimInvalid as exc:
                refused.append(str(exc))
        return out

    allow = []
    for item in entries(ANNOTATION_EGRESS_ALLOW, egress.hosts):
        (entry,) = policy.entries_from_json([item])
        if any(entry.covered_by(h) for h in hosts):
            allow.append(item)
        else:
            refused.append(f"{item} is not within the claim's spec.egress.hosts")
    return tuple(allow), tuple(entries(ANNOTATION_EGRESS_DENY, ())), refused


def claim_object(name: str, namespace: str, spec: ClaimSpec, heartbeat: str) -> dict[str, Any]:
    """The SandboxClaim a kernel creates (``heartbeat``: a MicroTime, the first renewal)."""
    body: dict[str, Any] = {
        "language": spec.language,
        "user": spec.user,
        "owner": spec.owner,
        "kernelId": spec.kernel_id,
        "heartbeatSeconds": spec.heartbeat_seconds,
        "seccompProfile": spec.seccomp_profile,
        "resources": {
            "cpu": spec.cpu,
            "memory": spec.memory,
            "cpuRequest": spec.cpu_request,
            "memoryRequest": spec.memory_request,
            "scratch": spec.scratch,
        },
    }
    if spec.image:
        body["image"] = spec.image
    if spec.egress is not None:
        body["egress"] = {"tokenSha256": spec.egress.token_sha256, "hosts": list(spec.egress.hosts)}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY,
                manifests.LABEL_KERNEL_ID: manifests.label_value(spec.kernel_id or "none"),
                manifests.LABEL_LANGUAGE: spec.language,
            },
            "annotations": {ANNOTATION_HEARTBEAT: heartbeat},
        },
        "spec": body,
    }


def claimant_binding(namespace: str, user: str) -> dict[str, Any]:
    """The RoleBinding that lets a claim's ``user`` attach to (and read) the sandbox's pod, in that namespace only."""
    subject = manifests.Subject.from_username(user)
    entry: dict[str, Any] = {"kind": subject.kind, "name": subject.name}
    if subject.kind == "ServiceAccount":
        entry["namespace"] = subject.namespace
    else:
        entry["apiGroup"] = "rbac.authorization.k8s.io"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": CLAIMANT_BINDING,
            "namespace": namespace,
            "labels": {manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLAIMANT_ROLE},
        "subjects": [entry],
    }


@dataclass(frozen=True)
class ClaimStatus:
    """A claim's ``status`` as the kernel reads it (written by the controller only)."""

    phase: str
    namespace: str
    pod: str
    from_pool: bool
    message: str
    egress_proxy: str = ""
    """``IPv4:PORT`` of the egress proxy's Service, for a claim with ``spec.egress`` (the sandbox has no DNS)."""


def parse_status(claim: dict[str, Any] | None) -> ClaimStatus | None:
    """The claim's status, or None while it has none; names are checked (a status is the controller's,
    but the kernel still only follows well-formed names)."""
    status = (claim or {}).get("status")
    if not isinstance(status, dict) or not status.get("phase"):
        return None
    namespace = str(status.get("namespace") or "")
    pod = str(status.get("pod") or "")
    if namespace and not (_NAME.fullmatch(namespace) and len(namespace) <= 63):
        namespace = ""
    if pod and not (_NAME.fullmatch(pod) and len(pod) <= 253):
        pod = ""
    return ClaimStatus(
        phase=str(status.get("phase")),
        namespace=namespace,
        pod=pod,
        from_pool=bool(status.get("fromPool")),
        message=str(status.get("message") or "")[:2000],
        egress_proxy=proxy if _PROXY.fullmatch(proxy := str(status.get("egressProxy") or "")) else "",
    )
