"""Attacks on the cluster by the kernels' own identity, and the admission policies that stop them.

Every request here is made AS the least-privilege service account of k8s/rbac/ (a token minted
by tests/cluster/kubeconfig-for, the identity a JupyterLab user with a terminal, or code that
escaped into the browser, would hold), never as an admin; admin rights are used only to set up
victims and to look at the result. Each attack asserts the API server's refusal: its HTTP status
and the policy's (or Pod Security's, or RBAC's) own words, so a policy that stopped refusing, or
refused for another reason, fails the test. Issue 12, breaches 1, 2 and 4.

The policies are k8s/rbac/admission-policy.yaml, installed with the RBAC by `kubectl apply -k
k8s/rbac/` (the sa_kubeconfig fixture does exactly that).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fixtures_kubernetes import REPO, SA_NAME, SA_NAMESPACE, SA_USER, wait_until
from sandbox_kernel.kubernetes import manifests

pytestmark = pytest.mark.cluster

NS_POLICY = "sandbox-kernel-namespaces"
RB_POLICY = "sandbox-kernel-rolebindings"
NP_POLICY = "sandbox-kernel-networkpolicies"
POD_POLICIES = ("sandbox-kernel-pods-deny-all", "sandbox-kernel-pods-quota", "sandbox-kernel-pods-limits")
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
PSA_VERSION = "pod-security.kubernetes.io/enforce-version"
PAUSE = "localhost/pause:3.10"
PYTHON_IMAGE = "localhost/sandbox-python:3.11"
CMD_POLICY = "sandbox-kernel-pods-command"


# ---------------------------------------------------------------------------------------------
# Helpers.


def message_of(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def refused(call: Callable[[], Any], status: int, *texts: str, settle: float = 10.0) -> str:
    """``call`` must fail with ``status`` and a message containing every one of ``texts``.

    An RBAC "cannot ..." 403 right after the attacker created its RoleBinding only means the
    authorizer's cache has not seen it yet: retried for ``settle`` seconds, unless it is what
    is expected.
    """
    deadline = time.monotonic() + settle
    while True:
        try:
            result = call()
        except ApiException as exc:
            message = message_of(exc)
            rbac_lag = exc.status == 403 and "cannot" in message and not any("cannot" in t for t in texts)
            if rbac_lag and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            assert exc.status == status, f"expected HTTP {status}, got {exc.status}: {message}"
            for text in texts:
                assert text in message, f"{text!r} not in the refusal: {message}"
            return message
        raise AssertionError(f"the service account was allowed to do it: {result!r}"[:2000])


def allowed(call: Callable[[], Any], settle: float = 10.0) -> Any:
    """``call`` succeeds (after the RBAC cache caught up with a new RoleBinding)."""
    deadline = time.monotonic() + settle
    while True:
        try:
            return call()
        except ApiException as exc:
            if exc.status == 403 and "cannot" in message_of(exc) and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise


def sandbox_namespace(name: str, **labels: str | None) -> dict[str, Any]:
    """A namespace as the backend makes it (manifests.namespace), with labels changed or dropped."""
    body = manifests.namespace(
        manifests.SandboxIdentity(
            namespace=name,
            kernel_id=f"attack-{name}",
            language="python",
            owner=SA_NAME,
            user=SA_USER,
            created="2026-01-01T00:00:00Z",
        )
    )
    for key, value in labels.items():
        key = {"enforce": PSA_ENFORCE, "version": PSA_VERSION}.get(key, key)
        if value is None:
            body["metadata"]["labels"].pop(key, None)
        else:
            body["metadata"]["labels"][key] = value
    return body


def self_binding(role: str = "sandbox-kernel-sandbox") -> dict[str, Any]:
    return {
        "metadata": {"name": "sandbox-kernel"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": SA_NAMESPACE}],
    }


def restricted_pod(namespace: str, name: str = "attacker") -> dict[str, Any]:
    """The pod the backend itself would create (manifests.pod): Pod Security "restricted" and the
    pod-command policy admit it, so only the policy under test can stop it."""
    ident = manifests.SandboxIdentity(
        namespace=namespace,
        kernel_id="attack",
        language="python",
        owner=SA_NAME,
        user=SA_USER,
        created="2026-01-01T00:00:00Z",
    )
    return manifests.pod(
        ident, manifests.PodSpec(name=name, image=PYTHON_IMAGE, interpreter="python3", agent_file="python_agent.py")
    )


def root_on_the_node_pod(name: str = "rootme") -> dict[str, Any]:
    """Breach 1's pod: privileged, hostPID, the node's / mounted: root on the node if admitted."""
    return {
        "metadata": {"name": name},
        "spec": {
            "hostPID": True,
            "hostNetwork": True,
            "containers": [
                {
                    "name": "c",
                    "image": PAUSE,
                    "securityContext": {"privileged": True, "runAsUser": 0},
                    "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                }
            ],
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        },
    }


DENY_ALL = {"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
QUOTA = {
    "metadata": {"name": "sandbox-quota"},
    "spec": {
        "hard": {
            "requests.cpu": "500m",
            "requests.memory": "256Mi",
            "limits.cpu": "1",
            "limits.memory": "512Mi",
            "pods": "3",
        }
    },
}
LIMITS = {
    "metadata": {"name": "sandbox-limits"},
    "spec": {
        "limits": [
            {
                "type": "Container",
                "max": {"cpu": "500m", "memory": "256Mi"},
                "default": {"cpu": "250m", "memory": "128Mi"},
                "defaultRequest": {"cpu": "100m", "memory": "64Mi"},
            }
        ]
    },
}


class Attacker:
    """The service account's API, and what it created (deleted by an admin afterwards)."""

    def __init__(self, api: client.ApiClient, admin: client.CoreV1Api) -> None:
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.admin = admin
        self.created: list[str] = []

    def new_name(self) -> str:
        return f"sandbox-e2e{uuid.uuid4().hex[:5]}"

    def namespace(self, **labels: str | None) -> str:
        """A compliant sandbox namespace of its own, with the sandbox role bound to itself."""
        name = self.new_name()
        self.core.create_namespace(sandbox_namespace(name, **labels))
        self.created.append(name)
        self.rbac.create_namespaced_role_binding(name, self_binding())
        return name

    def cleanup(self) -> None:
        for name in self.created:
            try:
                self.admin.delete_namespace(name, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def attacker(sa_api: client.ApiClient, core_v1: client.CoreV1Api) -> Iterator[Attacker]:
    who = client.AuthenticationV1Api(sa_api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert who.status.user_info.username == SA_USER, "the attacks must run as the service account, not an admin"
    a = Attacker(sa_api, core_v1)
    yield a
    a.cleanup()


@pytest.fixture
def namespace_patch_rights(k8s_api: client.ApiClient, sa_api: client.ApiClient) -> Iterator[Callable[[], None]]:
    """Give the SA `patch namespaces` for one test (as deployed RBAC refuses it before admission
    runs): the policy must hold on its own should RBAC ever be widened. Yields a wait for the
    grant to reach the authorizer."""
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    name = f"e2e-attack-namespace-patcher-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(
        {"metadata": {"name": name}, "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["patch"]}]}
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": SA_NAMESPACE}],
        }
    )

    def granted() -> None:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": "patch", "resource": "namespaces"}},
        }
        wait_until(
            lambda: client.AuthorizationV1Api(sa_api).create_self_subject_access_review(review).status.allowed,
            30,
            what="the temporary patch grant",
        )

    try:
        yield granted
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def by(policy: str) -> str:
    return f"ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request"


