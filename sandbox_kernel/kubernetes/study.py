"""``%sandbox whoami | can-i | rules | dry-run`` (and the lab's topics): the kernel's own identity, asked of the API server.

For the study notebooks 05 (RBAC and admission) and 06 (troubleshooting lab, ``lab.py``). Each
answer is the API server's, to a request made with the kernel's credentials:

- ``whoami``: a SelfSubjectReview (``kubectl auth whoami``);
- ``can-i VERB RESOURCE [NAME] [-n NAMESPACE]``: a SelfSubjectAccessReview (``kubectl auth can-i``),
  RBAC's answer alone;
- ``rules [NAMESPACE]``: a SelfSubjectRulesReview (``kubectl auth can-i --list``), RBAC alone;
- ``dry-run`` with manifests as the rest of the cell, or ``dry-run delete KIND NAME [-n NAMESPACE]``:
  the request sent with ``dryRun=All`` (``kubectl --dry-run=server``), so it goes through RBAC
  *and* admission (the ValidatingAdmissionPolicies of k8s/rbac/admission-policy.yaml, Pod
  Security, quota) and nothing is stored or deleted.

None of these changes the cluster: a notebook's magics read with the kernel's identity, and the
lab's pods (``lab.py``) go through the same admission as the sandbox's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote

import yaml

from ..config import Limits
from ..errors import ConfigError, SandboxError
from ..languages import Language
from . import lab, manifests
from .api import KubernetesApi
from .settings import KubernetesSandbox

MAX_BODY = 64 * 1024
"""Most characters of manifests a ``dry-run`` cell may hold."""
MAX_DOCUMENTS = 10

VERBS = (
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "bind",
    "escalate",
    "impersonate",
    "use",
    "approve",
    "sign",
    "*",
)
GROUPS = {
    "rolebindings": "rbac.authorization.k8s.io",
    "roles": "rbac.authorization.k8s.io",
    "clusterroles": "rbac.authorization.k8s.io",
    "clusterrolebindings": "rbac.authorization.k8s.io",
    "networkpolicies": "networking.k8s.io",
    "leases": "coordination.k8s.io",
    "deployments": "apps",
    "replicasets": "apps",
    "jobs": "batch",
    "cronjobs": "batch",
    "validatingadmissionpolicies": "admissionregistration.k8s.io",
    "sandboxclaims": "sandbox-kernel.dev",
}
"""API group of the resources a learner asks about by their bare name (others: ``NAME.GROUP``, or core)."""
CLUSTER_SCOPED = {
    "namespaces",
    "nodes",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "validatingadmissionpolicies",
    "customresourcedefinitions",
    "storageclasses",
}

KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("v1", "namespaces", False),
    "Pod": ("v1", "pods", True),
    "ConfigMap": ("v1", "configmaps", True),
    "Secret": ("v1", "secrets", True),
    "Service": ("v1", "services", True),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "ResourceQuota": ("v1", "resourcequotas", True),
    "LimitRange": ("v1", "limitranges", True),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Deployment": ("apps/v1", "deployments", True),
    "Job": ("batch/v1", "jobs", True),
    "Lease": ("coordination.k8s.io/v1", "leases", True),
}
"""What ``dry-run`` can send: kind -> (its apiVersion, plural, whether namespaced)."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_RESOURCE = re.compile(r"^([a-z*]+)(/[a-z]+)?(\.[a-z0-9.-]+)?$")
_API_VERSION = re.compile(r"^([a-z0-9.-]+/)?v[0-9]+((alpha|beta)[0-9]+)?$")


@dataclass(frozen=True)
class Context:
    """What the kernel's session knows that the answers need."""

    ident: manifests.SandboxIdentity
    pod_name: str | None
    pod_spec: manifests.PodSpec
    """What the kernel's own pod is made of: the lab's broken pods start from it."""
    settings: KubernetesSandbox


class _Session(Protocol):
    """What :class:`ClusterQuestions` reads of the session it is part of."""

    _ident: manifests.SandboxIdentity | None
    _api: KubernetesApi | None
    _pod_name: str | None
    settings: KubernetesSandbox
    language: Language
    limits: Limits


class ClusterQuestions:
    """The part of :class:`~.session.KubernetesSandboxSession` that answers these topics."""

    def inspect_cluster(self, topic: str, words: list[str], body: str) -> str:
        session = cast(_Session, self)
        if session._ident is None or session._api is None:
            return "No sandbox namespace exists yet (the sandbox has not started, or it was deleted)."
        spec = session.settings.pod_spec(session.language, session.limits, session._pod_name or "sandbox")
        return answer(
            topic, words, body, session._api, Context(session._ident, session._pod_name, spec, session.settings)
        )


