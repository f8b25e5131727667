"""Creating a sandbox: its namespace and every object in it, then its first pod (blocking calls).

The order is the security argument: the namespace, then the RoleBinding that gives the
kernel's identity its rights there, then the ResourceQuota, LimitRange, deny-all NetworkPolicy,
agent ConfigMap and heartbeat Lease, and only then a pod, so admission sees the quota and limit
range and no container exists before the policy does. The session (:mod:`.session`) calls
:func:`create_namespace_objects` itself; the early start (:mod:`.early`) runs
:func:`prepare_sandbox` in a thread while the kernel process still imports, and the session
takes the result over only if it equals :func:`expected_objects` for the configuration it loaded.
"""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from ..config import Limits
from ..errors import AdmissionError, SandboxError
from ..languages import Language
from . import egress as sandbox_egress
from . import manifests
from .answers import is_already_exists, micro_time

if TYPE_CHECKING:
    from .api import AttachStream
    from .early_client import EarlyClient
from .settings import DEFAULT_NAMESPACE_PREFIX, KubernetesSandbox

log = logging.getLogger("sandbox_kernel")


class Creator(Protocol):
    """What making a sandbox needs of an API client: :class:`.api.KubernetesApi`, or the early
    start's :class:`.early_client.EarlyClient` (which does not import the kubernetes client)."""

    def whoami(self) -> str: ...

    def create(self, obj: dict[str, Any], rbac_settle: float = 0.0, account_settle: float = 0.0) -> dict[str, Any]: ...

    def delete_namespace(self, name: str, resource_version: str = "") -> bool: ...


@dataclass(frozen=True)
class PreparedSandbox:
    """A namespace with all its objects and a first pod, created before a session took it over."""

    api: Creator
    """The client that made it (the session makes its own for everything after)."""
    kubeconfig: str
    context: str
    ident: manifests.SandboxIdentity
    renew_time: str
    """The Lease's first ``renewTime`` (part of what was created)."""
    pod_name: str
    applied: list[dict[str, Any]]
    """Every object created, in creation order, the pod last."""
    created_at: float
    """When the pod was created (``time.time()``)."""
    egress_token: str = ""
    """The sandbox's proxy credential, when it has an allow list (its SHA-256 is on the namespace)."""
    stream: AttachStream | None = None
    """Attached once the pod ran, gate line sent (:func:`start_prepared`): the agent starts while the
    kernel process still imports; its ``ready`` waits in the stream for the session. None: not (yet)."""

    def fits(
        self,
        settings: KubernetesSandbox,
        language: Language,
        limits: Limits,
        kernel_id: str,
        egress: manifests.EgressSpec | None = None,
    ) -> bool:
        """Whether every object created is exactly what the session would create (same cluster,
        kernel, language, limits, settings and egress, if any)."""
        expected = expected_objects(settings, language, limits, self.ident, self.renew_time, self.pod_name, egress)
        return (self.kubeconfig, self.context) == (settings.kubeconfig, settings.context) and (
            self.ident.kernel_id == kernel_id and expected.in_order() == self.applied
        )

    def discard(self) -> None:
        """Delete it (the session will not use it); never raises."""
        if self.stream is not None:
            self.stream.close()
        try:
            self.api.delete_namespace(self.ident.namespace)
        except SandboxError:
            log.warning("could not delete the early sandbox namespace %s", self.ident.namespace, exc_info=True)


def expected_objects(
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    ident: manifests.SandboxIdentity,
    renew_time: str,
    pod_name: str = "sandbox-1",
    egress: manifests.EgressSpec | None = None,
) -> manifests.SandboxObjects:
    """Every object of the sandbox ``ident`` under these settings (pure); ``egress`` for a sandbox
    with an allow list (:mod:`.egress`)."""
    return manifests.sandbox_objects(
        ident,
        settings.quota(),
        settings.limit_range(),
        settings.pod_spec(language, limits, pod_name),
        language.agent_source(),
        settings.heartbeat_ttl,
        renew_time,
        manifests.Subject.from_username(ident.user) if ident.user else None,
        settings.sandbox_role,
        egress,
        language.relay_source(),
    )


