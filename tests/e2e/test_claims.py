"""Claims mode on the real cluster: the sandbox controller (a host process as its own service account,
leader of the real Lease) serves SandboxClaims made by the kernels' claims-only identity.

- a claim gets a sandbox namespace whose deny-all policy, quota and limit range exist before its pod,
  the claimant may attach to that pod only, and deleting the claim deletes the namespace;
- a claim whose heartbeat stops is reclaimed; a claim over the operator's bounds is refused with
  the bound named; the claims identity cannot make namespaces, pods or RoleBindings;
- a kernel in claims mode runs cells (state, interrupt, %sandbox status says it came from the pool)
  and gives its claim and sandbox back at shutdown;
- 10 claims racing for 3 pooled sandboxes: 3 from the pool, 7 made for them, none bound twice;
- leader election: a second controller waits while the first leads, and takes over when it stops;
- a sandbox from the pool and a cold one pass direct mode's isolation checks (namespace, policies,
  pod, network, ``%sandbox selftest``); test_claims_conformance.py runs jupyter_kernel_test in claims mode.

Every test FAILS (never skips) without the cluster. Run as the least-privilege identities, never admin
(admin only looks).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from fixtures_claims import (
    CLAIMS_USER,
    CONTROLLER_SETTINGS,
    CONTROLLER_USER,
    POOL_SIZE,
    ControllerProcess,
    pool_ready,
)
from fixtures_kubernetes import SA_NAMESPACE, K8sKernel, namespace_exists, wait_until
from sandbox_kernel import selftest
from sandbox_kernel.kubernetes import claims, manifests
from sandbox_kernel.kubernetes.api import micro_time

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

G, V, P = claims.GROUP, claims.VERSION, claims.PLURAL


@pytest.fixture(scope="module")
def claimant(claims_kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=claims_kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="module")
def admin(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


def claim_body(images: dict[str, str], heartbeat: int = 60, **resources: str) -> dict[str, Any]:
    """A claim as a default Python kernel makes it (the pool's kind), with ``resources`` changed."""
    spec = claims.ClaimSpec(
        language="python",
        user=CLAIMS_USER,
        image=images["SANDBOX_IMAGE_PYTHON"],
        owner="e2e",
        kernel_id=f"e2e-{uuid.uuid4().hex[:8]}",
        heartbeat_seconds=heartbeat,
    )
    body = claims.claim_object(f"e2e-{uuid.uuid4().hex[:8]}", SA_NAMESPACE, spec, micro_time())
    body["spec"]["resources"].update(resources)
    return body


def create(api: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(G, V, SA_NAMESPACE, P, body)


def read(api: client.ApiClient, name: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(G, V, SA_NAMESPACE, P, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete(api: client.ApiClient, name: str) -> None:
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(G, V, SA_NAMESPACE, P, name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def ready(api: client.ApiClient, name: str, timeout: float = 90) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        found = (read(api, name) or {}).get("status") or {}
        assert found.get("phase") not in ("Refused", "Failed"), found
        return found if found.get("phase") == "Ready" else None

    return wait_until(status, timeout, interval=0.05, what=f"claim {name} to be Ready")


def refusal(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def expect_refused(status: int, call: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == status, refusal(refused.value)
    return refusal(refused.value)


def test_a_claim_gets_a_sandbox_whose_policies_come_before_its_pod_and_goes_with_the_claim(
    controller: ControllerProcess, claimant: client.ApiClient, admin: client.ApiClient, sandbox_images: dict[str, str]
) -> None:
    body = claim_body(sandbox_images, memory="200Mi")  # not the pool's kind: made for this claim
    created = create(claimant, body)
    name = body["metadata"]["name"]
    try:
        status = ready(claimant, name)
        assert status["fromPool"] is False and status["pod"] == "sandbox-1"
        sandbox = status["namespace"]
        core = client.CoreV1Api(admin)
        ns = core.read_namespace(sandbox).metadata
        assert {
            k: ns.labels[k]
            for k in (
                "pod-security.kubernetes.io/enforce",
                "pod-security.kubernetes.io/enforce-version",
                claims.LABEL_MADE_BY,
            )
        } == {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            claims.LABEL_MADE_BY: "controller",
        }
        assert ns.annotations[manifests.ANNOTATION_USER] == CONTROLLER_USER
        assert ns.annotations[claims.ANNOTATION_CLAIM_UID] == created["metadata"]["uid"]
        assert ns.annotations[claims.ANNOTATION_CLAIM_USER] == CLAIMS_USER
        # Policy, quota and limit range exist, and were written (etcd revisions) before the pod.
        policy = client.NetworkingV1Api(admin).read_namespaced_network_policy(manifests.NETWORK_POLICY_NAME, sandbox)
        assert policy.spec.policy_types == ["Ingress", "Egress"] and not policy.spec.ingress and not policy.spec.egress
        quota = core.read_namespaced_resource_quota(manifests.QUOTA_NAME, sandbox)
        limits = core.read_namespaced_limit_range(manifests.LIMIT_RANGE_NAME, sandbox)
        pod = core.read_namespaced_pod("sandbox-1", sandbox)
        assert max(int(o.metadata.resource_version) for o in (policy, quota, limits)) < int(
            pod.metadata.resource_version
        )
        assert (
            pod.spec.containers[0].resources.limits["memory"] == "200Mi" and pod.spec.security_context.run_as_non_root
        )
        binding = client.RbacAuthorizationV1Api(admin).read_namespaced_role_binding(claims.CLAIMANT_BINDING, sandbox)
        assert (binding.role_ref.name, [(s.kind, s.namespace, s.name) for s in binding.subjects]) == (
            claims.CLAIMANT_ROLE,
            [("ServiceAccount", SA_NAMESPACE, "sandbox-kernel-claims")],
        )
        # The claimant may read (and attach to) that pod, and do nothing else with it or the namespace.
        mine = client.CoreV1Api(claimant)
        assert mine.read_namespaced_pod("sandbox-1", sandbox).status.phase == "Running"
        expect_refused(403, lambda: mine.delete_namespaced_pod("sandbox-1", sandbox))
        expect_refused(403, lambda: mine.create_namespaced_pod(sandbox, pod_spec_like(pod)))
        expect_refused(403, lambda: mine.delete_namespace(sandbox))
        expect_refused(
            403,
            lambda: client.CustomObjectsApi(claimant).patch_namespaced_custom_object_status(
                G, V, SA_NAMESPACE, P, name, {"status": {"namespace": "kube-system"}}
            ),
        )
    finally:
        delete(claimant, name)
    wait_until(lambda: read(claimant, name) is None, 30, what=f"claim {name} to be gone")
    wait_until(lambda: not namespace_exists(client.CoreV1Api(admin), sandbox), 90, what=f"{sandbox} to be gone")


def pod_spec_like(pod: client.V1Pod) -> dict[str, Any]:
    return {
        "metadata": {"name": "another"},
        "spec": {"containers": [{"name": "x", "image": pod.spec.containers[0].image}]},
    }


def test_a_claim_whose_heartbeat_stops_is_reclaimed_with_its_sandbox(
    controller: ControllerProcess, claimant: client.ApiClient, admin: client.ApiClient, sandbox_images: dict[str, str]
) -> None:
    # The heartbeat counts from the claim's creation (a second-granular timestamp), and a slow pod
    # start must not use it up before the sandbox is ready: 10 s, measured from before the create.
    body = claim_body(sandbox_images, heartbeat=10)
    started = time.monotonic()
    create(claimant, body)
    name = body["metadata"]["name"]
    try:
        sandbox = ready(claimant, name)["namespace"]
        wait_until(lambda: read(claimant, name) is None, 45, what=f"the controller to reclaim claim {name}")
        assert time.monotonic() - started >= 9, "reclaimed before its heartbeat expired"
        assert f"claim {SA_NAMESPACE}/{name}: heartbeat older than 10 s" in controller.text()
        wait_until(lambda: not namespace_exists(client.CoreV1Api(admin), sandbox), 90, what=f"{sandbox} to be gone")
    finally:
        delete(claimant, name)


def test_a_claim_over_the_operator_s_bounds_or_in_another_s_name_is_refused_with_the_reason(
    claimant: client.ApiClient, sandbox_images: dict[str, str]
) -> None:
    message = expect_refused(422, lambda: create(claimant, claim_body(sandbox_images, memory="4Gi")))
    assert "memory is above the operator's bound of 1Gi per sandbox" in message, message
    message = expect_refused(422, lambda: create(claimant, claim_body(sandbox_images, cpu="3")))
    assert "cpu is above the operator's bound of 1 cpu per sandbox" in message, message
    body = claim_body(sandbox_images)
    body["spec"]["user"] = "system:serviceaccount:kube-system:default"
    message = expect_refused(403, lambda: create(claimant, body))
    assert "ValidatingAdmissionPolicy 'sandbox-kernel-claims'" in message and "must name its creator" in message, (
        message
    )


def test_a_kernel_whose_claim_is_over_the_bounds_is_told_so_in_the_cell(
    controller: ControllerProcess, k8s_kernel: Any, claims_env: dict[str, str]
) -> None:
    # The kernel's own settings allow 2Gi (its limit range and quota raised); the operator's bound does not.
    kernel = k8s_kernel(
        "python",
        "--Sandbox.memory_limit=2Gi",
        "--KubernetesSandbox.limit_range_max_memory=4Gi",
        "--KubernetesSandbox.quota_limits_memory=4Gi",
        env=claims_env,
    )
    started = time.monotonic()
    cell = kernel.run("1")
    assert cell.error is not None and cell.error["ename"] == "AdmissionError", cell.outputs
    assert "memory is above the operator's bound of 1Gi per sandbox" in cell.error["evalue"], cell.error
    assert time.monotonic() - started < 10


def test_the_claims_identity_cannot_make_namespaces_pods_or_rolebindings(
    claimant: client.ApiClient, sandbox_images: dict[str, str]
) -> None:
    core, rbac = client.CoreV1Api(claimant), client.RbacAuthorizationV1Api(claimant)
    labels = {
        manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY,
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    expect_refused(
        403,
        lambda: core.create_namespace({"metadata": {"name": f"sandbox-e2e{uuid.uuid4().hex[:6]}", "labels": labels}}),
    )
    expect_refused(
        403,
        lambda: core.create_namespaced_pod(
            SA_NAMESPACE,
            {
                "metadata": {"name": "e2e-pod"},
                "spec": {"containers": [{"name": "x", "image": sandbox_images["SANDBOX_IMAGE_PYTHON"]}]},
            },
        ),
    )
    expect_refused(
        403,
        lambda: rbac.create_namespaced_role_binding(
            SA_NAMESPACE,
            {
                "metadata": {"name": "e2e"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "sandbox-kernel-sandbox",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "sandbox-kernel-claims", "namespace": SA_NAMESPACE}],
            },
        ),
    )
    expect_refused(403, lambda: core.list_pod_for_all_namespaces())
    expect_refused(403, lambda: core.list_namespace())


def test_a_kernel_in_claims_mode_runs_cells_with_state_and_interrupt_and_gives_its_sandbox_back(
    controller: ControllerProcess, k8s_kernel: Any, claims_env: dict[str, str], admin: client.ApiClient
) -> None:
    core = client.CoreV1Api(admin)
    wait_until(lambda: pool_ready(core), 60, interval=0.2, what="a pooled sandbox")
    kernel = k8s_kernel("python", env=claims_env)
    assert kernel.run("x = 6 * 7\nx").result == "42"
    assert kernel.run("x + 1").result == "43"
    msg_id = kernel.kc.execute("import time\ntime.sleep(100)")
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    reply = kernel.kc.get_shell_msg(timeout=15)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    kernel.drain_iopub()
    assert kernel.run("x").result == "42", "the interrupt kept the state"
    status = kernel.run("%sandbox status").stdout
    assert f"claims mode: SandboxClaim {SA_NAMESPACE}/python-" in status and "from the warm pool" in status, status
    claim = status.split(f"SandboxClaim {SA_NAMESPACE}/", 1)[1].split(",", 1)[0]
    sandbox = kernel.namespace()
    assert core.read_namespace(sandbox).metadata.annotations[claims.ANNOTATION_CLAIM] == f"{SA_NAMESPACE}/{claim}"
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)
    assert read(admin, claim) is None, "shutdown waits until the claim is gone"
    wait_until(lambda: not namespace_exists(core, sandbox), 90, what=f"{sandbox} to be gone")


def test_ten_claims_racing_for_three_pooled_sandboxes_three_get_one_none_twice(
    controller: ControllerProcess, claimant: client.ApiClient, admin: client.ApiClient, sandbox_images: dict[str, str]
) -> None:
    core = client.CoreV1Api(admin)
    wait_until(lambda: len(pool_ready(core)) == POOL_SIZE, 120, interval=0.2, what=f"{POOL_SIZE} pooled sandboxes")
    bodies = [claim_body(sandbox_images) for _ in range(10)]
    names = [b["metadata"]["name"] for b in bodies]
    uids: dict[str, str] = {}
    start = threading.Barrier(len(bodies))

    def race(body: dict[str, Any]) -> None:
        start.wait()
        uids[body["metadata"]["name"]] = create(claimant, body)["metadata"]["uid"]

    threads = [threading.Thread(target=race, args=(b,)) for b in bodies]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        statuses = {name: ready(claimant, name, timeout=180) for name in names}
        pooled = sorted(n for n, s in statuses.items() if s["fromPool"])
        assert len(pooled) == POOL_SIZE, statuses
        sandboxes = [s["namespace"] for s in statuses.values()]
        assert len(set(sandboxes)) == len(names), f"a sandbox was bound twice: {sandboxes}"
        for name, status in statuses.items():
            annotations = core.read_namespace(status["namespace"]).metadata.annotations
            assert annotations[claims.ANNOTATION_CLAIM_UID] == uids[name], (name, annotations)
            assert (annotations.get("sandbox-kernel/pooled") == "true") == status["fromPool"]
    finally:
        for name in names:
            delete(claimant, name)
    wait_until(lambda: all(read(claimant, n) is None for n in names), 60, what="the claims to be gone")


# -- direct mode's isolation checks, in claims mode (before the leader test, which stops the controller)

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
# What direct mode's default pod reports too (test_kubernetes_runtimes.py, runc): every other check passes.
SELFTEST_NOT_PASSED = {"no io_uring": "FAIL", "process limit": "n/a"}
NETWORK = """
import socket
def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return 'open'
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()
for name, (host, port) in TARGETS.items():
    print(name, tcp(host, port))
"""


@pytest.mark.parametrize("source", ["pool", "cold"])
def test_a_claims_mode_sandbox_passes_the_direct_mode_isolation_checks(
    source: str,
    controller: ControllerProcess,
    k8s_kernel: Callable[..., K8sKernel],
    claims_env: dict[str, Any],
    k8s_api: client.ApiClient,
    namespace: str,
    sandbox_images: dict[str, str],
) -> None:
    core = client.CoreV1Api(k8s_api)
    target = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "target"},
            "spec": {
                "containers": [
                    {
                        "name": "http",
                        "image": sandbox_images["SANDBOX_IMAGE_PYTHON"],
                        "command": ["python3", "-m", "http.server", "8080"],
                    }
                ]
            },
        },
    )
    if source == "pool":
        wait_until(lambda: pool_ready(core), 60, interval=0.2, what="a pooled sandbox")
        kernel = k8s_kernel("python", env=claims_env)
    else:  # not the pool's kind of sandbox: made for this claim
        kernel = k8s_kernel("python", "--Sandbox.memory_limit=200Mi", env=claims_env)
    status = kernel.run("%sandbox status").stdout
    assert "claims mode" in status and (("from the warm pool" in status) == (source == "pool")), status

    # The namespace: Pod Security restricted:latest, the designed quota and limit range, deny-all.
    ns = kernel.namespace()
    labels = core.read_namespace(ns).metadata.labels
    assert {k: v for k, v in labels.items() if k.startswith("pod-security")} == RESTRICTED
    (quota,) = core.list_namespaced_resource_quota(ns).items
    assert quota.spec.hard == {
        "requests.cpu": "500m",
        "requests.memory": "256Mi",
        "limits.cpu": "1",
        "limits.memory": "512Mi",
        "pods": "3",
        "persistentvolumeclaims": "0",
        "services": "0",
    }, quota.spec.hard
    (limit_range,) = core.list_namespaced_limit_range(ns).items
    assert limit_range.spec.limits[0].max == {"cpu": "500m", "memory": "256Mi"}
    (policy,) = client.NetworkingV1Api(k8s_api).list_namespaced_network_policy(ns).items
    assert policy.spec.pod_selector.match_labels is None and policy.spec.pod_selector.match_expressions is None
    assert (
        policy.spec.policy_types == ["Ingress", "Egress"] and policy.spec.ingress is None and policy.spec.egress is None
    )

    # The pod: restricted as created; the namespace really enforces it.
    (pod,) = [p for p in core.list_namespaced_pod(ns).items if p.metadata.deletion_timestamp is None]
    sc, csc = pod.spec.security_context, pod.spec.containers[0].security_context
    assert (sc.run_as_non_root, sc.run_as_user, sc.seccomp_profile.type, pod.spec.automount_service_account_token) == (
        True,
        1000,
        "RuntimeDefault",
        False,
    )
    assert (csc.allow_privilege_escalation, csc.capabilities.drop, csc.read_only_root_filesystem) == (
        False,
        ["ALL"],
        True,
    )
    assert pod.spec.containers[0].resources.limits["memory"] == ("256Mi" if source == "pool" else "200Mi")
    body = client.ApiClient().sanitize_for_serialization(pod)
    body = {
        "metadata": {"name": "dry-run-copy", "namespace": ns},
        "spec": {k: v for k, v in body["spec"].items() if k != "nodeName"},
    }
    assert core.create_namespaced_pod(ns, body, dry_run="All").metadata.name == "dry-run-copy"
    body["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_RAW"]
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(ns, body, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body

    # From a cell: nothing answers; the selftest reports what it reports in direct mode.
    ip = wait_until(
        lambda: core.read_namespaced_pod(target.metadata.name, namespace).status.pod_ip, 60, what="target pod IP"
    )
    node_ip = next(a.address for a in core.list_node().items[0].status.addresses if a.type == "InternalIP")
    targets = {
        "api-service": ("10.96.0.1", 443),
        "api-node": (node_ip, 6443),
        "kubelet": (node_ip, 10250),
        "pod": (ip, 8080),
    }
    wait_until(
        lambda: core.read_namespaced_pod("target", namespace).status.phase == "Running", 60, what="the target pod"
    )
    seen = dict(
        line.split()
        for line in kernel.run(NETWORK.replace("TARGETS", repr(targets)), timeout=60).stdout.strip().splitlines()
    )
    assert set(seen) == set(targets) and "open" not in seen.values(), seen
    cell = kernel.run("%sandbox selftest", timeout=120)
    assert cell.reply["status"] == "ok", cell.outputs
    verdicts = selftest.parse_table(cell.stdout)
    assert set(verdicts) == set(selftest.CHECKS), cell.stdout
    assert {c: v for c, v in verdicts.items() if v != "pass"} == SELFTEST_NOT_PASSED, cell.stdout


def test_two_controllers_one_leads_and_the_other_takes_over_when_it_stops(
    controller: ControllerProcess,
    controller_kubeconfig: str,
    claimant: client.ApiClient,
    admin: client.ApiClient,
    sandbox_images: dict[str, str],
    tmp_path: Any,
) -> None:
    second = ControllerProcess(controller_kubeconfig, sandbox_images, tmp_path / "second.log", *CONTROLLER_SETTINGS)
    try:
        second.wait_for("waiting to lead", 30)
        lease = client.CoordinationV1Api(admin).read_namespaced_lease("sandbox-kernel-controller", SA_NAMESPACE)
        body = claim_body(sandbox_images)
        create(claimant, body)
        ready(claimant, body["metadata"]["name"])
        assert "leading" not in second.text() and "claim " not in second.text(), second.text()
        assert lease.spec.holder_identity and lease.spec.holder_identity in controller.text()
        delete(claimant, body["metadata"]["name"])
        # The leader stops (SIGTERM: it releases the Lease); the second one leads and serves.
        assert controller.stop() == 0, controller.text()[-3000:]
        second.wait_for("leading", 15)
        body = claim_body(sandbox_images)
        create(claimant, body)
        ready(claimant, body["metadata"]["name"])
        second.wait_for(f"claim {SA_NAMESPACE}/{body['metadata']['name']}: sandbox", 10)
        delete(claimant, body["metadata"]["name"])
        wait_until(lambda: read(claimant, body["metadata"]["name"]) is None, 30, what="the last claim to be gone")
    finally:
        second.stop()
