"""The Kubernetes sandbox: a locked-down namespace and one restricted pod per kernel.

What a cell sees:

- its own namespace ``sandbox-<8 hex>`` with Pod Security "restricted" enforced, a
  ResourceQuota, a LimitRange and a deny-all NetworkPolicy (no DNS, no API server, no other pod),
- one pod running the language's agent as uid 1000 with no capabilities, a read-only root
  file system, a memory-backed emptyDir (tmpfs) of ``scratch_size`` as HOME and working directory
  (a write past it fails with ENOSPC; its pages count against the memory limit), no service
  account token and only HOME, PATH and LANG in its environment,
- the pod's memory and CPU limits (an over-limit allocation is OOMKilled and reported).

How the kernel reaches it: only through the API server, with an *attach* stream to the pod's
stdin/stdout (never over pod networking, which the policy blocks). Attach does not replay what
a container wrote before the stream opened, so the container starts the agent only once the
deny-all NetworkPolicy is in force (network plugins program a new pod's rules a moment after it
starts) and the kernel's gate line has arrived on stdin (see :func:`.manifests.agent_command`).
The namespace and pod may be created before the kernel process has finished importing
(:mod:`.early`); the session then takes them over.
If the websocket drops while the pod runs, the kernel attaches again and the agent repeats what
the kernel missed (see :mod:`.attach`), so a running cell loses no output.

What outlives a crash: the kernel renews a Lease in its namespace every ``heartbeat_interval``;
``sandbox-kernel gc`` deletes namespaces whose lease expired (see :mod:`.commands`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar

import yaml
from traitlets import Dict, Enum, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from ..config import Limits, Sandbox, setting_bytes, setting_cpu
from ..errors import (
    ClusterUnreachable,
    ConfigError,
    Evicted,
    OutOfMemory,
    SandboxError,
    SandboxLost,
    SandboxStartError,
)
from ..languages import LANGUAGES, Language
from ..quantity import parse_bytes, parse_cpu
from ..session import AgentChannel, AgentSession
from . import early, manifests
from .api import AttachStream, KubernetesApi, micro_time
from .attach import AttachChannel

log = logging.getLogger("sandbox_kernel")

T = TypeVar("T")

POLL_INTERVAL = 0.1
"""Seconds between pod status reads after a pod's stream ended."""

START_POLL_INTERVAL = 0.05
"""Seconds between pod status reads while a pod starts. The pod shows as running on average half
an interval after the kubelet reports it, which is on the start's critical path; a read costs the
API server ~3 ms. (A watch would save the rest, but the sandbox role has no ``watch`` on pods,
and the kubelet's own status lag, up to its 1 s PLEG relist, dominates anyway.)"""

MIN_WORKING_MEMORY = 32 * 2**20
"""Memory a sandbox keeps beside its tmpfs volumes (HOME and /tmp count against its limit): the
agent and an interpreter need ~20-30 MiB."""

_IMAGE_ENV = {"python": "SANDBOX_IMAGE_PYTHON", "node": "SANDBOX_IMAGE_NODE", "bash": "SANDBOX_IMAGE_BASH"}


