"""Pure builders for every object a Kubernetes sandbox is made of.

Each function takes small frozen dataclasses and returns the plain dict the API server is sent,
so ``sandbox-kernel render``, ``k8s/sandbox/*.yaml`` and the running kernel all apply exactly
the same objects, and the tests compare whole dicts without a cluster. Nothing here talks to
the network or reads settings; :mod:`.settings` turns settings into these dataclasses and
:mod:`.api` sends the dicts.

One sandbox is, in the order it is created::

    Namespace        sandbox-<8 hex>, Pod Security "restricted", labels naming kernel/owner
    RoleBinding      gives the kernel's own identity the sandbox role in this namespace only
    ResourceQuota    caps what all pods of the namespace may request and use
    LimitRange       per-container bounds and defaults
    NetworkPolicy    deny-all: no ingress, no egress (not even DNS)
    NetworkPolicy    egress-proxy, only with an allow list: egress to the egress proxy's port, nothing else
    ConfigMap        the agent's source, mounted read-only into the pod
    Lease            the kernel's heartbeat; ``sandbox-kernel gc`` reclaims it once expired
    Pod              one long-lived agent per kernel, attached to through the API server

What the pod's container runs (the policy guard, the kernel's gate, the agent) is
:mod:`.pod_command`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .pod_command import AGENT_DIR, SANDBOX_HOME, SANDBOX_PATH, agent_command

MANAGED_BY = "sandbox-kernel"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KERNEL_ID = "sandbox-kernel/kernel-id"
LABEL_LANGUAGE = "sandbox-kernel/language"
LABEL_OWNER = "sandbox-kernel/owner"
ANNOTATION_CREATED = "sandbox-kernel/created"
ANNOTATION_USER = "sandbox-kernel/user"
# Controlled egress (k8s/EGRESS.md): what the shared proxy's policy sync reads off the namespace
# (sandbox_kernel.egress.k8s_sync, which names them), and the admission policy checks.
ANNOTATION_EGRESS_TOKEN = "sandbox-kernel/egress-token-sha256"
ANNOTATION_EGRESS_ALLOW = "sandbox-kernel/egress-allow"
ANNOTATION_EGRESS_DENY = "sandbox-kernel/egress-deny"
ANNOTATION_EGRESS_OPERATOR = "sandbox-kernel/egress-operator"
ANNOTATION_EGRESS_WIDENING = "sandbox-kernel/egress-widening"
ANNOTATION_EGRESS_SOURCE = "sandbox-kernel/egress-source"

SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
"""Label selector matching every namespace (and object) this project created."""

SANDBOX_UID = 1000
CONTAINER_NAME = "agent"
CONFIG_MAP_NAME = "sandbox-agent"
LEASE_NAME = "sandbox-heartbeat"
NETWORK_POLICY_NAME = "deny-all"
EGRESS_POLICY_NAME = "egress-proxy"
EGRESS_PROXY_NAMESPACE = "sandbox-kernel-system"
EGRESS_PROXY_LABELS = {"app.kubernetes.io/name": "sandbox-egress-proxy"}
EGRESS_PROXY_PORT = 3128
"""The egress proxy pods' namespace, labels and port: the only peer the ``egress-proxy`` policy opens
(k8s/egress/; the admission policy ``sandbox-kernel-networkpolicies`` admits exactly this object)."""
SANDBOX_POD_LABEL = ("app.kubernetes.io/name", "sandbox")
QUOTA_NAME = "sandbox-quota"
LIMIT_RANGE_NAME = "sandbox-limits"
ROLE_BINDING_NAME = "sandbox-kernel"
SECCOMP_PROFILE = "profiles/sandbox-kernel.json"
"""The Localhost seccomp profile the project ships: ``sandbox_kernel.local.seccomp_policy.to_oci_profile()``
(the local sandbox's table) written to ``<kubelet root>/seccomp/profiles/sandbox-kernel.json`` on each
node (tests/cluster/up does it on the test node). The admission policy ``sandbox-kernel-pods-command``
admits exactly this Localhost profile or RuntimeDefault."""
SCRATCH_MEDIUM = "Memory"
"""HOME and /tmp are memory-backed emptyDirs: tmpfs of ``sizeLimit`` on the node, so a write past it
fails at once with ENOSPC (a disk-backed emptyDir's sizeLimit is only enforced by eviction, after
the fact, and the node's disk fills first). Their pages count against the container's memory limit."""


# ---------------------------------------------------------------------------------------------
# Inputs.


@dataclass(frozen=True)
class SandboxIdentity:
    """Which kernel a sandbox belongs to and who started it."""

    namespace: str
    kernel_id: str
    language: str
    owner: str
    """Label-safe owner: the service account's name, or the sanitised user name."""
    user: str
    """The full Kubernetes user name of the kernel's identity (e.g. ``system:serviceaccount:ns:sa``)."""
    created: str
    """RFC 3339 creation time, e.g. ``2025-01-01T00:00:00Z``."""


@dataclass(frozen=True)
class QuotaSpec:
    """``spec.hard`` of the namespace's ResourceQuota."""

    requests_cpu: str = "500m"
    requests_memory: str = "256Mi"
    limits_cpu: str = "1"
    limits_memory: str = "512Mi"
    pods: int = 3
    persistentvolumeclaims: int = 0
    services: int = 0


@dataclass(frozen=True)
class LimitRangeSpec:
    """Per-container bounds and defaults of the namespace's LimitRange."""

    max_cpu: str = "500m"
    max_memory: str = "256Mi"
    min_cpu: str = "10m"
    min_memory: str = "10Mi"
    default_cpu: str = "250m"
    default_memory: str = "128Mi"
    default_request_cpu: str = "100m"
    default_request_memory: str = "64Mi"


@dataclass(frozen=True)
class PodSpec:
    """Everything that varies in the sandbox pod."""

    name: str
    image: str
    interpreter: str
    agent_file: str
    cpu_request: str = "100m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "256Mi"
    scratch_size: str = "64Mi"
    tmp_size: str = "16Mi"
    active_deadline_seconds: int = 43200
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict[str, Any], ...] = field(default=())
    runtime_class_name: str = ""
    network_policy_wait: int = 10
    """Most seconds the agent waits for the deny-all NetworkPolicy to be in force (0: do not check)."""
    shell_as_init: bool = False
    """Keep ``/bin/sh`` as PID 1 to reap orphans, for agents that cannot (see :func:`agent_command`)."""
    egress: bool = False
    """The sandbox has an egress allow list: its gate line carries the proxy variables (:func:`.pod_command.gate_line`)."""
    relay_file: str = ""
    """What the container runs in place of the agent (``KubernetesSandbox.stream_relay``); empty: the agent."""
    seccomp_profile: str = ""
    """``""``: the runtime's default seccomp profile (RuntimeDefault); else a Localhost profile's path
    relative to the kubelet's seccomp root, e.g. :data:`SECCOMP_PROFILE` (see :func:`seccomp_profile`)."""


@dataclass(frozen=True)
class Subject:
    """The identity the kernel talks to the API server as (an RBAC subject)."""

    kind: str
    """``ServiceAccount`` or ``User``."""
    name: str
    namespace: str = ""

    @classmethod
    def from_username(cls, username: str) -> "Subject":
        """``system:serviceaccount:NS:NAME`` → a ServiceAccount subject; anything else → a User."""
        parts = username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return cls("ServiceAccount", parts[3], parts[2])
        return cls("User", username)


@dataclass(frozen=True)
class EgressSpec:
    """A sandbox's egress, as its namespace carries it (only when ``Sandbox.allow_hosts`` is not empty).

    Lists are entries in the policy's ``name:port,port`` form (``pypi.org:443,80``), written
    space-separated into the annotations, which the admission policy's CEL can split."""

    token_sha256: str
    """Hex SHA-256 of the sandbox's proxy credential (the credential itself is in no object)."""
    operator: tuple[str, ...]
    """The operator's list (``Sandbox.allow_hosts``): what ``%sandbox allow`` may restore."""
    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    widening: bool = False
    """``EgressProxy.allow_widening``: whether ``allow`` may go beyond ``operator``."""


# ---------------------------------------------------------------------------------------------
# Helpers.


def label_value(text: str) -> str:
    """Make ``text`` a valid label value (≤ 63 chars of ``[A-Za-z0-9._-]``, alphanumeric ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    return value or "unknown"


def owner_label(username: str) -> str:
    """The owner label for a user name: a service account's name, else the sanitised user name."""
    subject = Subject.from_username(username)
    return label_value(subject.name)


def seccomp_profile(profile: str) -> dict[str, str]:
    """The pod's ``securityContext.seccompProfile``: RuntimeDefault for ``""``, else that Localhost profile."""
    if not profile:
        return {"type": "RuntimeDefault"}
    return {"type": "Localhost", "localhostProfile": profile}


def _labels(ident: SandboxIdentity) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_KERNEL_ID: label_value(ident.kernel_id),
        LABEL_LANGUAGE: ident.language,
        LABEL_OWNER: ident.owner,
    }


