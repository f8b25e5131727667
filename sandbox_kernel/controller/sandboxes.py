"""Making, binding and deleting one sandbox for the controller (blocking; run in its thread pool).

A sandbox is the same set of objects a direct-mode kernel makes (:mod:`..kubernetes.manifests`),
created in the same order — namespace (Pod Security restricted), the controller's own
RoleBinding of the sandbox role, then quota, limit range, deny-all policy and agent ConfigMap,
and the pod only once all of them exist (the admission policies refuse it otherwise) — with
no heartbeat Lease: a claimed sandbox lives as long as its claim. The namespace also carries
who made it (``sandbox-kernel/made-by=controller``) and, once bound, its claim's namespace/name,
uid and user; the claim's user gets the ``sandbox-kernel-claimant`` role there, nothing else.
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from ..config import Limits, Sandbox
from ..errors import ConfigError, SandboxError
from ..kubernetes import claims, manifests, pod_start
from ..kubernetes.answers import is_already_exists
from ..kubernetes.api import Conflict, KubernetesApi, micro_time
from ..kubernetes.provision import _deleted_on_failure, expected_objects
from ..kubernetes.settings import KubernetesSandbox
from ..languages import LANGUAGES
from ..quantity import parse_bytes, parse_cpu
from . import egress
from .settings import SandboxController

log = logging.getLogger("sandbox_kernel.controller")

POD_NAME = "sandbox-1"


@dataclass(frozen=True)
class ClaimRef:
    """The claim a sandbox is made for or bound to."""

    namespace: str
    name: str
    uid: str
    spec: claims.ClaimSpec


@dataclass(frozen=True)
class Plan:
    """What to make for a claim spec: checked settings, limits and image."""

    settings: KubernetesSandbox
    limits: Limits
    image: str
    pool_key: str
    egress: manifests.EgressSpec | None = None
    """With the claim's ``spec.egress``: what the namespace carries (:mod:`.egress`)."""


def plan(spec: claims.ClaimSpec, base: KubernetesSandbox, bounds: SandboxController) -> Plan:
    """Check ``spec`` against the operator's bounds and settings; raise :class:`claims.ClaimInvalid` saying why."""
    if parse_cpu(spec.cpu) > parse_cpu(bounds.max_cpu):
        raise claims.ClaimInvalid(
            f"cpu {spec.cpu} is above the operator's bound of {bounds.max_cpu} (SandboxController.max_cpu)"
        )
    if parse_bytes(spec.memory) > parse_bytes(bounds.max_memory):
        raise claims.ClaimInvalid(
            f"memory {spec.memory} is above the operator's bound of {bounds.max_memory} (SandboxController.max_memory)"
        )
    if parse_bytes(spec.scratch) > parse_bytes(bounds.max_scratch):
        raise claims.ClaimInvalid(
            f"scratch {spec.scratch} is above the operator's bound of {bounds.max_scratch} (SandboxController.max_scratch)"
        )
    language = LANGUAGES[spec.language]
    default_image = base.image(language)
    image = spec.image or default_image
    allowed = {default_image, *bounds.extra_images}
    if image not in allowed:
        raise claims.ClaimInvalid(
            f"image {image} is not one the operator allows for {spec.language} ({', '.join(sorted(allowed))})"
        )
    if spec.egress is not None:
        egress.check_bound(spec.egress, list(bounds.allow_hosts))
    settings = KubernetesSandbox(config=base.config)
    settings.mode = "direct"  # the controller makes the sandbox itself (its runtime_class_name applies)
    settings.images = {**base.images, spec.language: image}
    settings.seccomp_profile = spec.seccomp_profile
    try:
        limits = Sandbox(
            memory_limit=spec.memory,
            cpu_limit=spec.cpu,
            memory_request=spec.memory_request,
            cpu_request=spec.cpu_request,
            scratch_size=spec.scratch,
            allow_hosts=list(egress.allow_hosts(spec.egress)) if spec.egress is not None else [],
        ).limits()
        settings.validate(limits)
    except ConfigError as exc:
        raise claims.ClaimInvalid(str(exc).replace("Invalid setting Sandbox.", "spec.resources: ")) from None
    namespace_egress = egress.namespace_spec(spec.egress) if spec.egress is not None else None
    return Plan(settings, limits, image, spec.pool_key(image), namespace_egress)