class KubernetesSandbox(Configurable):
    """Settings of the Kubernetes backend. Memory, CPU and scratch sizes are the shared
    ``Sandbox.memory_limit``, ``cpu_limit``, ``memory_request``, ``cpu_request`` and ``scratch_size``."""

    # -- cluster ---------------------------------------------------------------------------------

    kubeconfig = Unicode(
        help="Path of the kubeconfig file to use. Empty: the pod's in-cluster service account when "
        "the kernel runs in a pod, else $KUBECONFIG or ~/.kube/config. Env: SANDBOX_KUBECONFIG.",
    ).tag(config=True)

    @default("kubeconfig")
    def _kubeconfig_default(self) -> str:
        return os.environ.get("SANDBOX_KUBECONFIG", "")

    context = Unicode("", help="kubeconfig context to use (empty: the current context).").tag(config=True)

    namespace_prefix = Unicode(
        "sandbox-", help="Prefix of the namespace name; 8 random hex digits follow (e.g. sandbox-1a2b3c4d).",
    ).tag(config=True)

    sandbox_role = Unicode(
        "sandbox-kernel-sandbox",
        help="ClusterRole the kernel binds to its own identity inside each namespace it creates, so its "
        "rights on pods, config maps, leases, … exist only in its sandboxes (see k8s/rbac/). Empty: "
        "create no RoleBinding (the identity must already hold those rights).",
    ).tag(config=True)

    owner = Unicode(
        "",
        help="Value of the sandbox-kernel/owner label. Empty: the service account's name or the "
        "Kubernetes user name the API server reports for the kernel (SelfSubjectReview).",
    ).tag(config=True)

    # -- the pod ---------------------------------------------------------------------------------

    images = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="Container image per language, e.g. {'python': 'python:3.12-slim-bookworm'}. A language "
        "missing here uses its official image. Env: SANDBOX_IMAGE_PYTHON, SANDBOX_IMAGE_NODE, SANDBOX_IMAGE_BASH.",
    ).tag(config=True)

    @default("images")
    def _images_default(self) -> dict[str, str]:
        return {
            name: os.environ.get(_IMAGE_ENV[name]) or language.default_image
            for name, language in LANGUAGES.items()
        }

    image_pull_policy = Enum(
        ["IfNotPresent", "Always", "Never"], "IfNotPresent", help="imagePullPolicy of the sandbox container.",
    ).tag(config=True)

    image_pull_secrets = List(
        Unicode(), help="Names of Secrets (in the sandbox namespace) used to pull the images.",
    ).tag(config=True)

    node_selector = Dict(
        key_trait=Unicode(), value_trait=Unicode(), help="nodeSelector of the sandbox pod, e.g. {'sandbox': 'true'}.",
    ).tag(config=True)

    tolerations = List(
        Dict(), help="tolerations of the sandbox pod, as in a pod spec, e.g. "
        "[{'key': 'sandbox', 'operator': 'Exists', 'effect': 'NoSchedule'}].",
    ).tag(config=True)

    runtime_class_name = Unicode(
        "", help="runtimeClassName of the sandbox pod, e.g. 'gvisor' or 'kata' (empty: the cluster default).",
    ).tag(config=True)

    tmp_size = Unicode(
        "16Mi",
        help="Size of /tmp in the sandbox pod: a memory-backed emptyDir (tmpfs), so writing past it fails "
        "with 'No space left on device'; like the scratch volume (Sandbox.scratch_size) it counts against "
        "Sandbox.memory_limit.",
    ).tag(config=True)

    seccomp_profile = Unicode(
        "",
        help="seccomp profile of the sandbox pod. Empty: RuntimeDefault, the container runtime's own profile "
        "(works on any cluster; containerd 1.6's allows io_uring). Else a Localhost profile, as a path "
        f"relative to the kubelet's seccomp root: '{manifests.SECCOMP_PROFILE}' is the local sandbox's table "
        "(no io_uring, userfaultfd, keyrings, bpf, user namespaces, ...), which must be installed on every "
        "node first (k8s/README.md; tests/cluster/up does it on the test node).",
    ).tag(config=True)

    network_policy_wait = Int(
        10,
        help="Before the agent starts, the pod checks for up to this many seconds that the deny-all "
        "NetworkPolicy is in force (the API server is unreachable from the pod): network plugins program "
        "a new pod's rules a moment after it starts, and no cell may run in that gap. If the policy is "
        "still not enforced the sandbox does not start. 0 skips the check (only for clusters without "
        "NetworkPolicy support, where sandboxes then have network access).",
    ).tag(config=True)

    pod_lifetime = Int(
        43200, help="Most seconds a sandbox pod may live (activeDeadlineSeconds); the next cell then gets a new pod.",
    ).tag(config=True)

    # -- lifecycle -------------------------------------------------------------------------------

    start_timeout = Float(
        120.0,
        help="Seconds to wait for the sandbox pod to be running (image pull included). Pull errors, "
        "unschedulable pods and admission rejections are reported at once, not at this timeout.",
    ).tag(config=True)

    shutdown_deadline = Float(
        60.0, help="Seconds kernel shutdown waits for the sandbox namespace to be gone.",
    ).tag(config=True)

    reconnect_timeout = Float(
        60.0,
        help="Seconds the kernel keeps trying to attach to the sandbox pod again after the stream "
        "broke (an API server restart, a network blip). The pod and a running cell carry on meanwhile; "
        "the agent repeats the output the kernel missed once it is back.",
    ).tag(config=True)

    heartbeat_interval = Float(10.0, help="Seconds between renewals of the heartbeat Lease.").tag(config=True)

    heartbeat_ttl = Int(
        60,
        help="Seconds after the last renewal at which a sandbox counts as abandoned (the Lease's "
        "leaseDurationSeconds); `sandbox-kernel gc` then deletes its namespace.",
    ).tag(config=True)

    # -- namespace quota and limit range ---------------------------------------------------------

    quota_requests_cpu = Unicode("500m", help="ResourceQuota requests.cpu of the sandbox namespace.").tag(config=True)
    quota_requests_memory = Unicode("256Mi", help="ResourceQuota requests.memory of the sandbox namespace.").tag(config=True)
    quota_limits_cpu = Unicode("1", help="ResourceQuota limits.cpu of the sandbox namespace.").tag(config=True)
    quota_limits_memory = Unicode("512Mi", help="ResourceQuota limits.memory of the sandbox namespace.").tag(config=True)
    quota_pods = Int(3, help="ResourceQuota pods: most pods in the sandbox namespace.").tag(config=True)
    quota_persistentvolumeclaims = Int(0, help="ResourceQuota persistentvolumeclaims of the sandbox namespace.").tag(config=True)
    quota_services = Int(0, help="ResourceQuota services of the sandbox namespace.").tag(config=True)

    limit_range_max_cpu = Unicode("500m", help="LimitRange max cpu per container.").tag(config=True)
    limit_range_max_memory = Unicode("256Mi", help="LimitRange max memory per container.").tag(config=True)
    limit_range_min_cpu = Unicode("10m", help="LimitRange min cpu per container.").tag(config=True)
    limit_range_min_memory = Unicode("10Mi", help="LimitRange min memory per container.").tag(config=True)
    limit_range_default_cpu = Unicode("250m", help="LimitRange default cpu limit per container.").tag(config=True)
    limit_range_default_memory = Unicode("128Mi", help="LimitRange default memory limit per container.").tag(config=True)
    limit_range_default_request_cpu = Unicode("100m", help="LimitRange default cpu request per container.").tag(config=True)
    limit_range_default_request_memory = Unicode("64Mi", help="LimitRange default memory request per container.").tag(config=True)

    # -- builders' inputs ------------------------------------------------------------------------

    def quota(self) -> manifests.QuotaSpec:
        return manifests.QuotaSpec(
            requests_cpu=self.quota_requests_cpu,
            requests_memory=self.quota_requests_memory,
            limits_cpu=self.quota_limits_cpu,
            limits_memory=self.quota_limits_memory,
            pods=self.quota_pods,
            persistentvolumeclaims=self.quota_persistentvolumeclaims,
            services=self.quota_services,
        )

    def limit_range(self) -> manifests.LimitRangeSpec:
        return manifests.LimitRangeSpec(
            max_cpu=self.limit_range_max_cpu,
            max_memory=self.limit_range_max_memory,
            min_cpu=self.limit_range_min_cpu,
            min_memory=self.limit_range_min_memory,
            default_cpu=self.limit_range_default_cpu,
            default_memory=self.limit_range_default_memory,
            default_request_cpu=self.limit_range_default_request_cpu,
            default_request_memory=self.limit_range_default_request_memory,
        )

    def image(self, language: Language) -> str:
        return self.images.get(language.name) or language.default_image

    def pod_spec(self, language: Language, limits: Limits, name: str) -> manifests.PodSpec:
        return manifests.PodSpec(
            name=name,
            image=self.image(language),
            interpreter=language.interpreter,
            agent_file=language.agent_file,
            shell_as_init=not language.agent_reaps_orphans,
            cpu_request=limits.cpu_request,
            memory_request=limits.memory_request,
            cpu_limit=limits.cpu,
            memory_limit=limits.memory,
            scratch_size=limits.scratch,
            tmp_size=self.tmp_size,
            active_deadline_seconds=self.pod_lifetime,
            image_pull_policy=self.image_pull_policy,
            image_pull_secrets=tuple(self.image_pull_secrets),
            node_selector=tuple(sorted(self.node_selector.items())),
            tolerations=tuple(dict(t) for t in self.tolerations),
            runtime_class_name=self.runtime_class_name,
            network_policy_wait=self.network_policy_wait,
            seccomp_profile=self.seccomp_profile,
        )

    def validate(self, limits: Limits) -> None:
        """Check every setting against the others; raise ConfigError naming the first bad one."""
        cpu = {name: setting_cpu(f"KubernetesSandbox.{name}", getattr(self, name)) for name in (
            "quota_requests_cpu", "quota_limits_cpu", "limit_range_max_cpu", "limit_range_min_cpu",
            "limit_range_default_cpu", "limit_range_default_request_cpu")}
        mem = {name: setting_bytes(f"KubernetesSandbox.{name}", getattr(self, name)) for name in (
            "quota_requests_memory", "quota_limits_memory", "limit_range_max_memory", "limit_range_min_memory",
            "limit_range_default_memory", "limit_range_default_request_memory", "tmp_size")}
        if limits.cpu_cores > cpu["limit_range_max_cpu"]:
            raise ConfigError("Sandbox.cpu_limit", f"{limits.cpu} is above KubernetesSandbox.limit_range_max_cpu {self.limit_range_max_cpu}")
        if limits.memory_bytes > mem["limit_range_max_memory"]:
            raise ConfigError("Sandbox.memory_limit", f"{limits.memory} is above KubernetesSandbox.limit_range_max_memory {self.limit_range_max_memory}")
        if limits.cpu_cores > cpu["quota_limits_cpu"]:
            raise ConfigError("Sandbox.cpu_limit", f"{limits.cpu} is above KubernetesSandbox.quota_limits_cpu {self.quota_limits_cpu}")
        if limits.memory_bytes > mem["quota_limits_memory"]:
            raise ConfigError("Sandbox.memory_limit", f"{limits.memory} is above KubernetesSandbox.quota_limits_memory {self.quota_limits_memory}")
        if parse_cpu(limits.cpu_request) > cpu["quota_requests_cpu"]:
            raise ConfigError("Sandbox.cpu_request", f"{limits.cpu_request} is above KubernetesSandbox.quota_requests_cpu {self.quota_requests_cpu}")
        if parse_bytes(limits.memory_request) > mem["quota_requests_memory"]:
            raise ConfigError("Sandbox.memory_request", f"{limits.memory_request} is above KubernetesSandbox.quota_requests_memory {self.quota_requests_memory}")
        working = limits.memory_bytes - limits.scratch_bytes - mem["tmp_size"]
        if working < MIN_WORKING_MEMORY:
            raise ConfigError(
                "Sandbox.memory_limit",
                f"{limits.memory} leaves {max(working, 0) // 2**20}Mi beside the scratch volume "
                f"(Sandbox.scratch_size {limits.scratch}) and /tmp (KubernetesSandbox.tmp_size {self.tmp_size}), "
                f"which are held in memory on Kubernetes; keep at least {MIN_WORKING_MEMORY // 2**20}Mi for the "
                "interpreter (raise memory_limit or shrink them)",
            )
        if self.seccomp_profile and (
            not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", self.seccomp_profile)
            or ".." in self.seccomp_profile.split("/")
        ):
            raise ConfigError(
                "KubernetesSandbox.seccomp_profile",
                f"{self.seccomp_profile!r} is not a path relative to the kubelet's seccomp root "
                f"(e.g. '{manifests.SECCOMP_PROFILE}'; empty for RuntimeDefault)",
            )
        if self.quota_pods < 1:
            raise ConfigError("KubernetesSandbox.quota_pods", "must be at least 1")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?-?", self.namespace_prefix) or len(self.namespace_prefix) > 40:
            raise ConfigError("KubernetesSandbox.namespace_prefix", f"{self.namespace_prefix!r} is not a DNS label prefix (a-z, 0-9, '-'; at most 40)")
        if self.pod_lifetime < 60:
            raise ConfigError("KubernetesSandbox.pod_lifetime", "must be at least 60 seconds")
        if self.heartbeat_interval <= 0:
            raise ConfigError("KubernetesSandbox.heartbeat_interval", "must be more than 0 seconds")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ConfigError(
                "KubernetesSandbox.heartbeat_ttl",
                f"{self.heartbeat_ttl} s must be longer than heartbeat_interval ({self.heartbeat_interval:g} s)",
            )
        if self.reconnect_timeout <= 0:
            raise ConfigError("KubernetesSandbox.reconnect_timeout", "must be more than 0 seconds")
        if self.start_timeout <= 0 or self.shutdown_deadline <= 0:
            raise ConfigError("KubernetesSandbox.start_timeout" if self.start_timeout <= 0 else "KubernetesSandbox.shutdown_deadline", "must be more than 0 seconds")