def _meta(ident: SandboxIdentity, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": ident.namespace, "labels": _labels(ident)}


# ---------------------------------------------------------------------------------------------
# Builders.


def namespace(ident: SandboxIdentity, egress: EgressSpec | None = None) -> dict[str, Any]:
    """The sandbox namespace; Pod Security "restricted" is enforced, warned and audited. With
    ``egress``, it also carries the sandbox's egress annotations (:func:`egress_annotations`)."""
    labels = _labels(ident)
    for mode in ("enforce", "warn", "audit"):
        labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
    labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    annotations = {ANNOTATION_CREATED: ident.created, ANNOTATION_USER: ident.user}
    if egress is not None:
        annotations.update(egress_annotations(egress))
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ident.namespace, "labels": labels, "annotations": annotations},
    }


def egress_annotations(egress: EgressSpec) -> dict[str, str]:
    """The namespace annotations of a sandbox's egress; ``%sandbox allow``/``deny`` patch the
    allow and deny ones (:func:`egress_list_patch`), the admission policy keeps the others fixed."""
    return {
        ANNOTATION_EGRESS_TOKEN: egress.token_sha256,
        ANNOTATION_EGRESS_OPERATOR: " ".join(egress.operator),
        ANNOTATION_EGRESS_WIDENING: "true" if egress.widening else "false",
        **egress_list_patch(egress.allow, egress.deny),
    }