def make(api: KubernetesApi, plan_: Plan, spec: claims.ClaimSpec, creator: str, claim: ClaimRef | None) -> str:
    """Create a sandbox namespace, its objects and its pod (for ``claim``, or for the pool); return its name."""
    settings, language = plan_.settings, LANGUAGES[spec.language]
    now = datetime.now(timezone.utc)
    for attempt in range(3):
        ident = manifests.SandboxIdentity(
            namespace=f"{settings.namespace_prefix}{secrets.token_hex(4)}",
            kernel_id=spec.kernel_id or "pool",
            language=language.name,
            owner=spec.owner or "pool",
            user=creator,
            created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        objects = expected_objects(
            settings, language, plan_.limits, ident, micro_time(now), POD_NAME, plan_.egress if claim else None
        )
        namespace = objects.namespace
        namespace["metadata"]["labels"][claims.LABEL_MADE_BY] = claims.MADE_BY_CONTROLLER
        if claim is None:
            namespace["metadata"]["labels"].update({claims.LABEL_POOL: plan_.pool_key, claims.LABEL_STATE: "warming"})
        else:
            namespace["metadata"]["labels"][claims.LABEL_STATE] = "bound"
            namespace["metadata"]["annotations"].update(claim_annotations(claim))
        try:
            api.create(namespace)
            break
        except SandboxError as exc:
            if is_already_exists(exc) and attempt < 2:
                continue
            raise
    with _deleted_on_failure(api, ident.namespace):
        if objects.role_binding is not None:
            api.create(objects.role_binding, rbac_settle=5.0)
        parallel = [objects.resource_quota, objects.limit_range, objects.network_policy, objects.config_map]
        if objects.egress_policy is not None:
            parallel.append(objects.egress_policy)
        with ThreadPoolExecutor(len(parallel), thread_name_prefix="sandbox-create") as pool:
            for future in [pool.submit(api.create, obj, rbac_settle=5.0) for obj in parallel]:
                future.result()
        api.create(objects.pod, rbac_settle=5.0, account_settle=settings.start_timeout)
    log.info(
        "made sandbox %s (%s, %s)",
        ident.namespace,
        spec.language,
        f"claim {claim.namespace}/{claim.name}" if claim else f"pool {plan_.pool_key}",
    )
    return ident.namespace


def claim_annotations(claim: ClaimRef) -> dict[str, str]:
    return {
        claims.ANNOTATION_CLAIM: f"{claim.namespace}/{claim.name}",
        claims.ANNOTATION_CLAIM_UID: claim.uid,
        claims.ANNOTATION_CLAIM_USER: claim.spec.user,
    }


def wait_running(api: KubernetesApi, namespace: str, plan_: Plan, progress: Callable[[str], None] | None = None) -> str:
    """Wait until the sandbox's pod runs; return '' then, else what went wrong (for the claim's status).

    ``progress`` is called with what the start waits for whenever that changes: the claim's
    status message, which the kernel shows in its first cell (:func:`..kubernetes.pod_start.wait_running`).
    """
    try:
        pod_start.wait_running(api, namespace, POD_NAME, plan_.image, plan_.limits, plan_.settings, progress)
    except SandboxError as exc:
        return str(exc)
    return ""


def bind(api: KubernetesApi, namespace: dict[str, Any], claim: ClaimRef) -> bool:
    """Bind a pooled sandbox to ``claim``, only if nobody changed it since it was listed (its
    ``resourceVersion``): the one write that decides which claim gets it. False if it was taken."""
    meta = namespace["metadata"]
    try:
        api.patch_namespace(
            meta["name"],
            labels={
                claims.LABEL_STATE: "bound",
                claims.LABEL_POOL: None,
                manifests.LABEL_KERNEL_ID: manifests.label_value(claim.spec.kernel_id or "none"),
                manifests.LABEL_OWNER: claim.spec.owner or "unknown",
            },
            annotations={**claim_annotations(claim), "sandbox-kernel/pooled": "true"},
            resource_version=str(meta.get("resourceVersion") or ""),
        )
    except Conflict:
        return False
    return True


def grant(api: KubernetesApi, namespace: str, user: str) -> None:
    """Let the claim's user attach to the sandbox's pod (and read its status, log, events) there."""
    try:
        api.create(claims.claimant_binding(namespace, user), rbac_settle=5.0)
    except SandboxError as exc:
        if not is_already_exists(exc):
            raise


def is_controllers(namespace: dict[str, Any] | None, prefix: str) -> bool:
    """A sandbox namespace this controller made (name prefix, managed-by and made-by labels)."""
    if not namespace:
        return False
    meta = namespace.get("metadata", {})
    labels = meta.get("labels") or {}
    return (
        str(meta.get("name", "")).startswith(prefix)
        and labels.get(manifests.LABEL_MANAGED_BY) == manifests.MANAGED_BY
        and labels.get(claims.LABEL_MADE_BY) == claims.MADE_BY_CONTROLLER
    )


def delete_for_claim(api: KubernetesApi, namespace: str, claim_uid: str, prefix: str) -> bool:
    """Delete the sandbox namespace of the claim ``claim_uid`` — only if it is that claim's."""
    ns = api.read_namespace(namespace)
    if ns is None:
        return False
    if (
        not is_controllers(ns, prefix)
        or (ns["metadata"].get("annotations") or {}).get(claims.ANNOTATION_CLAIM_UID) != claim_uid
    ):
        log.warning("not deleting namespace %s: it is not the sandbox of claim %s", namespace, claim_uid)
        return False
    return api.delete_namespace(namespace)
