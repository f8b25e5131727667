"""The kernel's side of claims mode: ask for a sandbox with a SandboxClaim, wait, renew, give it back.

Blocking calls (the session runs them in an executor). The kernel's identity needs only
create/get/patch/delete on sandboxclaims in its own namespace, and, once the controller has
bound ``sandbox-kernel-claimant`` to it in the sandbox namespace, get/attach on the pod there.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from ..config import Limits
from ..errors import AdmissionError, ConfigError, SandboxError, SandboxStartError
from ..languages import Language
from . import claims, manifests, pod_command
from .api import AttachStream, KubernetesApi, micro_time
from .settings import KubernetesSandbox

log = logging.getLogger("sandbox_kernel")

POLL_INTERVAL = 0.02
"""Seconds between reads of the claim while the controller serves it (a read costs ~3 ms; the
controller binds a pooled sandbox in tens of milliseconds, so this is on the warm start's path)."""


@dataclass(frozen=True)
class Claimed:
    """A claim the controller has served: where the sandbox is."""

    namespace: str
    """The claim's own namespace (the kernel's)."""
    name: str
    uid: str
    user: str
    owner: str
    status: claims.ClaimStatus
    seconds: float
    """From creating the claim to reading it Ready."""


@dataclass(frozen=True)
class PreparedClaim:
    """A claim served before a session took it over (the early start, :mod:`.early`)."""

    api: KubernetesApi
    kubeconfig: str
    context: str
    spec: claims.ClaimSpec
    claimed: Claimed
    stream: AttachStream | None
    """Attached, gate line sent: the agent starts while the kernel process still imports (None if that failed)."""

    def fits(self, settings: KubernetesSandbox, language: Language, limits: Limits, kernel_id: str) -> bool:
        """Whether this is exactly the claim the session would make (same cluster, identity and spec)."""
        expected = claim_spec(settings, language, limits, kernel_id, self.claimed.user, self.claimed.owner)
        return (self.kubeconfig, self.context) == (settings.kubeconfig, settings.context) and expected == self.spec

    def discard(self) -> None:
        if self.stream is not None:
            self.stream.close()
        release(self.api, self.claimed.namespace, self.claimed.name)


def prepare_claim(
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    kernel_id: str,
    progress: Callable[[str], None] | None = None,
) -> PreparedClaim:
    """:func:`acquire` with a new connection, then attach and open the gate (blocking): what
    :mod:`.early` runs in a thread in claims mode, so that with a warm pool the agent is up before
    ipykernel is imported. The agent's ``ready`` waits in the stream for the session."""
    api = KubernetesApi(settings.kubeconfig, settings.context)
    claimed = acquire(api, settings, language, limits, kernel_id, progress)
    spec = claim_spec(settings, language, limits, kernel_id, claimed.user, claimed.owner)
    stream: AttachStream | None = None
    try:
        stream = attach(api, claimed.status.namespace, claimed.status.pod)
        stream.write(pod_command.GATE_LINE)
    except SandboxError as exc:
        log.info("early attach failed (%s); the session attaches itself", exc)
        if stream is not None:
            stream.close()
        stream = None
    return PreparedClaim(api, settings.kubeconfig, settings.context, spec, claimed, stream)


def attach(api: KubernetesApi, namespace: str, pod: str) -> AttachStream:
    """Attach to the claimed pod (blocking). The controller bound the kernel's role there a
    moment ago: a 'forbidden' while the authorizer's cache catches up is retried briefly."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return api.attach(namespace, pod, manifests.CONTAINER_NAME)
        except AdmissionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def claim_namespace(settings: KubernetesSandbox, user: str) -> str:
    """Where the kernel's claims go: ``claim_namespace``, else its service account's own namespace."""
    if settings.claim_namespace:
        return settings.claim_namespace
    subject = manifests.Subject.from_username(user)
    if subject.kind == "ServiceAccount" and subject.namespace:
        return subject.namespace
    raise ConfigError(
        "KubernetesSandbox.claim_namespace",
        f"the kernel runs as {user or 'an unknown user'}, not a service account: name the namespace its SandboxClaims go to",
    )


def claim_spec(
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    kernel_id: str,
    user: str,
    owner: str,
    egress: claims.ClaimEgress | None = None,
) -> claims.ClaimSpec:
    """What the kernel asks for: its own image and limits (the controller checks them against its
    bounds), and with an allow list its egress (:meth:`.egress.KubernetesEgress.claim_egress`)."""
    return claims.ClaimSpec(
        egress=egress,
        language=language.name,
        user=user,
        image=settings.image(language),
        owner=owner,
        kernel_id=manifests.label_value(kernel_id)[:64],
        heartbeat_seconds=settings.heartbeat_ttl,
        seccomp_profile=settings.seccomp_profile,
        cpu=limits.cpu,
        memory=limits.memory,
        cpu_request=limits.cpu_request,
        memory_request=limits.memory_request,
        scratch=limits.scratch,
    )


def acquire(
    api: KubernetesApi,
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    kernel_id: str,
    progress: Callable[[str], None] | None = None,
    egress: claims.ClaimEgress | None = None,
) -> Claimed:
    """Create a claim and wait until the controller has a sandbox for it (or refuses); raise a SandboxError.

    ``progress`` is called (in this thread) with what the wait is for, whenever that changes.
    """
    user = api.whoami()
    owner = settings.owner or (manifests.owner_label(user) if user else "unknown")
    namespace = claim_namespace(settings, user)
    spec = claim_spec(settings, language, limits, kernel_id, user, owner, egress)
    name = f"{language.name}-{secrets.token_hex(4)}"
    started = time.monotonic()
    created = api.create(claims.claim_object(name, namespace, spec, micro_time()))
    uid = str(created.get("metadata", {}).get("uid", ""))
    try:
        status = _wait(api, namespace, name, settings.start_timeout, progress or (lambda text: None))
    except BaseException:
        release(api, namespace, name)
        raise
    return Claimed(namespace, name, uid, user, owner, status, time.monotonic() - started)


def _wait(
    api: KubernetesApi, namespace: str, name: str, timeout: float, progress: Callable[[str], None]
) -> claims.ClaimStatus:
    deadline = time.monotonic() + timeout
    status: claims.ClaimStatus | None = None
    progress(f"waiting for the sandbox controller to answer the SandboxClaim {namespace}/{name}")
    while time.monotonic() < deadline:
        claim = api.read_claim(namespace, name)
        if claim is None:
            raise SandboxStartError(f"The SandboxClaim {namespace}/{name} was deleted before the controller served it.")
        status = claims.parse_status(claim)
        if status is not None:
            if status.phase == claims.PHASE_READY and status.namespace and status.pod:
                return status
            if status.phase == claims.PHASE_REFUSED:
                raise AdmissionError(f"The sandbox controller refused the SandboxClaim: {status.message}")
            if status.phase == claims.PHASE_FAILED:
                raise SandboxStartError(f"The sandbox controller could not start the sandbox: {status.message}")
            if status.message:
                progress(f"the sandbox controller: {status.message}"[:400])
        time.sleep(POLL_INTERVAL)
    if status is None:
        raise SandboxStartError(
            f"No sandbox controller answered the SandboxClaim {namespace}/{name} within {timeout:g} s. Is "
            "`sandbox-kernel controller` running (k8s/platform/controller.yaml)? `kubectl get sandboxclaims "
            f"-n {namespace}` shows the claims; KubernetesSandbox.mode = 'direct' does without it."
        )
    raise SandboxStartError(
        f"The sandbox for SandboxClaim {namespace}/{name} was not ready after {timeout:g} s "
        f"({status.phase}: {status.message or 'no message'}). Raise KubernetesSandbox.start_timeout, or see "
        f"`kubectl describe sandboxclaim -n {namespace} {name}`."
    )


def renew(api: KubernetesApi, namespace: str, name: str) -> None:
    api.patch_claim_annotations(namespace, name, {claims.ANNOTATION_HEARTBEAT: micro_time()})


def release(api: KubernetesApi, namespace: str, name: str) -> None:
    """Delete the claim (the controller then deletes its sandbox); never raises."""
    try:
        api.delete_claim(namespace, name)
    except SandboxError as exc:
        log.warning("could not delete SandboxClaim %s/%s: %s; its heartbeat will expire", namespace, name, exc)


def wait_gone(api: KubernetesApi, namespace: str, name: str, timeout: float) -> bool:
    """Wait until the claim is gone (the controller has deleted its sandbox namespace and let it go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.read_claim(namespace, name) is None:
            return True
        time.sleep(0.1)
    return False
