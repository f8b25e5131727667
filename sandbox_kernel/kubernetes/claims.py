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


class ClaimInvalid(ValueError):
    """A claim's spec that the controller will not serve; ``str()`` says why, for the claim's status."""


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
        image=text(spec.get("image"), "spec.image", _IMAGE, 200),
        owner=text(spec.get("owner"), "spec.owner", _LABELISH, 63),
        kernel_id=text(spec.get("kernelId"), "spec.kernelId", re.compile(r"[A-Za-z0-9._-]*"), 64),
        heartbeat_seconds=heartbeat,
        seccomp_profile=seccomp,
        **fields,
    )


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
    )