_RANDOM_KERNEL_ID = str(uuid.uuid4())
"""The kernel id when nothing names it: random, but one per process, so the early start
(:mod:`.early`) and the session agree on it."""


def current_kernel_id() -> str:
    """The Jupyter kernel id: $SANDBOX_KERNEL_ID, else from the connection file name, else random."""
    explicit = os.environ.get("SANDBOX_KERNEL_ID")
    if explicit:
        return explicit
    argv = sys.argv
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "-f" and i + 1 < len(argv) else arg[3:] if arg.startswith("-f=") else ""
        match = re.search(r"kernel-([0-9A-Za-z-]+)\.json$", path)
        if match:
            return match.group(1)
    return _RANDOM_KERNEL_ID


# ---------------------------------------------------------------------------------------------
# Reading pod status (pure).

_START_FAILURES = {
    "ErrImagePull": "could not be pulled",
    "ImagePullBackOff": "could not be pulled",
    "InvalidImageName": "is not a valid image name",
    "ErrImageNeverPull": "is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "could not be configured",
    "CreateContainerError": "could not be created",
    "RunContainerError": "could not be started",
}


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == manifests.CONTAINER_NAME:
            return status
    return {}


def start_problem(pod: dict[str, Any], image: str) -> SandboxError | None:
    """Why a starting pod will not run (pull error, bad config, unschedulable), or None."""
    waiting = _container_status(pod).get("state", {}).get("waiting") or {}
    reason = waiting.get("reason", "")
    if reason in _START_FAILURES:
        detail = waiting.get("message") or reason
        hint = ""
        if "pull" in _START_FAILURES[reason] or reason == "ErrImageNeverPull":
            hint = " Set c.KubernetesSandbox.images (or SANDBOX_IMAGE_<LANGUAGE>) to an image the cluster can use."
        return SandboxStartError(f"The sandbox image {image} {_START_FAILURES[reason]} ({reason}): {detail}.{hint}")
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
            return SandboxStartError(
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
            f"The sandbox pod reached its maximum lifetime of {pod_lifetime} s (KubernetesSandbox.pod_lifetime). {gone}"
        )
    terminated = _container_status(pod).get("state", {}).get("terminated")
    if terminated:
        if terminated.get("reason") == "OOMKilled":
            return OutOfMemory(limits.memory)
        if terminated.get("exitCode") == manifests.POLICY_NOT_ENFORCED:
            return SandboxStartError(
                "The sandbox pod could still reach the Kubernetes API server (over IPv4, or the node over IPv6 "
                "link-local) after KubernetesSandbox.network_policy_wait seconds: the deny-all NetworkPolicy is not "
                "enforced in this cluster (does its network plugin support NetworkPolicy, for IPv6 too?). Cells are "
                "not run without it."
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


def _container_running(pod: dict[str, Any] | None) -> bool:
    return bool(pod and pod.get("status", {}).get("phase") == "Running" and _container_status(pod).get("state", {}).get("running")
                and not pod.get("metadata", {}).get("deletionTimestamp"))


# ---------------------------------------------------------------------------------------------
# Creating a sandbox's objects (blocking; also used by the early start, see :mod:`.early`).


@dataclass(frozen=True)
class PreparedSandbox:
    """A namespace with all its objects and a first pod, created before a session took it over."""

    api: KubernetesApi
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


def expected_objects(
    settings: KubernetesSandbox,
    language: Language,
    limits: Limits,
    ident: manifests.SandboxIdentity,
    renew_time: str,
    pod_name: str = "sandbox-1",
) -> manifests.SandboxObjects:
    """Every object of the sandbox ``ident`` under these settings (pure)."""
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
    )