PSA_REFUSAL = (
    "sandbox-kernel may only create sandbox namespaces with Pod Security "
    "pod-security.kubernetes.io/enforce=restricted and pod-security.kubernetes.io/enforce-version=latest"
)


# ---------------------------------------------------------------------------------------------
# Breach 1: a sandbox namespace that is not Pod Security "restricted".


@pytest.mark.parametrize(
    "labels, shown",
    [
        ({"enforce": "privileged"}, "enforce=privileged, enforce-version=latest"),
        (
            {
                "enforce": None,
                "version": None,
                "pod-security.kubernetes.io/warn": None,
                "pod-security.kubernetes.io/audit": None,
            },
            "enforce=(none), enforce-version=(none)",
        ),
        ({"enforce": "baseline"}, "enforce=baseline, enforce-version=latest"),
        ({"version": "v1.23"}, "enforce=restricted, enforce-version=v1.23"),
        ({"version": None}, "enforce=restricted, enforce-version=(none)"),
    ],
    ids=["privileged", "no-pod-security-labels", "baseline", "pinned-old-version", "no-version"],
)
def test_a_sandbox_namespace_that_is_not_restricted_latest_cannot_be_created(
    attacker: Attacker, core_v1: client.CoreV1Api, labels: dict[str, str | None], shown: str
) -> None:
    name = attacker.new_name()
    body = sandbox_namespace(name, **labels)
    assert body["metadata"]["labels"][manifests.LABEL_MANAGED_BY] == manifests.MANAGED_BY  # looks like a sandbox
    message = refused(
        lambda: attacker.core.create_namespace(body), 403, by(NS_POLICY), PSA_REFUSAL, f"{name} would have {shown}"
    )
    assert message
    with pytest.raises(ApiException) as gone:
        core_v1.read_namespace(name)
    assert gone.value.status == 404