def answer(topic: str, words: list[str], body: str, api: KubernetesApi, ctx: Context) -> str:
    """The text of ``%sandbox TOPIC WORDS...`` for a topic of :data:`~sandbox_kernel.session.CLUSTER_TOPICS`."""
    if topic == "whoami":
        _no_more(topic, words, 0, "%sandbox whoami")
        return whoami(api)
    if topic == "can-i":
        return can_i(api, ctx.ident.namespace, words)
    if topic == "rules":
        namespace, rest = _namespace_option(topic, words, ctx.ident.namespace)
        _no_more(topic, rest, 1, "%sandbox rules [NAMESPACE]")
        return rules(api, rest[0] if rest else namespace)
    if topic == "dry-run":
        return dry_run(api, ctx.ident.namespace, words, body)
    return lab.answer(topic, words, api, ctx.ident, ctx.pod_name, ctx.pod_spec, ctx.settings)


def whoami(api: KubernetesApi) -> str:
    review = api.request(
        "ask who the kernel is (SelfSubjectReview)",
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    info = review.get("status", {}).get("userInfo", {})
    return _rows(
        [("username", str(info.get("username", ""))), ("groups", ", ".join(map(str, info.get("groups") or [])))]
    )


def can_i(api: KubernetesApi, own_namespace: str, words: list[str]) -> str:
    usage = "%sandbox can-i VERB RESOURCE[/SUBRESOURCE][.GROUP] [NAME] [-n NAMESPACE]"
    namespace, rest = _namespace_option("can-i", words, own_namespace)
    if len(rest) not in (2, 3) or rest[0] not in VERBS or not _RESOURCE.match(rest[1]):
        raise ConfigError(
            "%sandbox can-i",
            f"usage: {usage}; VERB one of {', '.join(VERBS)}",
            hint="For example: %sandbox can-i create pods -n default",
        )
    verb, resource_word = rest[0], rest[1]
    found = _RESOURCE.match(resource_word)
    assert found is not None
    resource, sub, group = found.group(1), (found.group(2) or "")[1:], (found.group(3) or "")[1:]
    group = group or GROUPS.get(resource, "")
    attributes: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if sub:
        attributes["subresource"] = sub
    if len(rest) == 3:
        attributes["name"] = _checked_name("can-i", rest[2])
    where = ""
    if resource not in CLUSTER_SCOPED:
        attributes["namespace"] = namespace
        where = f" in namespace {namespace}"
    review = api.request(
        f"ask whether the kernel may {verb} {resource_word} (SelfSubjectAccessReview)",
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        },
    )
    status = review.get("status", {})
    text = f"{verb} {resource_word}{' ' + rest[2] if len(rest) == 3 else ''}{where}: {'yes' if status.get('allowed') else 'no'}"
    for key in ("reason", "evaluationError"):
        if status.get(key):
            text += f"\n  {status[key]}"
    return text


def rules(api: KubernetesApi, namespace: str) -> str:
    _checked_name("rules", namespace)
    review = api.request(
        f"ask what the kernel may do in namespace {namespace} (SelfSubjectRulesReview)",
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        },
    )
    status = review.get("status", {})
    table = [("RESOURCES", "RESOURCE NAMES", "VERBS")]
    for rule in status.get("resourceRules") or []:
        groups = [g for g in rule.get("apiGroups") or [""]]
        for resource in rule.get("resources") or []:
            for group in groups:
                table.append(
                    (
                        resource + (f".{group}" if group else ""),
                        "[" + " ".join(rule.get("resourceNames") or []) + "]",
                        "[" + " ".join(rule.get("verbs") or []) + "]",
                    )
                )
    table[1:] = sorted(set(table[1:]))
    urls = sorted({u for rule in status.get("nonResourceRules") or [] for u in rule.get("nonResourceURLs") or []})
    text = f"In namespace {namespace} (RBAC's rules only; admission may still refuse):\n" + lab.columns(table)
    text += f"\nnon-resource URLs (get): {' '.join(urls) or 'none'}"
    if status.get("incomplete"):
        text += f"\n(incomplete: {status.get('evaluationError') or 'some rules could not be listed'})"
    return text