def egress_list_patch(allow: tuple[str, ...] | list[str], deny: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The two annotations ``%sandbox allow``/``deny`` change."""
    return {ANNOTATION_EGRESS_ALLOW: " ".join(allow), ANNOTATION_EGRESS_DENY: " ".join(deny)}


def role_binding(ident: SandboxIdentity, subject: Subject, cluster_role: str) -> dict[str, Any]:
    """Bind ``cluster_role`` to the kernel's own identity in this namespace only (see k8s/rbac/)."""
    entry: dict[str, Any] = {"kind": subject.kind, "name": subject.name}
    if subject.kind == "ServiceAccount":
        entry["namespace"] = subject.namespace
    else:
        entry["apiGroup"] = "rbac.authorization.k8s.io"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ident, ROLE_BINDING_NAME),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [entry],
    }


def resource_quota(ident: SandboxIdentity, quota: QuotaSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(ident, QUOTA_NAME),
        "spec": {
            "hard": {
                "requests.cpu": quota.requests_cpu,
                "requests.memory": quota.requests_memory,
                "limits.cpu": quota.limits_cpu,
                "limits.memory": quota.limits_memory,
                "pods": str(quota.pods),
                "persistentvolumeclaims": str(quota.persistentvolumeclaims),
                "services": str(quota.services),
            }
        },
    }


def limit_range(ident: SandboxIdentity, limits: LimitRangeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(ident, LIMIT_RANGE_NAME),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "max": {"cpu": limits.max_cpu, "memory": limits.max_memory},
                    "min": {"cpu": limits.min_cpu, "memory": limits.min_memory},
                    "default": {"cpu": limits.default_cpu, "memory": limits.default_memory},
                    "defaultRequest": {"cpu": limits.default_request_cpu, "memory": limits.default_request_memory},
                }
            ]
        },
    }


def network_policy(ident: SandboxIdentity) -> dict[str, Any]:
    """Deny all ingress and egress for every pod of the namespace (no rules = nothing allowed)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ident, NETWORK_POLICY_NAME),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def egress_network_policy(ident: SandboxIdentity) -> dict[str, Any]:
    """Egress from the sandbox pod to the egress proxy pods' port only: NetworkPolicies add up, so
    deny-all still closes everything else (DNS, the API server, other pods, the internet).
    Created only for a sandbox with an allow list; the admission policy admits exactly this spec."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ident, EGRESS_POLICY_NAME),
        "spec": {
            "podSelector": {"matchLabels": dict([SANDBOX_POD_LABEL])},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": EGRESS_PROXY_NAMESPACE}
                            },
                            "podSelector": {"matchLabels": dict(EGRESS_PROXY_LABELS)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": EGRESS_PROXY_PORT}],
                }
            ],
        },
    }