def create_namespace_objects(
    api: Creator,
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    kernel_id: str,
    egress: manifests.EgressSpec | None = None,
) -> tuple[manifests.SandboxIdentity, list[dict[str, Any]]]:
    """Create the namespace and everything in it but the pod; return its identity and the objects.
    ``egress``: the sandbox's allow list and credential hash (its annotations and policy).

    The namespace comes first and the RoleBinding next (with the least-privilege identity, the
    right to create the rest exists only once it is bound). Quota, limit range, policy, config
    map and lease do not depend on each other and are created in parallel: five sequential
    round trips were ~35 ms of every start. All of them exist before the pod is created, so
    admission sees the quota and limit range, and the policy exists before any container does
    (the pod still checks that it is *enforced* before the agent starts, see
    :func:`.pod_command.agent_command`). On failure the half-made namespace is deleted.
    """
    user = api.whoami()
    owner = settings.owner or (manifests.owner_label(user) if user else "unknown")
    now = datetime.now(timezone.utc)
    renew_time = micro_time(now)
    for attempt in range(3):
        ident = manifests.SandboxIdentity(
            namespace=f"{settings.namespace_prefix}{secrets.token_hex(4)}",
            kernel_id=kernel_id,
            language=language.name,
            owner=owner,
            user=user,
            created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        objects = expected_objects(settings, language, limits, ident, renew_time, egress=egress)
        try:
            api.create(objects.namespace)
            break
        except SandboxError as exc:
            if is_already_exists(exc) and attempt < 2:
                continue  # 8 random hex digits collided: draw again
            if isinstance(exc, AdmissionError) and settings.namespace_prefix != DEFAULT_NAMESPACE_PREFIX:
                exc.hint = (
                    "k8s/rbac/admission-policy.yaml admits one namespace prefix: set its PREFIX variables to "
                    f"'{settings.namespace_prefix}' too (KubernetesSandbox.namespace_prefix)."
                )
            raise
    rest = objects.in_order()[1:-1]  # the pod comes later
    first = [o for o in rest if o["kind"] == "RoleBinding"]
    parallel = [o for o in rest if o["kind"] != "RoleBinding"]
    with _deleted_on_failure(api, ident.namespace):
        for obj in first:
            api.create(obj, rbac_settle=5.0)
        with ThreadPoolExecutor(len(parallel), thread_name_prefix="sandbox-create") as pool:
            for future in [pool.submit(api.create, obj, rbac_settle=5.0) for obj in parallel]:
                future.result()
    return ident, [objects.namespace, *first, *parallel]


@contextmanager
def _deleted_on_failure(api: Creator, namespace: str) -> Iterator[None]:
    """Delete the half-made sandbox ``namespace`` if the block raises a SandboxError."""
    try:
        yield
    except SandboxError:
        try:
            api.delete_namespace(namespace)
        except SandboxError:
            log.warning("could not delete the half-made namespace %s", namespace, exc_info=True)
        raise


def prepare_sandbox(settings: KubernetesSandbox, language: Language, limits: Limits, kernel_id: str) -> PreparedSandbox:
    """Create a whole sandbox up to its first pod (blocking): what :mod:`.early` runs in a thread.

    With the early start's own client when it can speak for the kubeconfig (no kubernetes client
    import before the first request), else with :class:`.api.KubernetesApi`.
    """
    api: Creator | None = _early_client(settings)
    if api is None:
        from .api import KubernetesApi

        api = KubernetesApi(settings.kubeconfig, settings.context)
    token = secrets.token_hex(32) if limits.allow_hosts else ""
    spec = (
        sandbox_egress.initial_spec(limits.allow_hosts, sandbox_egress.widening(settings.config), token)
        if token
        else None
    )
    ident, applied = create_namespace_objects(api, settings, language, limits, kernel_id, spec)
    renew_time = applied[[o["kind"] for o in applied].index("Lease")]["spec"]["renewTime"]
    pod_name = "sandbox-1"
    body = manifests.pod(ident, settings.pod_spec(language, limits, pod_name))
    with _deleted_on_failure(api, ident.namespace):
        api.create(body, rbac_settle=5.0, account_settle=settings.start_timeout)
    return PreparedSandbox(
        api, settings.kubeconfig, settings.context, ident, renew_time, pod_name, [*applied, body], time.time(), token
    )


def _early_client(settings: KubernetesSandbox) -> EarlyClient | None:
    from .early_client import connect

    return connect(settings.kubeconfig, settings.context)


def start_prepared(
    prepared: PreparedSandbox,
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    progress: Callable[[str], None],
) -> PreparedSandbox:
    """Wait for the prepared sandbox's pod to run, attach and send the gate line (blocking): the
    early start's second half, so that the agent starts while the kernel process imports. Any
    problem (a pod that does not run, an attach refused) leaves it to the session, which waits and
    reports itself: the result then has no stream."""
    from . import pod_command, pod_start
    from .api import KubernetesApi

    if prepared.egress_token:
        return prepared  # an allow list: the session registers the pod with the proxy before the gate
    stream = None
    try:
        api = KubernetesApi(prepared.kubeconfig, prepared.context)
        namespace, name = prepared.ident.namespace, prepared.pod_name
        pod_start.wait_running(
            api, namespace, name, settings.image(language), limits, settings, progress, patient=False
        )
        stream = api.attach(namespace, name, manifests.CONTAINER_NAME)
        stream.write(pod_command.GATE_LINE)
    except SandboxError as exc:
        log.info("the early start did not attach (%s); the session does", exc)
        if stream is not None:
            stream.close()
        return prepared
    return replace(prepared, api=api, stream=stream)