def dry_run(api: KubernetesApi, own_namespace: str, words: list[str], body: str) -> str:
    """``dryRun=All`` requests: create what ``body`` holds, or ``delete KIND NAME``."""
    if words:
        namespace, rest = _namespace_option("dry-run", words, own_namespace)
        if len(rest) != 3 or rest[0] != "delete":
            raise ConfigError(
                "%sandbox dry-run",
                "usage: '%sandbox dry-run delete KIND NAME [-n NAMESPACE]', or "
                "'%sandbox dry-run' as the first line of a cell whose rest is YAML manifests",
            )
        kind = _kind(rest[1])
        return _send(api, "DELETE", kind, _checked_name("dry-run", rest[2]), namespace, None)
    if len(body) > MAX_BODY:
        raise ConfigError("%sandbox dry-run", f"the manifests are {len(body):,} characters; at most {MAX_BODY:,}")
    try:
        documents = [d for d in yaml.safe_load_all(body) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError("%sandbox dry-run", f"the rest of the cell is not YAML: {exc}") from None
    if not documents:
        raise ConfigError(
            "%sandbox dry-run", "no manifest: put YAML (apiVersion, kind, metadata, ...) below the magic line"
        )
    if len(documents) > MAX_DOCUMENTS:
        raise ConfigError("%sandbox dry-run", f"{len(documents)} manifests; at most {MAX_DOCUMENTS}")
    answers = []
    for doc in documents:
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("metadata"), dict)
            or not isinstance(doc["metadata"].get("name"), str)
        ):
            raise ConfigError("%sandbox dry-run", "each manifest needs kind, apiVersion and metadata.name")
        kind = _kind(str(doc.get("kind", "")))
        if not _API_VERSION.match(str(doc.get("apiVersion", ""))):
            raise ConfigError(
                "%sandbox dry-run", f"{kind} {doc['metadata']['name']}: apiVersion {doc.get('apiVersion')!r} is not one"
            )
        namespace = str(doc["metadata"].get("namespace") or own_namespace)
        answers.append(_send(api, "POST", kind, _checked_name("dry-run", doc["metadata"]["name"]), namespace, doc))
    return "\n".join(answers)


def _send(api: KubernetesApi, method: str, kind: str, name: str, namespace: str, doc: dict[str, Any] | None) -> str:
    default_version, plural, namespaced = KINDS[kind]
    version = str(doc.get("apiVersion")) if doc else default_version
    path = "/api/v1" if version == "v1" else f"/apis/{version}"
    if namespaced:
        path += f"/namespaces/{quote(_checked_name('dry-run', namespace), safe='')}"
    path += f"/{plural}" + (f"/{quote(name, safe='')}" if method == "DELETE" else "")
    what = f"{kind.lower()}/{name}" + (f" in namespace {namespace}" if namespaced else "")
    body = doc if doc is not None else {"apiVersion": "v1", "kind": "DeleteOptions"}
    try:
        api.request(f"{'create' if doc else 'delete'} {what} (server dry run)", method, path, [("dryRun", "All")], body)
    except SandboxError as exc:
        status = exc.api_status
        if status is None:
            raise
        return f"{what}: Error from server ({status.reason or status.code}): {status.message}"
    return f"{what} {'created' if doc else 'deleted'} (server dry run: admitted, nothing stored)"


def _kind(word: str) -> str:
    for kind, (_version, plural, _namespaced) in KINDS.items():
        if word in (kind, kind.lower(), plural):
            return kind
    raise ConfigError("%sandbox dry-run", f"kind {word!r} is not one dry-run sends; it knows {', '.join(KINDS)}")


def _namespace_option(topic: str, words: list[str], default: str) -> tuple[str, list[str]]:
    """``-n NAMESPACE`` / ``--namespace[=]NAMESPACE`` out of ``words``."""
    namespace, rest, i = default, [], 0
    while i < len(words):
        word = words[i]
        if word in ("-n", "--namespace"):
            if i + 1 == len(words):
                raise ConfigError(f"%sandbox {topic}", f"{word} needs a namespace")
            namespace, i = words[i + 1], i + 2
            continue
        if word.startswith("--namespace="):
            namespace = word.split("=", 1)[1]
        else:
            rest.append(word)
        i += 1
    return _checked_name(topic, namespace), rest


def _checked_name(topic: str, name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"%sandbox {topic}", f"{name[:80]!r} is not a Kubernetes object name")
    return name


def _no_more(topic: str, words: list[str], most: int, usage: str) -> None:
    if len(words) > most:
        raise ConfigError(f"%sandbox {topic}", f"usage: {usage}")


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