def test_the_backends_own_namespace_is_admitted(attacker: Attacker, core_v1: client.CoreV1Api) -> None:
    """The positive control: what manifests.namespace builds passes every policy unchanged."""
    name = attacker.namespace()
    labels = core_v1.read_namespace(name).metadata.labels
    assert labels[PSA_ENFORCE] == "restricted" and labels[PSA_VERSION] == "latest"


def test_pod_security_cannot_be_removed_or_weakened_on_a_sandbox_namespace(
    attacker: Attacker, core_v1: client.CoreV1Api, namespace_patch_rights: Callable[[], None]
) -> None:
    name = attacker.namespace()
    namespace_patch_rights()
    keep = "sandbox-kernel may only keep sandbox namespaces with Pod Security"
    for patch, shown in [
        ({PSA_ENFORCE: None}, "enforce=(none), enforce-version=latest"),
        ({PSA_ENFORCE: "privileged"}, "enforce=privileged, enforce-version=latest"),
        ({PSA_ENFORCE: "baseline"}, "enforce=baseline, enforce-version=latest"),
        ({PSA_VERSION: None}, "enforce=restricted, enforce-version=(none)"),
        ({PSA_VERSION: "v1.0"}, "enforce=restricted, enforce-version=v1.0"),
    ]:
        refused(
            lambda: attacker.core.patch_namespace(name, {"metadata": {"labels": patch}}),
            403,
            by(NS_POLICY),
            keep,
            f"{name} would have {shown}",
        )
    # Nor may it take over the namespace for another identity (the RoleBinding policy trusts this).
    refused(
        lambda: attacker.core.patch_namespace(
            name, {"metadata": {"annotations": {manifests.ANNOTATION_USER: "someone-else"}}}
        ),
        403,
        by(NS_POLICY),
        "may not change the sandbox-kernel/user annotation",
    )
    # The change a kernel may make is allowed (the refusals above are about Pod Security, not any
    # patch): its own sandbox's egress lists (controlled egress, %sandbox deny).
    attacker.core.patch_namespace(
        name, {"metadata": {"annotations": {"sandbox-kernel/egress-deny": "example.com:443"}}}
    )
    labels = core_v1.read_namespace(name).metadata.labels
    assert labels[PSA_ENFORCE] == "restricted" and labels[PSA_VERSION] == "latest"


def test_as_deployed_the_policy_refuses_weakening_pod_security(attacker: Attacker) -> None:
    # RBAC lets the kernel patch namespaces (for controlled egress); the namespace policy refuses.
    name = attacker.namespace()
    refused(
        lambda: attacker.core.patch_namespace(name, {"metadata": {"labels": {PSA_ENFORCE: "privileged"}}}),
        403,
        by(NS_POLICY),
        "sandbox-kernel may only keep sandbox namespaces with Pod Security",
    )


