"""Controlled egress for claimed sandboxes (claims mode; k8s/EGRESS.md).

A claim with ``spec.egress`` asks that its sandbox reach ``hosts`` through the shared egress proxy.
The controller serves it only within its operator's bound, ``SandboxController.allow_hosts``
(empty: no claim gets egress), and then does what a direct-mode kernel does for its own sandbox:

- the sandbox namespace carries the credential's hash and the lists (:func:`namespace_spec`),
  and gets the ``egress-proxy`` NetworkPolicy; the pod's gate line carries the proxy variables,
  sent by the kernel, which alone holds the credential;
- once the pod runs, its address goes into ``egress-source`` and the proxy Service's address into
  the claim's ``status.egressProxy`` (:func:`connect`; the kernel needs no right in the platform
  namespace);
- ``%sandbox allow``/``deny`` patch the claim's egress annotations (the kernel may patch its claim,
  not the namespace); :class:`RunningLists` copies them to the namespace, never beyond the claim's
  hosts, which never change (a claim's spec is immutable).

Pooled sandboxes have no egress (their pod's command reads no proxy variables): a claim with
egress always gets a sandbox made for it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..egress import policy
from ..kubernetes import claims, manifests
from ..kubernetes.api import KubernetesApi
from ..kubernetes.egress import KubernetesEgress

log = logging.getLogger("sandbox_kernel.controller")


def check_bound(egress: claims.ClaimEgress, bound: list[str]) -> None:
    """Raise :class:`claims.ClaimInvalid` unless every host the claim asks for is within ``bound``."""
    if not bound:
        raise claims.ClaimInvalid(
            "spec.egress: the operator allows no egress for claimed sandboxes (SandboxController.allow_hosts is empty)"
        )
    limits = policy.parse_entries(bound)
    for asked in policy.entries_from_json(egress.hosts):
        for entry in (policy.Entry(asked.name, (port,)) for port in asked.ports):  # names the port refused
            if any(entry.covered_by(b) for b in limits):
                continue
            raise claims.ClaimInvalid(
                f"spec.egress: {entry} is not within the operator's bound (SandboxController.allow_hosts: "
                f"{', '.join(map(str, limits))})"
            )


def allow_hosts(egress: claims.ClaimEgress) -> tuple[str, ...]:
    """The claim's hosts as ``Sandbox.allow_hosts`` items (``name:port``, one per port)."""
    return tuple(f"{e.name}:{p}" for e in policy.entries_from_json(egress.hosts) for p in e.ports)


def namespace_spec(egress: claims.ClaimEgress) -> manifests.EgressSpec:
    """What the sandbox namespace carries: the claim's hosts are the operator's list; no widening."""
    return manifests.EgressSpec(egress.token_sha256, egress.hosts, egress.hosts, (), False)


def connect(api: KubernetesApi, namespace: str, pod: str, proxy_setting: str) -> str:
    """The pod runs: record its address for the proxy (``egress-source``); return the proxy's
    ``IP:PORT`` for the claim's status (blocking)."""
    body = api.read_pod(namespace, pod) or {}
    ip = str((body.get("status") or {}).get("podIP") or "")
    if ip:
        api.patch_namespace(namespace, {}, {manifests.ANNOTATION_EGRESS_SOURCE: ip})
    return KubernetesEgress((), False, proxy_setting).proxy_address(api)


class RunningLists:
    """Copies each claim's egress annotations to its sandbox namespace, once per change."""

    def __init__(self) -> None:
        self._applied: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def apply(self, api: KubernetesApi, claim: dict[str, Any]) -> None:
        """Blocking; called for every event of a claim. Only Ready claims with egress are looked at."""
        meta = claim.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        status = claims.parse_status(claim)
        try:
            spec = claims.parse_spec(dict(claim.get("spec") or {}))
        except claims.ClaimInvalid:
            return
        if spec.egress is None or status is None or status.phase != claims.PHASE_READY or not status.namespace:
            return
        if meta.get("deletionTimestamp"):
            with self._lock:
                self._applied.pop(uid, None)
            return
        allow, deny, refused = claims.egress_lists(claim, spec.egress)
        for why in refused:
            log.warning("claim %s/%s: egress entry left out: %s", meta.get("namespace"), meta.get("name"), why)
        with self._lock:
            if self._applied.get(uid) == (allow, deny):
                return
        ns = api.read_namespace(status.namespace) or {}
        notes = (ns.get("metadata") or {}).get("annotations") or {}
        if notes.get(claims.ANNOTATION_CLAIM_UID) != uid or manifests.ANNOTATION_EGRESS_TOKEN not in notes:
            return  # not (or no longer) this claim's sandbox
        api.patch_namespace(status.namespace, {}, dict(manifests.egress_list_patch(allow, deny)))
        with self._lock:
            self._applied[uid] = (allow, deny)
        log.info(
            "claim %s/%s: egress now allows %s", meta.get("namespace"), meta.get("name"), " ".join(allow) or "nothing"
        )
