"""What the k8s/rbac service account may and may not do, on the real cluster.

Two kinds of evidence: SubjectAccessReviews (the API server's own authorizer answering for the
service account, no side effects) and real requests made with the service account's token.
"""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fixtures_kubernetes import SA_NAMESPACE, SA_USER, namespace_exists, wait_until
from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import AdmissionError
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

pytestmark = pytest.mark.cluster

GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{SA_NAMESPACE}", "system:authenticated"]


def allowed(
    k8s_api: client.ApiClient,
    verb: str,
    resource: str,
    namespace: str = "",
    group: str = "",
    subresource: str = "",
    name: str = "",
) -> bool:
    review = client.AuthorizationV1Api(k8s_api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": SA_USER,
                "groups": GROUPS,
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "namespace": namespace,
                    "group": group,
                    "subresource": subresource,
                    "name": name,
                },
            },
        }
    )
    return bool(review.status.allowed)


@pytest.fixture
def sandbox(sa_kubeconfig: str, sandbox_images: dict[str, str]) -> Iterator[KubernetesSandboxSession]:
    """A live sandbox created by the service account (through the backend itself)."""
    settings = KubernetesSandbox(kubeconfig=sa_kubeconfig, images={"python": sandbox_images["SANDBOX_IMAGE_PYTHON"]})
    session = KubernetesSandboxSession(LANGUAGES["python"], Sandbox().limits(), settings, kernel_id="rbac-test")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(session.start())
    yield session
    loop.run_until_complete(session.close())
    loop.close()


def test_cluster_wide_rights_are_only_namespaces_and_binding_the_sandbox_role(
    k8s_api: client.ApiClient, rbac_applied: None
) -> None:
    assert allowed(k8s_api, "create", "namespaces")
    assert allowed(k8s_api, "list", "namespaces")
    assert allowed(k8s_api, "bind", "clusterroles", group="rbac.authorization.k8s.io", name="sandbox-kernel-sandbox")
    assert not allowed(k8s_api, "bind", "clusterroles", group="rbac.authorization.k8s.io", name="cluster-admin")
    assert not allowed(k8s_api, "escalate", "clusterroles", group="rbac.authorization.k8s.io")
    assert not allowed(k8s_api, "update", "namespaces")
    assert not allowed(k8s_api, "list", "pods")  # across namespaces
    assert not allowed(k8s_api, "list", "secrets")
    assert not allowed(k8s_api, "create", "nodes")
    for ns in ("default", "kube-system", SA_NAMESPACE):
        assert not allowed(k8s_api, "create", "pods", ns), ns
        assert not allowed(k8s_api, "delete", "pods", ns), ns
        assert not allowed(k8s_api, "get", "secrets", ns), ns
        assert not allowed(k8s_api, "create", "pods", ns, subresource="exec"), ns
        assert not allowed(k8s_api, "create", "pods", ns, subresource="attach"), ns
        assert not allowed(k8s_api, "create", "configmaps", ns), ns
        assert not allowed(k8s_api, "create", "serviceaccounts", ns, subresource="token"), ns


def test_namespaced_rights_exist_only_in_sandboxes_it_created(
    k8s_api: client.ApiClient, sandbox: KubernetesSandboxSession, namespace_factory
) -> None:
    mine = sandbox.namespace
    assert mine
    for verb, resource, sub, group in [
        ("create", "pods", "", ""),
        ("get", "pods", "", ""),
        ("delete", "pods", "", ""),
        ("create", "pods", "attach", ""),
        ("get", "pods", "attach", ""),
        ("get", "pods", "log", ""),
        ("create", "configmaps", "", ""),
        ("patch", "leases", "", "coordination.k8s.io"),
        ("list", "events", "", ""),
        ("create", "networkpolicies", "", "networking.k8s.io"),
    ]:
        assert allowed(k8s_api, verb, resource, mine, group, sub), (verb, resource, sub)
    # Even in its own sandbox: no exec, no secrets, no services, no listing pods, no changing the policy.
    assert not allowed(k8s_api, "create", "pods", mine, subresource="exec")
    assert not allowed(k8s_api, "get", "secrets", mine)
    assert not allowed(k8s_api, "create", "services", mine)
    assert not allowed(k8s_api, "list", "pods", mine)
    assert not allowed(k8s_api, "delete", "networkpolicies", mine, "networking.k8s.io")
    assert not allowed(k8s_api, "update", "resourcequotas", mine)
    # A namespace that looks like a sandbox but that it did not create (and bind) is off limits.
    other = namespace_factory(labels={"app.kubernetes.io/managed-by": "sandbox-kernel"}, prefix="sandbox")
    assert not allowed(k8s_api, "create", "pods", other)
    assert not allowed(k8s_api, "get", "leases", other, "coordination.k8s.io")


def test_real_requests_as_the_service_account(
    sa_api: client.ApiClient, sandbox: KubernetesSandboxSession, rbac_applied: None
) -> None:
    core = client.CoreV1Api(sa_api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "intruder"},
        "spec": {"containers": [{"name": "c", "image": "localhost/pause:3.10"}]},
    }
    for ns in ("default", "kube-system"):
        with pytest.raises(ApiException) as denied:
            core.create_namespaced_pod(ns, pod)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_secret(ns)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied:
            core.delete_collection_namespaced_pod(ns)
        assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        core.list_pod_for_all_namespaces()
    assert denied.value.status == 403
    # Escalation: it cannot bind a stronger role, not even inside its own sandbox.
    rbac = client.RbacAuthorizationV1Api(sa_api)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "grab"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "sandbox-kernel", "namespace": SA_NAMESPACE}],
    }
    with pytest.raises(ApiException) as denied:
        rbac.create_namespaced_role_binding(sandbox.namespace, binding)
    assert denied.value.status == 403
    # In its own sandbox it can do what the kernel needs (read its pod), and nothing like exec.
    assert core.read_namespaced_pod(sandbox.pod_name, sandbox.namespace).status.phase == "Running"
    with pytest.raises(ApiException) as denied:
        core.list_namespaced_pod(sandbox.namespace)
    assert denied.value.status == 403


def test_an_rbac_refusal_reaches_the_user_in_the_api_servers_words(
    sa_kubeconfig: str, sandbox_images: dict[str, str], k8s_api: client.ApiClient
) -> None:
    """Without its per-namespace RoleBinding the SA may create nothing in a sandbox: the backend says so."""
    settings = KubernetesSandbox(
        kubeconfig=sa_kubeconfig, images={"python": sandbox_images["SANDBOX_IMAGE_PYTHON"]}, sandbox_role=""
    )  # no RoleBinding: the SA may not create anything inside
    session = KubernetesSandboxSession(LANGUAGES["python"], Sandbox().limits(), settings, kernel_id="rbac-refused")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(AdmissionError) as refused:
            loop.run_until_complete(session.start())
        message = str(refused.value)
        assert "Kubernetes refused to create ResourceQuota" in message
        assert f'User "{SA_USER}" cannot create resource "resourcequotas"' in message
    finally:
        loop.run_until_complete(session.close())
        loop.close()
    core = client.CoreV1Api(k8s_api)
    leftovers = [
        n.metadata.name
        for n in core.list_namespace(label_selector="sandbox-kernel/kernel-id=rbac-refused").items
        if n.metadata.deletion_timestamp is None
    ]
    assert leftovers == [], "a half-made sandbox namespace must be deleted"
    wait_until(lambda: all(not namespace_exists(core, n) for n in leftovers), 30, what="cleanup")