def test_no_route_to_a_privileged_host_pid_pod(attacker: Attacker, core_v1: client.CoreV1Api) -> None:
    """Breach 1 end to end: every place the identity could put a root-on-the-node pod refuses it."""
    # 1. Its own sandbox namespace, complete with policies: Pod Security "restricted" refuses it.
    mine = attacker.namespace()
    allowed(lambda: attacker.net.create_namespaced_network_policy(mine, DENY_ALL))
    attacker.core.create_namespaced_resource_quota(mine, QUOTA)
    attacker.core.create_namespaced_limit_range(mine, LIMITS)
    refused(
        lambda: attacker.core.create_namespaced_pod(mine, root_on_the_node_pod()),
        403,
        'violates PodSecurity "restricted:latest"',
        "host namespaces (hostNetwork=true, hostPID=true)",
        "must not set securityContext.privileged=true",
        'restricted volume type "hostPath"',
    )
    # 2. A privileged (or unlabelled) namespace to put it in: cannot be made (see above) ...
    refused(
        lambda: attacker.core.create_namespace(sandbox_namespace(attacker.new_name(), enforce="privileged")),
        403,
        by(NS_POLICY),
        PSA_REFUSAL,
    )
    # 3. ... nor can it get the right to create pods anywhere else.
    for ns in ("default", "kube-system", SA_NAMESPACE):
        refused(
            lambda: attacker.core.create_namespaced_pod(ns, root_on_the_node_pod()),
            403,
            f'User "{SA_USER}" cannot create resource "pods"',
        )
        refused(
            lambda: attacker.rbac.create_namespaced_role_binding(ns, self_binding()),
            403,
            by(RB_POLICY),
            f"may only create RoleBindings in sandbox namespaces it created; {ns} is not one",
        )
    # 4. Nor by binding a stronger role in its own namespace.
    refused(
        lambda: attacker.rbac.create_namespaced_role_binding(
            mine, {**self_binding("cluster-admin"), "metadata": {"name": "x"}}
        ),
        403,
        "is attempting to grant RBAC permissions not currently held",
    )
    assert not [p for p in core_v1.list_namespaced_pod(mine).items]


def test_binding_the_sandbox_role_outside_its_sandboxes_is_refused(
    attacker: Attacker, namespace_factory: Callable[..., str]
) -> None:
    # Breach 4: `default`, a namespace an admin made, and one that looks like a sandbox but is
    # not this identity's (no sandbox-kernel/user annotation naming it).
    lookalike = namespace_factory(
        labels={manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY, PSA_ENFORCE: "restricted", PSA_VERSION: "latest"},
        prefix="sandbox",
    )
    for ns in ("default", namespace_factory(), lookalike):
        refused(
            lambda: attacker.rbac.create_namespaced_role_binding(ns, self_binding()),
            403,
            by(RB_POLICY),
            f"may only create RoleBindings in sandbox namespaces it created; {ns} is not one",
        )


def test_deleting_default_or_an_admins_namespace_is_refused(
    attacker: Attacker, core_v1: client.CoreV1Api, namespace_factory: Callable[..., str]
) -> None:
    victim = namespace_factory()
    refused(
        lambda: attacker.core.delete_namespace(victim),
        403,
        by(NS_POLICY),
        f"sandbox-kernel may only delete its sandbox namespaces (sandbox-* labelled "
        f"app.kubernetes.io/managed-by=sandbox-kernel); {victim} is not one",
    )
    for name in ("kube-node-lease", SA_NAMESPACE):
        refused(lambda: attacker.core.delete_namespace(name, dry_run="All"), 403, by(NS_POLICY), f"{name} is not one")
    # `default` and `kube-system`: NamespaceLifecycle refuses before any policy; still a 403.
    for name in ("default", "kube-system"):
        refused(lambda: attacker.core.delete_namespace(name, dry_run="All"), 403, "may not be deleted")
    for name in (victim, "default", "kube-system", "kube-node-lease", SA_NAMESPACE):
        assert core_v1.read_namespace(name).metadata.deletion_timestamp is None, name