def create_namespace_objects(
    api: KubernetesApi, settings: KubernetesSandbox, language: Language, limits: Limits, kernel_id: str,
) -> tuple[manifests.SandboxIdentity, list[dict[str, Any]]]:
    """Create the namespace and everything in it but the pod; return its identity and the objects.

    The namespace comes first and the RoleBinding next (with the least-privilege identity, the
    right to create the rest exists only once it is bound). Quota, limit range, policy, config
    map and lease do not depend on each other and are created in parallel: five sequential
    round trips were ~35 ms of every start. All of them exist before the pod is created, so
    admission sees the quota and limit range, and the policy exists before any container does
    (the pod still checks that it is *enforced* before the agent starts, see
    :func:`.manifests.agent_command`). On failure the half-made namespace is deleted.
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
        objects = expected_objects(settings, language, limits, ident, renew_time)
        try:
            api.create(objects.namespace)
            break
        except SandboxError as exc:
            if "already exists" in str(exc) and attempt < 2:
                continue  # 8 random hex digits collided: draw again
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
def _deleted_on_failure(api: KubernetesApi, namespace: str) -> Iterator[None]:
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
    """Create a whole sandbox up to its first pod (blocking): what :mod:`.early` runs in a thread."""
    api = KubernetesApi(settings.kubeconfig, settings.context)
    ident, applied = create_namespace_objects(api, settings, language, limits, kernel_id)
    renew_time = applied[[o["kind"] for o in applied].index("Lease")]["spec"]["renewTime"]
    pod_name = "sandbox-1"
    body = manifests.pod(ident, settings.pod_spec(language, limits, pod_name))
    with _deleted_on_failure(api, ident.namespace):
        api.create(body, rbac_settle=5.0, account_settle=settings.start_timeout)
    return PreparedSandbox(api, settings.kubeconfig, settings.context, ident, renew_time, pod_name, [*applied, body], time.time())


def start_early(config: Any, language_name: str) -> Future[PreparedSandbox]:
    """Begin :func:`prepare_sandbox` in a thread, with the settings ``config`` gives; see :mod:`.early`.

    Settings are validated here, in the caller's thread: a bad one raises at once (and the
    kernel reports it properly later, when it reads the same configuration).
    """
    language = LANGUAGES[language_name]
    limits = Sandbox(config=config).limits()
    settings = KubernetesSandbox(config=config)
    settings.validate(limits)
    kernel_id = current_kernel_id()
    future: Future[PreparedSandbox] = Future()

    def work() -> None:
        try:
            future.set_result(prepare_sandbox(settings, language, limits, kernel_id))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever claims it
            future.set_exception(exc)

    threading.Thread(target=work, name="sandbox-early-start", daemon=True).start()
    return future


# ---------------------------------------------------------------------------------------------
# The byte stream.


# ---------------------------------------------------------------------------------------------
# The session.


class KubernetesSandboxSession(AgentSession):
    """A session whose sandbox is a pod in a namespace of its own."""

    backend = "kubernetes"
    start_timeout = 30.0  # for the agent's ready frame, once the pod runs and is attached

    def __init__(
        self,
        language: Language,
        limits: Limits,
        settings: KubernetesSandbox | None = None,
        kernel_id: str | None = None,
    ) -> None:
        super().__init__(language, limits)
        self.settings = settings or KubernetesSandbox()
        self.settings.validate(limits)
        self.kernel_id = kernel_id or current_kernel_id()
        self._api: KubernetesApi | None = None
        self._ident: manifests.SandboxIdentity | None = None
        self._applied: list[dict[str, Any]] = []
        self._pod_name: str | None = None
        self._pods_created = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._attach: AttachChannel | None = None
        self._last_pod: str | None = None
        self._stale_pods: set[str] = set()  # pods whose deletion failed (API server away): retried
        self._events: list[tuple[float, str]] = []

    @property
    def namespace(self) -> str | None:
        """The sandbox namespace, once created."""
        return self._ident.namespace if self._ident else None

    @property
    def pod_name(self) -> str | None:
        return self._pod_name

    # -- helpers ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking API call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _connect(self) -> KubernetesApi:
        if self._api is None:
            self._api = KubernetesApi(self.settings.kubeconfig, self.settings.context)
        return self._api

    def _event(self, text: str, when: float | None = None) -> None:
        self._events.append((time.time() if when is None else when, text))
        del self._events[:-50]
        log.info("%s", text)

    # -- creating the sandbox -----------------------------------------------------------------------

    def _create_namespace_objects(self) -> None:
        """Namespace, RoleBinding, quota, limit range, policy, config map, lease (blocking)."""
        ident, applied = create_namespace_objects(self._connect(), self.settings, self.language, self.limits, self.kernel_id)
        self._ident = ident
        self._applied = applied
        self._event(f"namespace {ident.namespace} created for kernel {self.kernel_id} (owner {ident.owner})")

    async def _claim_early(self) -> PreparedSandbox | None:
        """The sandbox :mod:`.early` began creating while the kernel process imported, if it fits.

        It fits only if every object it created is exactly what this session would have
        created (same cluster, kernel, language, limits and settings): the early start guessed
        the configuration before ipykernel loaded it. Anything else is deleted and the session
        starts its own sandbox, so a wrong guess costs time, never a weaker sandbox.
        """
        future = early.claim()
        if future is None:
            return None
        try:
            prepared = await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 - the normal start below reports the cause properly
            log.info("early sandbox start failed (%s); starting the sandbox now", exc)
            return None
        settings = self.settings
        expected = expected_objects(settings, self.language, self.limits, prepared.ident, prepared.renew_time, prepared.pod_name)
        if (prepared.kubeconfig, prepared.context) == (settings.kubeconfig, settings.context) and (
            prepared.ident.kernel_id == self.kernel_id and expected.in_order() == prepared.applied
        ):
            return prepared
        log.info("the early sandbox %s does not match the kernel's configuration; deleting it", prepared.ident.namespace)
        try:
            await self._run(prepared.api.delete_namespace, prepared.ident.namespace)
        except SandboxError:
            log.warning("could not delete the early sandbox namespace %s", prepared.ident.namespace, exc_info=True)
        return None

    async def _spawn(self) -> AgentChannel:
        try:
            return await self._spawn_pod()
        except ClusterUnreachable:
            if self._ident is None:
                self._api = None  # reload the kubeconfig next time: it may have been fixed or renewed
            raise

    async def _spawn_pod(self) -> AgentChannel:
        prepared = await self._claim_early() if self._ident is None else None
        if prepared is not None:
            self._api = prepared.api
        api = await self._run(self._connect)
        if self._ident is not None:
            ns = await self._run(api.read_namespace, self._ident.namespace)
            if ns is None or ns.get("metadata", {}).get("deletionTimestamp"):
                self._event(f"namespace {self._ident.namespace} is gone; creating a new one")
                self._stop_heartbeat()
                self._ident = None
        if self._ident is not None:
            # A pod we could not delete (say the API server was away) would hold quota: retry now.
            for stale in sorted(self._stale_pods):
                await self._run(api.delete_pod, self._ident.namespace, stale)
                self._stale_pods.discard(stale)
        if prepared is not None:
            self._stale_pods.clear()
            self._ident = prepared.ident
            self._applied = prepared.applied
            self._pods_created = 1
            name = prepared.pod_name
            spec = self.settings.pod_spec(self.language, self.limits, name)
            self._event(f"namespace {prepared.ident.namespace} created for kernel {self.kernel_id} "
                        f"(owner {prepared.ident.owner}) while the kernel process started", prepared.created_at)
            self._event(f"pod {name} created (image {spec.image})", prepared.created_at)
            self._pod_name = name
            self._start_heartbeat()
        else:
            if self._ident is None:
                self._stale_pods.clear()
                await self._run(self._create_namespace_objects)
                self._pods_created = 0
                self._start_heartbeat()
            assert self._ident is not None
            self._pods_created += 1
            name = f"sandbox-{self._pods_created}"
            spec = self.settings.pod_spec(self.language, self.limits, name)
            body = manifests.pod(self._ident, spec)
            await self._run(api.create, body, rbac_settle=5.0, account_settle=self.settings.start_timeout)
            self._pod_name = name
            self._applied = [o for o in self._applied if o["kind"] != "Pod"] + [body]
            self._event(f"pod {name} created (image {spec.image})")
        ident = self._ident
        assert ident is not None
        try:
            await self._wait_running(api, ident.namespace, name, spec.image)
            stream = await self._run(api.attach, ident.namespace, name, manifests.CONTAINER_NAME)
        except BaseException:
            self._pod_name = None
            try:
                await self._run(api.delete_pod, ident.namespace, name)
            except SandboxError:
                pass
            raise
        loop = asyncio.get_running_loop()
        channel = AttachChannel(loop, stream, functools.partial(self._reattach, ident.namespace, name))
        self._attach = channel
        channel.open_gate(manifests.GATE_LINE)
        self._event(f"attached to pod {name}; agent starting")
        return channel

    async def _wait_running(self, api: KubernetesApi, namespace: str, name: str, image: str) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        unschedulable_since: float | None = None
        last: dict[str, Any] | None = None
        while True:
            pod = await self._run(api.read_pod, namespace, name)
            if pod is None:
                raise SandboxStartError(f"The sandbox pod {name} disappeared while starting (namespace {namespace}).")
            last = pod
            if _container_running(pod):
                node = pod.get("spec", {}).get("nodeName", "?")
                self._event(f"pod {name} running on node {node}")
                return
            problem = start_problem(pod, image)
            if problem is not None:
                if "No node can run" not in str(problem):
                    self._event(str(problem))
                    raise problem
                # The scheduler may just be waiting for a node to become ready: allow it 2 s.
                unschedulable_since = unschedulable_since or time.monotonic()
                if time.monotonic() - unschedulable_since > 2.0:
                    self._event(str(problem))
                    raise problem
            else:
                unschedulable_since = None
            ended = end_reason(pod, self.limits, self.settings.pod_lifetime)
            if ended is not None:
                raise SandboxStartError(f"The sandbox pod ended while starting: {ended}")
            if time.monotonic() > deadline:
                phase = (last or {}).get("status", {}).get("phase", "unknown")
                raise SandboxStartError(
                    f"The sandbox pod {name} was not running after {self.settings.start_timeout:g} s "
                    f"(phase {phase}). See %sandbox events, or raise KubernetesSandbox.start_timeout."
                )
            await asyncio.sleep(START_POLL_INTERVAL)

    def _reattach(self, namespace: str, name: str) -> AttachStream | None:
        """Called by the reader thread when the stream ended: attach again if the container still runs.

        Keeps trying for ``reconnect_timeout`` seconds while the API server is away or refuses
        for a moment (a restart, a busy kubelet); gives up at once if the pod is gone or ended.
        """
        api = self._connect()
        deadline = time.monotonic() + self.settings.reconnect_timeout
        delay = 0.2  # also lets the kubelet report a container that has just ended
        while not self._closed and time.monotonic() < deadline:
            time.sleep(delay)
            try:
                pod = api.read_pod(namespace, name)
                if not _container_running(pod):
                    log.warning("not re-attaching: pod %s/%s is no longer running", namespace, name)
                    return None
                return api.attach(namespace, name, manifests.CONTAINER_NAME)
            except SandboxError as exc:
                log.warning("re-attaching to pod %s/%s failed, retrying: %s", namespace, name, exc)
                delay = min(delay * 2, 2.0)
        if not self._closed:
            log.error("gave up re-attaching to pod %s/%s after %g s", namespace, name, self.settings.reconnect_timeout)
        return None

    # -- heartbeat ----------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._stop_heartbeat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            ident, api = self._ident, self._api
            if ident is None or api is None:
                return
            try:
                await self._run(api.renew_lease, ident.namespace, manifests.LEASE_NAME, micro_time())
            except SandboxError as exc:
                log.warning("heartbeat not renewed: %s", exc)

    # -- AgentSession hooks -------------------------------------------------------------------------

    async def _kill(self) -> None:
        name, self._pod_name = self._pod_name, None
        self._attach = None
        if name is None or self._ident is None or self._api is None:
            return
        if self._closed:
            self._last_pod = name  # close() deletes it together with the namespace
            return
        try:
            await self._run(self._api.delete_pod, self._ident.namespace, name)
        except SandboxError:
            self._stale_pods.add(name)
            raise
        self._event(f"pod {name} deleted")

    async def _lost_reason(self) -> SandboxError:
        ident, name, api = self._ident, self._pod_name, self._api
        if ident is None or name is None or api is None:
            return SandboxLost("The sandbox stopped unexpectedly.")
        try:
            reason = None
            seen: float | None = None
            for _ in range(70):  # the kubelet may need a moment to report how the container ended
                pod = await self._run(api.read_pod, ident.namespace, name)
                reason = end_reason(pod, self.limits, self.settings.pod_lifetime)
                if reason is not None:
                    # The container's end may be reported before the pod's (an eviction or the
                    # deadline first stops the container): wait for the pod to settle, briefly.
                    settled = pod is None or pod.get("status", {}).get("phase") in ("Failed", "Succeeded")
                    seen = seen or time.monotonic()
                    if settled or isinstance(reason, OutOfMemory) or time.monotonic() - seen > 3.0:
                        break
                await asyncio.sleep(POLL_INTERVAL)
            if reason is not None and type(reason) is SandboxLost:
                # A kubelet eviction whose container exited cleanly on SIGTERM can leave the pod
                # "Succeeded" with no reason: its Evicted event still says what happened.
                evicted = eviction_event(await self._run(api.list_events, ident.namespace), name)
                if evicted is not None:
                    reason = evicted
        except SandboxError as exc:
            self._event(f"pod {name}: {exc}")
            return exc
        if reason is None:
            reason = SandboxLost(
                "The connection to the sandbox pod was lost while it was still running and could not be "
                "re-established. A new sandbox pod is started; variables from earlier cells are gone."
            )
        self._event(f"pod {name}: {reason}")
        return reason

    async def close(self) -> None:
        await super().close()
        self._stop_heartbeat()
        ident, self._ident = self._ident, None
        if ident is None or self._api is None:
            return
        api = self._api
        try:
            # Deleting the pod at once first (grace 0) spares the namespace controller waiting
            # for its graceful termination; the namespace then goes in a few seconds.
            for name in sorted(self._stale_pods | ({self._last_pod} if self._last_pod else set())):
                await self._run(api.delete_pod, ident.namespace, name)
            await self._run(api.delete_namespace, ident.namespace)
            deadline = time.monotonic() + self.settings.shutdown_deadline
            while time.monotonic() < deadline:
                if await self._run(api.read_namespace, ident.namespace) is None:
                    self._event(f"namespace {ident.namespace} deleted")
                    self._last_pod = None
                    return
                await asyncio.sleep(0.25)
            log.warning(
                "namespace %s still exists %g s after deletion was requested (KubernetesSandbox.shutdown_deadline); "
                "Kubernetes keeps deleting it", ident.namespace, self.settings.shutdown_deadline,
            )
        except SandboxError as exc:
            log.warning("could not delete namespace %s: %s; `sandbox-kernel gc` will reclaim it", ident.namespace, exc)

    # -- %sandbox -----------------------------------------------------------------------------------

    def report(self, topic: str) -> str:
        if topic not in ("status", "quota", "policy", "events", "manifests"):
            raise ValueError(topic)
        ident = self._ident
        if ident is None or self._api is None:
            return "No sandbox namespace exists yet (the sandbox has not started, or it was deleted)."
        try:
            return getattr(self, f"_report_{topic}")(self._api, ident)
        except SandboxError as exc:
            return f"Could not ask Kubernetes: {exc}"

    def _report_status(self, api: KubernetesApi, ident: manifests.SandboxIdentity) -> str:
        pod = api.read_pod(ident.namespace, self._pod_name) if self._pod_name else None
        limits = self.limits
        if pod:
            status = pod.get("status", {})
            phase = f"{status.get('phase', '?')} on node {pod.get('spec', {}).get('nodeName', '?')}"
            image = pod["spec"]["containers"][0]["image"]
        else:
            phase, image = "no pod", self.settings.image(self.language)
        rows = [
            ("namespace", ident.namespace),
            ("pod", f"{self._pod_name or '-'} ({phase})"),
            ("image", image),
            ("language", f"{self.language.name} {self.language_info.get('version', '')}".strip()),
            ("limits", f"cpu {limits.cpu}, memory {limits.memory} (requests {limits.cpu_request} / {limits.memory_request})"),
            ("scratch", f"{limits.scratch} tmpfs at {manifests.SANDBOX_HOME}, {self.settings.tmp_size} at /tmp (in memory)"),
            ("seccomp", f"Localhost {self.settings.seccomp_profile}" if self.settings.seccomp_profile else "RuntimeDefault"),
            ("cell timeout", f"{self.timeout:g} s"),
            ("pod lifetime", f"{self.settings.pod_lifetime} s"),
            ("heartbeat", f"Lease {manifests.LEASE_NAME}, renewed every {self.settings.heartbeat_interval:g} s, expires after {self.settings.heartbeat_ttl} s"),
            ("owner", f"{ident.owner} ({ident.user or 'unknown user'})"),
            ("kernel", ident.kernel_id),
            ("stream", self._stream_health()),
            ("cluster", api.host),
        ]
        return _table(rows)

    def _stream_health(self) -> str:
        channel = self._attach
        if channel is None:
            return "not attached"
        if not channel.reattached:
            return "attach, never dropped"
        return (
            f"attach, re-attached {channel.reattached} times; {channel.lost_output:,} bytes of output lost, "
            f"{channel.resent} requests sent again"
        )

    def _report_quota(self, api: KubernetesApi, ident: manifests.SandboxIdentity) -> str:
        quota = api.read_resource_quota(ident.namespace, manifests.QUOTA_NAME) or {}
        hard = quota.get("status", {}).get("hard") or quota.get("spec", {}).get("hard") or {}
        used = quota.get("status", {}).get("used") or {}
        rows = [("RESOURCE", "USED", "HARD")] + [(k, str(used.get(k, "0")), str(v)) for k, v in sorted(hard.items())]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def _report_policy(self, api: KubernetesApi, ident: manifests.SandboxIdentity) -> str:
        policy = api.read_network_policy(ident.namespace, manifests.NETWORK_POLICY_NAME)
        ns = api.read_namespace(ident.namespace) or {}
        pss = {k: v for k, v in (ns.get("metadata", {}).get("labels") or {}).items() if k.startswith("pod-security.kubernetes.io/")}
        words = [
            f"network: NetworkPolicy {manifests.NETWORK_POLICY_NAME} selects every pod and allows no ingress and no egress "
            "(no DNS, no API server, no other pod, no internet)" if policy else "network: NO NetworkPolicy found",
            "pod security: " + (", ".join(f"{k.rsplit('/', 1)[1]}={v}" for k, v in sorted(pss.items())) or "none")
            + " (uid 1000, no privilege escalation, all capabilities dropped)",
            _seccomp_line(self.settings.seccomp_profile),
            "service account token: not mounted; environment: HOME, PATH, LANG only",
            f"files: read-only root file system; {self.limits.scratch} at {manifests.SANDBOX_HOME} and "
            f"{self.settings.tmp_size} at /tmp, memory-backed emptyDirs (a write past their size fails with "
            f"'No space left on device'; what they hold counts against the memory limit {self.limits.memory})",
        ]
        shown = []
        if policy:
            shown.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": policy["metadata"]["name"], "namespace": ident.namespace}, "spec": policy.get("spec")})
        shown.append({"namespace": ident.namespace, "labels": pss})
        return "\n".join(words) + "\n\n" + yaml.safe_dump_all(shown, sort_keys=False)

    def _report_events(self, api: KubernetesApi, ident: manifests.SandboxIdentity) -> str:
        events = api.list_events(ident.namespace)

        def when(event: dict[str, Any]) -> str:
            return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("metadata", {}).get("creationTimestamp") or "")

        lines = []
        for event in sorted(events, key=when):
            obj = event.get("involvedObject", {})
            lines.append(
                f"{when(event)[11:19]}  {event.get('type', ''):7} {event.get('reason', ''):18} "
                f"{obj.get('kind', '').lower()}/{obj.get('name', '')}: {event.get('message', '').strip()}"
            )
        local = [time.strftime("%H:%M:%S", time.gmtime(t)) + "  kernel  " + text for t, text in self._events]
        return "Kubernetes events (newest last):\n" + ("\n".join(lines) or "none") + "\n\nKernel:\n" + ("\n".join(local) or "none")

    def _report_manifests(self, api: KubernetesApi, ident: manifests.SandboxIdentity) -> str:
        return yaml.safe_dump_all(self._applied, sort_keys=False)


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
