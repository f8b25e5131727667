"""Settings of the Kubernetes backend (``c.KubernetesSandbox.*``) and the kernel id a sandbox is made for.

The settings turn into the small frozen dataclasses the pure builders of :mod:`.manifests`
take (:meth:`KubernetesSandbox.quota`, :meth:`~KubernetesSandbox.limit_range`,
:meth:`~KubernetesSandbox.pod_spec`); :meth:`KubernetesSandbox.validate` checks them against
each other and against the shared ``Sandbox`` limits before anything is created.
"""

from __future__ import annotations

import os
import re
import sys
import uuid

from traitlets import Dict, Enum, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from ..config import Limits, setting_bytes, setting_cpu
from ..errors import ConfigError
from ..languages import LANGUAGES, Language
from ..quantity import parse_bytes, parse_cpu
from . import manifests

MIN_WORKING_MEMORY = 32 * 2**20
"""Memory a sandbox keeps beside its tmpfs volumes (HOME and /tmp count against its limit): the
agent and an interpreter need ~20-30 MiB."""

DEFAULT_NAMESPACE_PREFIX = "sandbox-"
"""The namespace prefix k8s/rbac/admission-policy.yaml admits as shipped (its PREFIX variables)."""

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

    mode = Enum(
        ["direct", "claims"],
        help="How a kernel gets its sandbox. 'direct': it creates the namespace, its policies and the pod "
        "itself (needs the rights of k8s/rbac/clusterrole.yaml, or a person's own admin kubeconfig). "
        "'claims': it creates a SandboxClaim and the sandbox controller (`sandbox-kernel controller`) makes "
        "the sandbox, or hands over a pooled one; the kernel's identity then needs only claims in its own "
        "namespace (k8s/rbac/claims.yaml). Env: SANDBOX_KUBERNETES_MODE.",
    ).tag(config=True)

    @default("mode")
    def _mode_default(self) -> str:
        return os.environ.get("SANDBOX_KUBERNETES_MODE") or "direct"

    claim_namespace = Unicode(
        "",
        help="Claims mode: the namespace the kernel's SandboxClaims go to. Empty: the namespace of the "
        "kernel's service account (its own), e.g. sandbox-kernel-system.",
    ).tag(config=True)

    namespace_prefix = Unicode(
        DEFAULT_NAMESPACE_PREFIX,
        help="Prefix of the namespace name; 8 random hex digits follow (e.g. sandbox-1a2b3c4d). The admission "
        "policy of k8s/rbac/ admits one prefix: change its two PREFIX variables with this setting.",
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
            name: os.environ.get(_IMAGE_ENV[name]) or language.default_image for name, language in LANGUAGES.items()
        }

    image_pull_policy = Enum(
        ["IfNotPresent", "Always", "Never"],
        "IfNotPresent",
        help="imagePullPolicy of the sandbox container.",
    ).tag(config=True)

    image_pull_secrets = List(
        Unicode(),
        help="Names of Secrets (in the sandbox namespace) used to pull the images.",
    ).tag(config=True)

    node_selector = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="nodeSelector of the sandbox pod, e.g. {'sandbox': 'true'}.",
    ).tag(config=True)

    tolerations = List(
        Dict(),
        help="tolerations of the sandbox pod, as in a pod spec, e.g. "
        "[{'key': 'sandbox', 'operator': 'Exists', 'effect': 'NoSchedule'}].",
    ).tag(config=True)

    runtime_class_name = Unicode(
        "",
        help="runtimeClassName of the sandbox pod, e.g. 'gvisor' or 'kata' (empty: the cluster default). "
        "Direct mode only: in claims mode the controller's own setting decides (set here, it is refused).",
    ).tag(config=True)

    stream_relay = Enum(
        ["auto", "on", "off"],
        "auto",
        help="Keep the attach stream (the kernel's protocol with the agent) out of the cells' reach with a "
        "relay: the container's PID 1 holds the stream and runs the agent, and so every cell, in a user, PID "
        "and mount namespace of their own (unshare from util-linux, in the Python and Node.js images), "
        "connected to it by socket pairs. Needed under runtimes whose /proc reopens another process's file "
        "descriptors whatever its dumpability (gVisor). 'auto': on when runtime_class_name is set. Python "
        "and Node.js only: the Bash image has no relay (its pods run the agent as PID 1 whatever this says). "
        "A runtime that forbids user namespaces (runc's RuntimeDefault seccomp profile) then fails the "
        "sandbox's start with a message naming this setting.",
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

    egress_proxy = Unicode(
        f"{manifests.EGRESS_PROXY_NAMESPACE}/sandbox-egress-proxy",
        help="The shared egress proxy a sandbox with Sandbox.allow_hosts reaches (k8s/egress/): a Service as "
        "NAMESPACE/NAME, whose ClusterIP and port the kernel reads, or IPv4:PORT. Its pods must be in "
        f"{manifests.EGRESS_PROXY_NAMESPACE}, labelled app.kubernetes.io/name=sandbox-egress-proxy: the only "
        "peer the sandbox's egress-proxy NetworkPolicy (and the admission policy) opens.",
    ).tag(config=True)

    pod_lifetime = Int(
        43200,
        help="Most seconds a sandbox pod may live (activeDeadlineSeconds); the next cell then gets a new pod.",
    ).tag(config=True)

    # -- lifecycle -------------------------------------------------------------------------------

    start_timeout = Float(
        120.0,
        help="Seconds to wait for the sandbox pod to be running (image pull included). Pull errors, "
        "and admission rejections are reported at once, unschedulable pods after unschedulable_timeout.",
    ).tag(config=True)

    unschedulable_timeout = Float(
        30.0,
        help="Seconds a sandbox pod may wait for a node that can run it (the scheduler says Unschedulable: "
        "not enough free memory or CPU on any node, a node selector no node matches) before the start fails "
        "with the scheduler's reason. Meanwhile the first cell shows that reason; a node freed or added "
        "in time lets the start go on.",
    ).tag(config=True)

    shutdown_deadline = Float(
        60.0,
        help="Seconds kernel shutdown waits for the sandbox (pod and namespace) to be gone; Kubernetes goes on "
        "deleting what is left after that, and `sandbox-kernel gc` reclaims it if that fails.",
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
    quota_requests_memory = Unicode("256Mi", help="ResourceQuota requests.memory of the sandbox namespace.").tag(
        config=True
    )
    quota_limits_cpu = Unicode("1", help="ResourceQuota limits.cpu of the sandbox namespace.").tag(config=True)
    quota_limits_memory = Unicode("512Mi", help="ResourceQuota limits.memory of the sandbox namespace.").tag(
        config=True
    )
    quota_pods = Int(3, help="ResourceQuota pods: most pods in the sandbox namespace.").tag(config=True)
    quota_persistentvolumeclaims = Int(0, help="ResourceQuota persistentvolumeclaims of the sandbox namespace.").tag(
        config=True
    )
    quota_services = Int(0, help="ResourceQuota services of the sandbox namespace.").tag(config=True)

    limit_range_max_cpu = Unicode("500m", help="LimitRange max cpu per container.").tag(config=True)
    limit_range_max_memory = Unicode("256Mi", help="LimitRange max memory per container.").tag(config=True)
    limit_range_min_cpu = Unicode("10m", help="LimitRange min cpu per container.").tag(config=True)
    limit_range_min_memory = Unicode("10Mi", help="LimitRange min memory per container.").tag(config=True)
    limit_range_default_cpu = Unicode("250m", help="LimitRange default cpu limit per container.").tag(config=True)
    limit_range_default_memory = Unicode("128Mi", help="LimitRange default memory limit per container.").tag(
        config=True
    )
    limit_range_default_request_cpu = Unicode("100m", help="LimitRange default cpu request per container.").tag(
        config=True
    )
    limit_range_default_request_memory = Unicode("64Mi", help="LimitRange default memory request per container.").tag(
        config=True
    )

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
            relay_file=language.relay_file if self.relays_stream() else "",
            network_policy_wait=self.network_policy_wait,
            egress=bool(limits.allow_hosts),
            seccomp_profile=self.seccomp_profile,
        )

    def relays_stream(self) -> bool:
        """Whether sandbox pods run the stream relay (``stream_relay``; ``'auto'``: with a runtime class)."""
        return self.stream_relay == "on" or (self.stream_relay == "auto" and bool(self.runtime_class_name))

    def validate(self, limits: Limits) -> None:
        """Check every setting against the others; raise ConfigError naming the first bad one."""
        cpu = {
            name: setting_cpu(f"KubernetesSandbox.{name}", getattr(self, name))
            for name in (
                "quota_requests_cpu",
                "quota_limits_cpu",
                "limit_range_max_cpu",
                "limit_range_min_cpu",
                "limit_range_default_cpu",
                "limit_range_default_request_cpu",
            )
        }
        mem = {
            name: setting_bytes(f"KubernetesSandbox.{name}", getattr(self, name))
            for name in (
                "quota_requests_memory",
                "quota_limits_memory",
                "limit_range_max_memory",
                "limit_range_min_memory",
                "limit_range_default_memory",
                "limit_range_default_request_memory",
                "tmp_size",
            )
        }
        if limits.cpu_cores > cpu["limit_range_max_cpu"]:
            raise ConfigError(
                "Sandbox.cpu_limit",
                f"{limits.cpu} is above KubernetesSandbox.limit_range_max_cpu {self.limit_range_max_cpu}",
            )
        if limits.memory_bytes > mem["limit_range_max_memory"]:
            raise ConfigError(
                "Sandbox.memory_limit",
                f"{limits.memory} is above KubernetesSandbox.limit_range_max_memory {self.limit_range_max_memory}",
            )
        if limits.cpu_cores > cpu["quota_limits_cpu"]:
            raise ConfigError(
                "Sandbox.cpu_limit", f"{limits.cpu} is above KubernetesSandbox.quota_limits_cpu {self.quota_limits_cpu}"
            )
        if limits.memory_bytes > mem["quota_limits_memory"]:
            raise ConfigError(
                "Sandbox.memory_limit",
                f"{limits.memory} is above KubernetesSandbox.quota_limits_memory {self.quota_limits_memory}",
            )
        if parse_cpu(limits.cpu_request) > cpu["quota_requests_cpu"]:
            raise ConfigError(
                "Sandbox.cpu_request",
                f"{limits.cpu_request} is above KubernetesSandbox.quota_requests_cpu {self.quota_requests_cpu}",
            )
        if parse_bytes(limits.memory_request) > mem["quota_requests_memory"]:
            raise ConfigError(
                "Sandbox.memory_request",
                f"{limits.memory_request} is above KubernetesSandbox.quota_requests_memory {self.quota_requests_memory}",
            )
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
        if (
            not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?-?", self.namespace_prefix)
            or len(self.namespace_prefix) > 40
        ):
            raise ConfigError(
                "KubernetesSandbox.namespace_prefix",
                f"{self.namespace_prefix!r} is not a DNS label prefix (a-z, 0-9, '-'; at most 40)",
            )
        if self.pod_lifetime < 60:
            raise ConfigError("KubernetesSandbox.pod_lifetime", "must be at least 60 seconds")
        if self.heartbeat_interval <= 0:
            raise ConfigError("KubernetesSandbox.heartbeat_interval", "must be more than 0 seconds")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ConfigError(
                "KubernetesSandbox.heartbeat_ttl",
                f"{self.heartbeat_ttl} s must be longer than heartbeat_interval ({self.heartbeat_interval:g} s)",
            )
        if self.mode == "claims" and limits.allow_hosts:
            from .egress import widening

            if widening(self.config):
                raise ConfigError(
                    "EgressProxy.allow_widening",
                    "is not available in claims mode: a claimed sandbox's allow list is bounded by its claim "
                    "(and the controller's SandboxController.allow_hosts), so %sandbox allow can only narrow it",
                )
        if self.mode == "claims" and self.runtime_class_name:
            raise ConfigError(
                "KubernetesSandbox.runtime_class_name",
                f"{self.runtime_class_name!r} would be ignored in claims mode: a SandboxClaim does not carry a runtime, "
                "the sandbox controller's own KubernetesSandbox.runtime_class_name decides; leave it empty here, "
                "or use KubernetesSandbox.mode = 'direct'",
            )
        if limits.allow_hosts:
            from .egress import parse_proxy_setting

            parse_proxy_setting(self.egress_proxy)
        if self.mode == "claims" and not 5 <= self.heartbeat_ttl <= 3600:
            raise ConfigError(
                "KubernetesSandbox.heartbeat_ttl",
                "must be 5 to 3600 s in claims mode (a SandboxClaim's heartbeatSeconds)",
            )
        if self.reconnect_timeout <= 0:
            raise ConfigError("KubernetesSandbox.reconnect_timeout", "must be more than 0 seconds")
        if self.start_timeout <= 0 or self.shutdown_deadline <= 0:
            raise ConfigError(
                "KubernetesSandbox.start_timeout" if self.start_timeout <= 0 else "KubernetesSandbox.shutdown_deadline",
                "must be more than 0 seconds",
            )


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