def agent_config_map(ident: SandboxIdentity, files: dict[str, str]) -> dict[str, Any]:
    """The agent's source (and the stream relay's, if the pod runs one), exactly as shipped with this package."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ident, CONFIG_MAP_NAME),
        "immutable": True,
        "data": dict(files),
    }


def heartbeat_lease(ident: SandboxIdentity, duration_seconds: int, renew_time: str) -> dict[str, Any]:
    """The heartbeat: the kernel bumps ``renewTime``; it is expired after ``leaseDurationSeconds``.

    ``renew_time`` is a MicroTime, e.g. ``2025-01-01T00:00:00.000000Z``.
    """
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _meta(ident, LEASE_NAME),
        "spec": {
            "holderIdentity": ident.kernel_id,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": renew_time,
            "renewTime": renew_time,
        },
    }


def pod(ident: SandboxIdentity, spec: PodSpec) -> dict[str, Any]:
    """The sandbox pod: passes Pod Security "restricted" as created; stdin open for attach.

    HOME and /tmp are tmpfs (:data:`SCRATCH_MEDIUM`): what a cell writes there is memory of the
    container, within ``memory_limit`` (:meth:`.settings.KubernetesSandbox.validate` keeps room for
    the interpreter beside them).
    """
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID,
            "seccompProfile": seccomp_profile(spec.seccomp_profile),
        },
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": agent_command(
                    spec.interpreter,
                    spec.relay_file or spec.agent_file,
                    spec.network_policy_wait,
                    spec.shell_as_init,
                    spec.egress,
                ),
                "stdin": True,
                "stdinOnce": False,
                "tty": False,
                "workingDir": SANDBOX_HOME,
                "env": [
                    {"name": "HOME", "value": SANDBOX_HOME},
                    {"name": "PATH", "value": SANDBOX_PATH},
                    {"name": "LANG", "value": "C.UTF-8"},
                ],
                "resources": {
                    "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
                    "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                },
                "volumeMounts": [
                    {"name": "home", "mountPath": SANDBOX_HOME},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "agent", "mountPath": AGENT_DIR, "readOnly": True},
                ],
            }
        ],
        "volumes": [
            {"name": "home", "emptyDir": {"medium": SCRATCH_MEDIUM, "sizeLimit": spec.scratch_size}},
            {"name": "tmp", "emptyDir": {"medium": SCRATCH_MEDIUM, "sizeLimit": spec.tmp_size}},
            {"name": "agent", "configMap": {"name": CONFIG_MAP_NAME, "defaultMode": 0o444}},
        ],
    }
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.runtime_class_name
    meta = _meta(ident, spec.name)
    meta["labels"][SANDBOX_POD_LABEL[0]] = SANDBOX_POD_LABEL[1]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


@dataclass(frozen=True)
class SandboxObjects:
    """Everything one sandbox is made of, in creation order (the pod last)."""

    namespace: dict[str, Any]
    role_binding: dict[str, Any] | None
    resource_quota: dict[str, Any]
    limit_range: dict[str, Any]
    network_policy: dict[str, Any]
    config_map: dict[str, Any]
    lease: dict[str, Any]
    pod: dict[str, Any]
    egress_policy: dict[str, Any] | None = None

    def in_order(self) -> list[dict[str, Any]]:
        objects = [
            self.namespace,
            self.role_binding,
            self.resource_quota,
            self.limit_range,
            self.network_policy,
            self.egress_policy,
            self.config_map,
            self.lease,
            self.pod,
        ]
        return [o for o in objects if o is not None]


def sandbox_objects(
    ident: SandboxIdentity,
    quota: QuotaSpec,
    limits: LimitRangeSpec,
    pod_spec: PodSpec,
    agent_source: str,
    lease_seconds: int,
    renew_time: str,
    subject: Subject | None,
    cluster_role: str,
    egress: EgressSpec | None = None,
    relay_source: str = "",
) -> SandboxObjects:
    """All objects of one sandbox; no RoleBinding when ``subject`` or ``cluster_role`` is empty;
    the egress annotations and policy only with ``egress``; ``relay_source`` for a ``relay_file``."""
    files = {pod_spec.agent_file: agent_source}
    if pod_spec.relay_file:
        files[pod_spec.relay_file] = relay_source
    return SandboxObjects(
        namespace=namespace(ident, egress),
        role_binding=role_binding(ident, subject, cluster_role) if subject and cluster_role else None,
        resource_quota=resource_quota(ident, quota),
        limit_range=limit_range(ident, limits),
        network_policy=network_policy(ident),
        config_map=agent_config_map(ident, files),
        lease=heartbeat_lease(ident, lease_seconds, renew_time),
        pod=pod(ident, pod_spec),
        egress_policy=egress_network_policy(ident) if egress is not None else None,
    )