def test_kubectl_apply_of_k8s_rbac_cannot_leave_out_the_policies() -> None:
    """Breach 4's cause: the README's step installed RBAC without the policy. Now the policy is
    part of k8s/rbac/ and its kustomization lists it before the RBAC that needs it."""
    import yaml

    kustomization = yaml.safe_load((REPO / "k8s" / "rbac" / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert "admission-policy.yaml" in resources
    assert resources.index("admission-policy.yaml") < resources.index("clusterrolebinding.yaml")
    assert kustomization["sortOptions"] == {"order": "fifo"}
    assert "rbac" in yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())["resources"]
    readme = (REPO / "README.md").read_text()
    assert "kubectl apply -k k8s/rbac/" in readme and "kubectl apply -f k8s/rbac/" not in readme


# ---------------------------------------------------------------------------------------------
# Breach 2: pods in a sandbox namespace without its deny-all policy, quota and limit range.


NO_PARAMS = "failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"


def test_no_pod_before_the_deny_all_policy_quota_and_limit_range_exist(
    attacker: Attacker, core_v1: client.CoreV1Api
) -> None:
    ns = attacker.namespace()
    deny_all, quota, limits = POD_POLICIES

    def refused_for_lack_of(*policies: str) -> None:
        # The API server evaluates the policies in no fixed order: the refusal names one of
        # those whose object is missing. One whose object was created a moment ago may still
        # refuse while the API server's cache of policy parameters catches up (seen in CI:
        # the quota's policy, just after the quota was made); after 10 s that is a failure.
        deadline = time.monotonic() + 10
        while True:
            message = refused(lambda: attacker.core.create_namespaced_pod(ns, restricted_pod(ns)), 422, NO_PARAMS)
            if any(by(p) in message for p in policies) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert any(by(p) in message for p in policies), message

    refused_for_lack_of(deny_all, quota, limits)
    allowed(lambda: attacker.net.create_namespaced_network_policy(ns, DENY_ALL))
    refused_for_lack_of(quota, limits)
    attacker.core.create_namespaced_resource_quota(ns, QUOTA)
    refused_for_lack_of(limits)
    assert core_v1.list_namespaced_pod(ns).items == []
    attacker.core.create_namespaced_limit_range(ns, LIMITS)
    # All three in place: the same pod is admitted (so the refusals above were about them).
    wait_until(lambda: _created(attacker, ns), 10, what="the pod to be admitted")


def _created(attacker: Attacker, ns: str) -> bool:
    try:
        attacker.core.create_namespaced_pod(ns, restricted_pod(ns), dry_run="All")
        return True
    except ApiException as exc:
        if exc.status == 422 and "no params found" in message_of(exc):
            return False  # the API server's cache of the new LimitRange, a moment behind
        raise


def test_policies_cannot_be_deleted_or_changed_once_made(attacker: Attacker) -> None:
    ns = attacker.namespace()
    allowed(lambda: attacker.net.create_namespaced_network_policy(ns, DENY_ALL))
    attacker.core.create_namespaced_resource_quota(ns, QUOTA)
    attacker.core.create_namespaced_limit_range(ns, LIMITS)
    cannot = f'User "{SA_USER}" cannot'
    refused(lambda: attacker.net.delete_namespaced_network_policy("deny-all", ns), 403, cannot, '"networkpolicies"')
    refused(
        lambda: attacker.net.patch_namespaced_network_policy("deny-all", ns, {"spec": {"egress": [{}]}}), 403, cannot
    )
    refused(
        lambda: attacker.core.delete_namespaced_resource_quota("sandbox-quota", ns), 403, cannot, '"resourcequotas"'
    )
    refused(
        lambda: attacker.core.patch_namespaced_resource_quota(
            "sandbox-quota", ns, {"spec": {"hard": {"pods": "1000"}}}
        ),
        403,
        cannot,
    )
    refused(lambda: attacker.core.delete_namespaced_limit_range("sandbox-limits", ns), 403, cannot, '"limitranges"')
    refused(lambda: attacker.core.delete_collection_namespaced_limit_range(ns), 403, cannot)


def test_no_network_policy_that_allows_traffic_can_be_added(attacker: Attacker) -> None:
    """NetworkPolicies add up: one "allow" policy next to deny-all would open the sandbox."""
    ns = attacker.namespace()
    allowed(lambda: attacker.net.create_namespaced_network_policy(ns, DENY_ALL))
    allow_all = {
        "metadata": {"name": "allow-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]},
    }
    refused(
        lambda: attacker.net.create_namespaced_network_policy(ns, allow_all),
        403,
        by(NP_POLICY),
        "sandbox-kernel may only create the NetworkPolicies deny-all and egress-proxy, not allow-all",
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"podSelector": {}, "policyTypes": ["Ingress"]},
        {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": [{}]},
        {"podSelector": {"matchLabels": {"nobody": "here"}}, "policyTypes": ["Ingress", "Egress"]},
    ],
    ids=["ingress-only", "egress-allowed", "selects-no-pod"],
)
def test_a_deny_all_that_does_not_deny_all_cannot_be_made(attacker: Attacker, spec: dict[str, Any]) -> None:
    ns = attacker.namespace()
    refused(
        lambda: attacker.net.create_namespaced_network_policy(ns, {"metadata": {"name": "deny-all"}, "spec": spec}),
        403,
        by(NP_POLICY),
        "may only create a deny-all NetworkPolicy: podSelector {} (every pod)",
    )


@pytest.mark.parametrize(
    "quota, limits, policy, text",
    [
        (
            {"hard": {**QUOTA["spec"]["hard"], "limits.memory": "64Gi"}},
            LIMITS["spec"],
            "sandbox-kernel-pods-quota",
            "ResourceQuota sandbox-quota caps",
        ),
        (
            {"hard": {k: v for k, v in QUOTA["spec"]["hard"].items() if k != "pods"}},
            LIMITS["spec"],
            "sandbox-kernel-pods-quota",
            "ResourceQuota sandbox-quota caps",
        ),
        (
            {"hard": QUOTA["spec"]["hard"], "scopes": ["Terminating"]},
            LIMITS["spec"],
            "sandbox-kernel-pods-quota",
            "applies to every pod (no scopes)",
        ),
        (
            QUOTA["spec"],
            {"limits": [{"type": "Container", "max": {"cpu": "64", "memory": "256Mi"}}]},
            "sandbox-kernel-pods-limits",
            "LimitRange sandbox-limits caps each container",
        ),
        (
            QUOTA["spec"],
            {"limits": [{"type": "Pod", "max": {"cpu": "1", "memory": "256Mi"}}]},
            "sandbox-kernel-pods-limits",
            "LimitRange sandbox-limits caps each container",
        ),
    ],
    ids=["quota-over-bounds", "quota-without-pods", "quota-with-scope", "limits-over-bounds", "no-container-limits"],
)
def test_no_pod_under_a_quota_or_limit_range_that_does_not_cap_it(
    attacker: Attacker, quota: dict[str, Any], limits: dict[str, Any], policy: str, text: str
) -> None:
    ns = attacker.namespace()
    allowed(lambda: attacker.net.create_namespaced_network_policy(ns, DENY_ALL))
    attacker.core.create_namespaced_resource_quota(ns, {"metadata": {"name": "sandbox-quota"}, "spec": quota})
    attacker.core.create_namespaced_limit_range(ns, {"metadata": {"name": "sandbox-limits"}, "spec": limits})
    refused(lambda: attacker.core.create_namespaced_pod(ns, restricted_pod(ns)), 403, by(policy), text)


# ---------------------------------------------------------------------------------------------
# The moment before the network plugin programs a new pod: no code of the attacker's may run then.


def _complete_sandbox(attacker: Attacker) -> str:
    ns = attacker.namespace()
    allowed(lambda: attacker.net.create_namespaced_network_policy(ns, DENY_ALL))
    attacker.core.create_namespaced_resource_quota(ns, QUOTA)
    attacker.core.create_namespaced_limit_range(ns, LIMITS)
    wait_until(lambda: _created(attacker, ns), 10, what="the backend's own pod to be admitted")
    return ns


GUARD_REFUSAL = "sandbox-kernel may only create pods that run the sandbox agent behind its network policy guard"


def _with_command(pod: dict[str, Any], command: list[str]) -> dict[str, Any]:
    pod["spec"]["containers"][0]["command"] = command
    return pod


def test_a_pod_must_run_the_policy_guard_before_anything_else(attacker: Attacker) -> None:
    """Measured on the test cluster: a pod of the attacker's own making, in a complete sandbox,
    connected to the API server within 0.1 s of starting, and that connection still answered
    after the deny-all policy was programmed. So its code may not run before the guard."""
    ns = _complete_sandbox(attacker)
    good = restricted_pod(ns)["spec"]["containers"][0]["command"]
    guard, rest = good[2].split(" && read -r _", 1)
    for command in (
        ["python3", "-c", "import socket; socket.create_connection(('10.96.0.1', 443))"],  # its own program
        ["/bin/sh", "-c", "python3 -c 'evil()'"],
        ["/bin/sh", "-c", f"{guard} || python3 -c 'evil()'"],  # runs if the guard fails
        ["/bin/sh", "-c", f"python3 -c 'evil()' & {good[2]}"],  # alongside it
        ["/bin/sh", "-c", f"{good[2]}; python3 -c 'evil()'"],
        ["/bin/sh", "-c", f"{guard} && read -r _{rest}\npython3 -c 'evil()'"],
        ["/bin/sh", "-c", good[2].replace("python3 -c", "true || python3 -c", 1)],
    ):
        refused(
            lambda: attacker.core.create_namespaced_pod(ns, _with_command(restricted_pod(ns), command), dry_run="All"),
            403,
            by(CMD_POLICY),
            GUARD_REFUSAL,
        )


def test_nothing_may_run_beside_or_before_the_guard_nor_fool_it(attacker: Attacker) -> None:
    ns = _complete_sandbox(attacker)
    evil = {
        "name": "evil",
        "image": PYTHON_IMAGE,
        "command": ["python3", "-c", "evil()"],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
    }

    def variant(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        pod = restricted_pod(ns)
        change(pod)
        return pod

    for change, text in [
        (lambda p: p["spec"].update(initContainers=[evil]), "one container and no init or ephemeral containers"),
        (lambda p: p["spec"]["containers"].append(evil), "one container and no init or ephemeral containers"),
        (
            lambda p: p["spec"]["containers"][0].update(
                lifecycle={"postStart": {"exec": {"command": ["python3", "-c", "evil()"]}}}
            ),
            "without lifecycle hooks, probes, envFrom or KUBERNETES_* variables",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(
                startupProbe={"exec": {"command": ["python3", "-c", "evil()"]}}
            ),
            "without lifecycle hooks, probes, envFrom or KUBERNETES_* variables",
        ),
        # The guard waits until the API server is unreachable: pointing it elsewhere would pass it at once.
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "KUBERNETES_SERVICE_HOST", "value": "192.0.2.254"}
            ),
            "without lifecycle hooks, probes, envFrom or KUBERNETES_* variables",
        ),
        # An image of its own could make /bin/sh or python3 anything.
        (
            lambda p: p["spec"]["containers"][0].update(image="docker.io/attacker/evil:1"),
            "may only create pods from the sandbox images, not docker.io/attacker/evil:1",
        ),
    ]:
        refused(
            lambda: attacker.core.create_namespaced_pod(ns, variant(change), dry_run="All"), 403, by(CMD_POLICY), text
        )


def test_other_users_pods_elsewhere_are_not_affected(
    core_v1: client.CoreV1Api, namespace: str, attacker: Attacker
) -> None:
    """The pod policies look their parameters up before their matchConditions are evaluated: they
    must be bound to sandbox namespaces only, or an admin's pod in any other namespace (CoreDNS in
    kube-system, JupyterLab) would be refused for a missing deny-all policy."""
    pod = {"metadata": {"name": "ordinary"}, "spec": {"containers": [{"name": "c", "image": PAUSE}]}}
    assert core_v1.create_namespaced_pod(namespace, pod, dry_run="All").metadata.name == "ordinary"
    assert core_v1.create_namespaced_pod("kube-system", pod, dry_run="All").metadata.name == "ordinary"
    # Still refused for the service account in its own (incomplete) sandbox.
    ns = attacker.namespace()
    refused(lambda: attacker.core.create_namespaced_pod(ns, restricted_pod(ns), dry_run="All"), 422, NO_PARAMS)
