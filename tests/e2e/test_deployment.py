"""The in-cluster deployment (`kubectl apply -k k8s/`) on the real test cluster.

- The kustomization applies cleanly (server-side, Pod Security "restricted" without warnings).
- The ValidatingAdmissionPolicies confine the sandbox-kernel service account to sandbox
  namespaces: it is refused, with the policy's message, when it creates, labels or deletes any
  other namespace or binds a role outside its sandboxes; its own sandboxes still work.
- The sandbox controller's Deployment (leader of its Lease) reclaims a direct-mode sandbox whose
  heartbeat Lease expired (the old gc CronJob's job), and nothing else.
- JupyterLab, built by images/jupyterlab/build and imported into containerd, becomes Available;
  reached THROUGH THE API SERVER (service proxy), it starts a Sandbox (Python) kernel through
  Jupyter Server's REST API — in claims mode, as sandbox-kernel-claims: the controller Deployment
  makes its sandbox —, runs a cell over the kernel's websocket channels, shuts it down, and the
  kernel's claim and sandbox namespace are gone.

Every test here FAILS (never skips) without the cluster.
"""

from __future__ import annotations

import base64
import copy
import glob
import json
import os
import re
import secrets
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import websocket
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from fixtures_kubernetes import REPO, SA_NAME, SA_NAMESPACE, SA_USER, mint_sa_kubeconfig, namespace_exists, wait_until
from sandbox_kernel.kubernetes import manifests
from sandbox_kernel.kubernetes.api import micro_time

# The first test that needs the platform also builds the JupyterLab image (minutes when cold).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

PLATFORM_NS = "sandbox-kernel-system"
NAMESPACE_POLICY = "sandbox-kernel-namespaces"
ROLEBINDING_POLICY = "sandbox-kernel-rolebindings"
POLICIES = (
    NAMESPACE_POLICY,
    ROLEBINDING_POLICY,
    "sandbox-kernel-networkpolicies",
    "sandbox-kernel-pods-command",
    "sandbox-kernel-pods-deny-all",
    "sandbox-kernel-pods-quota",
    "sandbox-kernel-pods-limits",
    "sandbox-egress-proxy-events",
)  # k8s/rbac/admission-policy.yaml; the last: k8s/egress/proxy.yaml
SANDBOX_LABELS = {
    manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY,
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
"""What the namespace policy requires of a namespace the service account creates."""
LAB_IMAGE = "localhost/sandbox-kernel-lab"
CONTROLLER_USER = f"system:serviceaccount:{SA_NAMESPACE}:sandbox-kernel-controller"
CLAIMS_USER = f"system:serviceaccount:{SA_NAMESPACE}:sandbox-kernel-claims"


# ---------------------------------------------------------------------------------------------
# Helpers.


def find_kubectl() -> str:
    """The kubectl the test cluster build provides ($KUBECTL, else the cluster cache's bin dir)."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    caches = [os.environ.get("SANDBOX_CLUSTER_CACHE", ""), str(Path.home() / ".cache/sandbox-kernel/cluster")]
    for cache in filter(None, caches):
        if os.access(os.path.join(cache, "bin", "current", "kubectl"), os.X_OK):
            return os.path.join(cache, "bin", "current", "kubectl")
        found = sorted(glob.glob(os.path.join(cache, "bin", "*", "kubectl")), key=os.path.getmtime)
        if found:
            return found[-1]
    pytest.fail("no kubectl: set KUBECTL or build the test cluster (tests/cluster/up)", pytrace=False)


def kubectl(kubeconfig: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [find_kubectl(), "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def refusal(exc: ApiException) -> str:
    """The API server's Status message of a refused request."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def refused_by(policy: str, call: Callable[[], Any]) -> str:
    """Run ``call``; it must be refused with 403 by ``policy``; return the message."""
    with pytest.raises(ApiException) as refused:
        call()
    message = refusal(refused.value)
    assert refused.value.status == 403, message
    assert f"ValidatingAdmissionPolicy '{policy}'" in message, message
    return message


@pytest.fixture(scope="module")
def lab_image(kubeconfig: str) -> str:
    """images/jupyterlab/build --import: the content-addressed image reference (cached by content)."""
    result = subprocess.run(
        [str(REPO / "images" / "jupyterlab" / "build"), "--import"],
        env={**os.environ, "SANDBOX_KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        pytest.fail(f"images/jupyterlab/build failed:\n{result.stderr[-4000:]}", pytrace=False)
    ref = result.stdout.strip().splitlines()[-1]
    assert ref.startswith(f"{LAB_IMAGE}:"), ref
    return ref


@pytest.fixture(scope="module")
def platform(kubeconfig: str, lab_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`kubectl apply -k k8s/`, with the image pinned to the build just imported; Deployment Available.

    The pin is a two-line overlay over k8s/ (what an operator does to deploy a given version):
    it makes the Deployment roll whenever the image's content changed.
    """
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(REPO / "k8s", overlay)],
                "images": [{"name": LAB_IMAGE, "newTag": lab_image.split(":", 1)[1]}],
            }
        )
    )
    kubectl(kubeconfig, "apply", "-k", str(overlay))
    # The login token: a Secret outside the kustomization (k8s/README.md). Created once; if the
    # pod started before it existed, restart it so it reads the token.
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    try:
        token = base64.b64decode(core.read_namespaced_secret("jupyterlab-token", PLATFORM_NS).data["token"]).decode()
    except ApiException as exc:
        if exc.status != 404:
            raise
        token = secrets.token_hex(24)
        core.create_namespaced_secret(
            PLATFORM_NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "jupyterlab-token"},
                "type": "Opaque",
                "stringData": {"token": token},
            },
        )
        kubectl(kubeconfig, "-n", PLATFORM_NS, "rollout", "restart", "deployment/jupyterlab")
    kubectl(kubeconfig, "-n", PLATFORM_NS, "rollout", "status", "deployment/jupyterlab", "--timeout=300s", timeout=330)
    kubectl(
        kubeconfig,
        "-n",
        PLATFORM_NS,
        "rollout",
        "status",
        "deployment/sandbox-kernel-controller",
        "--timeout=300s",
        timeout=330,
    )
    kubectl(
        kubeconfig,
        "-n",
        PLATFORM_NS,
        "wait",
        "--for=condition=Available",
        "deployment/jupyterlab",
        "--timeout=120s",
        timeout=150,
    )
    api.close()
    return {"token": token, "image": lab_image, "kubeconfig": kubeconfig}


@pytest.fixture(scope="module")
def admin(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="module")
def sa(
    kubeconfig: str, platform: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[client.ApiClient]:
    """The service account, with a token from tests/cluster/kubeconfig-for."""
    path = mint_sa_kubeconfig(kubeconfig, tmp_path_factory.mktemp("sa") / "sa.kubeconfig")
    api = config.new_client_from_config(config_file=path)
    yield api
    api.close()


# ---------------------------------------------------------------------------------------------
# The kustomization.


def test_kustomization_builds_and_applies_server_side_and_its_pods_pass_restricted(
    kubeconfig: str, admin: client.ApiClient, platform: dict[str, str]
) -> None:
    built = [d for d in yaml.safe_load_all(kubectl(kubeconfig, "kustomize", str(REPO / "k8s")).stdout) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    for expected in [
        ("ClusterRole", "sandbox-kernel"),
        ("ClusterRole", "sandbox-kernel-sandbox"),
        ("ClusterRoleBinding", "sandbox-kernel"),
        ("Deployment", "sandbox-kernel-controller"),
        ("ClusterRole", "sandbox-kernel-controller"),
        ("ClusterRole", "sandbox-kernel-claimant"),
        ("CustomResourceDefinition", "sandboxclaims.sandbox-kernel.dev"),
        ("ServiceAccount", "sandbox-kernel-claims"),
        ("Deployment", "jupyterlab"),
        ("Namespace", PLATFORM_NS),
        ("Service", "jupyterlab"),
        ("ServiceAccount", SA_NAME),
        ("Deployment", "sandbox-egress-proxy"),
        ("Service", "sandbox-egress-proxy"),
        ("NetworkPolicy", "sandbox-egress-proxy"),
        ("Role", "sandbox-kernel-egress"),
        *[
            (kind, name)
            for name in POLICIES
            for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
        ],
    ]:
        assert expected in kinds, f"{expected} missing from `kubectl kustomize k8s/`: {kinds}"
    assert not any(kind == "RuntimeClass" for kind, _ in kinds), "the gVisor example must not be applied by default"
    # Server-side dry run of the whole kustomization: schemas, defaulting, admission.
    result = kubectl(kubeconfig, "apply", "-k", str(REPO / "k8s"), "--dry-run=server")
    assert "would violate PodSecurity" not in result.stderr, result.stderr
    # The pod templates of the Deployment and the CronJob, created (dry run) as pods in the
    # namespace: Pod Security "restricted" is *enforced* on pods, so a violation is a 403 here.
    core = client.CoreV1Api(admin)
    templates = {
        "jupyterlab": next(d for d in built if d["kind"] == "Deployment")["spec"]["template"]["spec"],
        "controller": next(
            d for d in built if d["kind"] == "Deployment" and d["metadata"]["name"] == "sandbox-kernel-controller"
        )["spec"]["template"]["spec"],
        "egress-proxy": next(
            d for d in built if d["kind"] == "Deployment" and d["metadata"]["name"] == "sandbox-egress-proxy"
        )["spec"]["template"]["spec"],
    }
    templates["jupyterlab"] = next(
        d for d in built if d["kind"] == "Deployment" and d["metadata"]["name"] == "jupyterlab"
    )["spec"]["template"]["spec"]
    for name, spec in templates.items():
        core.create_namespaced_pod(
            PLATFORM_NS, {"metadata": {"name": f"psa-check-{name}"}, "spec": spec}, dry_run="All"
        )
    # ... and enforcement is really on: the same pod without its securityContext is refused.
    bare = copy.deepcopy(templates["controller"])
    bare.pop("securityContext")
    bare["containers"][0].pop("securityContext")
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(PLATFORM_NS, {"metadata": {"name": "psa-check-bare"}, "spec": bare}, dry_run="All")
    assert refused.value.status == 403 and 'violates PodSecurity "restricted:latest"' in refusal(refused.value)


def test_platform_namespace_enforces_restricted_and_workloads_comply(
    admin: client.ApiClient, platform: dict[str, str]
) -> None:
    core = client.CoreV1Api(admin)
    # Enforced on the live namespace. (warn and audit come from this kustomization's patch; other
    # tests re-create the namespace from k8s/rbac/namespace.yaml alone, so they are checked in
    # the kustomization's output rather than on the live object.)
    assert core.read_namespace(PLATFORM_NS).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    built = yaml.safe_load_all(kubectl(platform["kubeconfig"], "kustomize", str(REPO / "k8s")).stdout)
    labels = next(d for d in built if d and d["kind"] == "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    pods = core.list_namespaced_pod(PLATFORM_NS, label_selector="app.kubernetes.io/name=jupyterlab").items
    running = [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]
    assert running, "the JupyterLab pod is not running"
    pod = running[0]
    assert pod.spec.containers[0].image == platform["image"]
    assert pod.spec.service_account_name == "sandbox-kernel-claims"  # claims mode: it can only claim
    ctx = pod.spec.containers[0].security_context
    assert ctx.read_only_root_filesystem and not ctx.allow_privilege_escalation
    assert ctx.capabilities.drop == ["ALL"]
    assert pod.spec.security_context.run_as_non_root and pod.spec.security_context.run_as_user == 1000
    resources = pod.spec.containers[0].resources
    assert resources.limits["memory"] and resources.requests["cpu"]
    assert pod.spec.containers[0].liveness_probe.http_get.path == "/api"
    assert pod.spec.containers[0].readiness_probe.http_get.path == "/api"


def test_admission_policies_type_check_without_warnings(admin: client.ApiClient, platform: dict[str, str]) -> None:
    """The API server type-checks each policy's CEL against the matched resources' schemas."""
    registration = client.AdmissionregistrationV1Api(admin)
    for name in POLICIES:

        def checked() -> Any:
            policy = registration.read_validating_admission_policy(name)
            status = policy.status
            return policy if status and status.observed_generation == policy.metadata.generation else None

        policy = wait_until(checked, 60, interval=1, what=f"type checking of {name}")
        warnings = (policy.status.type_checking.expression_warnings or []) if policy.status.type_checking else []
        assert warnings == [], [(w.field_ref, w.warning) for w in warnings]
        assert policy.spec.failure_policy == "Fail"
        binding = registration.read_validating_admission_policy_binding(name)
        assert binding.spec.policy_name == name and binding.spec.validation_actions == ["Deny"]


# ---------------------------------------------------------------------------------------------
# The admission policy: what the service account may do to namespaces.


def test_service_account_cannot_delete_a_namespace_that_is_not_a_sandbox(
    sa: client.ApiClient, admin: client.ApiClient, namespace_factory: Callable[..., str]
) -> None:
    core = client.CoreV1Api(sa)
    # RBAC alone would allow this (namespaces delete is cluster-wide): the policy refuses it.
    victim = namespace_factory()
    message = refused_by(NAMESPACE_POLICY, lambda: core.delete_namespace(victim))
    assert "sandbox-kernel may only delete its sandbox namespaces" in message and victim in message
    # Even one that carries the label but not the sandbox- name, or the name but not the label.
    lookalike = namespace_factory(labels={manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY})
    refused_by(NAMESPACE_POLICY, lambda: core.delete_namespace(lookalike))
    unlabelled = namespace_factory(prefix="sandbox")
    refused_by(NAMESPACE_POLICY, lambda: core.delete_namespace(unlabelled))
    # Namespaces of the cluster and of the platform itself (dry run: admission runs, nothing is
    # deleted even if it were allowed). `default`, `kube-system` and `kube-public` are also
    # protected by NamespaceLifecycle, which refuses their deletion before any policy runs.
    for name in ("kube-node-lease", PLATFORM_NS):
        message = refused_by(NAMESPACE_POLICY, lambda: core.delete_namespace(name, dry_run="All"))
        assert f"{name} is not one" in message
    for name in ("default", "kube-system"):
        with pytest.raises(ApiException) as refused:
            core.delete_namespace(name, dry_run="All")
        assert refused.value.status == 403, refusal(refused.value)
    admin_core = client.CoreV1Api(admin)
    for name in (victim, lookalike, unlabelled, "default", "kube-system", "kube-node-lease", PLATFORM_NS):
        ns = admin_core.read_namespace(name)
        assert ns.metadata.deletion_timestamp is None, f"{name} is being deleted"


def test_service_account_creates_and_deletes_only_sandbox_namespaces(
    sa: client.ApiClient, admin: client.ApiClient
) -> None:
    core = client.CoreV1Api(sa)
    suffix = uuid.uuid4().hex[:8]
    labels = {manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY}
    message = refused_by(
        NAMESPACE_POLICY,
        lambda: core.create_namespace({"metadata": {"name": f"e2e-not-a-sandbox-{suffix}", "labels": labels}}),
    )
    assert "may only create namespaces named sandbox-*" in message
    message = refused_by(NAMESPACE_POLICY, lambda: core.create_namespace({"metadata": {"name": f"sandbox-{suffix}"}}))
    assert "may only create namespaces labelled app.kubernetes.io/managed-by=sandbox-kernel" in message
    # Its own kind of namespace (with Pod Security restricted:latest): allowed, and it may delete it again.
    name = f"sandbox-{suffix}"
    try:
        core.create_namespace({"metadata": {"name": name, "labels": SANDBOX_LABELS}})
        core.delete_namespace(name)
        wait_until(lambda: not namespace_exists(client.CoreV1Api(admin), name), 60, what=f"{name} deleted")
    finally:
        try:
            client.CoreV1Api(admin).delete_namespace(name)
        except ApiException:
            pass


def test_service_account_cannot_label_a_namespace_that_is_not_a_sandbox(
    sa: client.ApiClient, admin: client.ApiClient, namespace_factory: Callable[..., str]
) -> None:
    core = client.CoreV1Api(sa)
    victim = namespace_factory()
    adopt = {"metadata": {"labels": {manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY}}}
    # RBAC lets the kernel patch namespaces (controlled egress: %sandbox allow/deny patch its
    # namespace's lists); the namespace policy alone keeps every other namespace out of reach.
    message = refused_by(NAMESPACE_POLICY, lambda: core.patch_namespace(victim, adopt))
    assert "sandbox-kernel may only change its sandbox namespaces" in message and victim in message
    assert manifests.LABEL_MANAGED_BY not in (client.CoreV1Api(admin).read_namespace(victim).metadata.labels or {})


def test_policy_refuses_relabelling_a_sandbox_namespace(sa: client.ApiClient, admin: client.ApiClient) -> None:
    core = client.CoreV1Api(sa)
    name = f"sandbox-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        {"metadata": {"name": name, "labels": SANDBOX_LABELS, "annotations": {"sandbox-kernel/user": SA_USER}}}
    )
    try:
        # Its own sandbox's egress lists are the one thing the kernel may change ...
        core.patch_namespace(name, {"metadata": {"annotations": {"sandbox-kernel/egress-deny": "example.com:443"}}})
        # ... no label: not a new one, and above all not the one that makes it a sandbox.
        message = refused_by(
            NAMESPACE_POLICY, lambda: core.patch_namespace(name, {"metadata": {"labels": {"e2e": "ok"}}})
        )
        assert "may only change the egress allow/deny lists" in message and "no label" in message
        message = refused_by(
            NAMESPACE_POLICY,
            lambda: core.patch_namespace(name, {"metadata": {"labels": {manifests.LABEL_MANAGED_BY: None}}}),
        )
        assert "may not remove the app.kubernetes.io/managed-by=sandbox-kernel label" in message
        labels = client.CoreV1Api(admin).read_namespace(name).metadata.labels or {}
        assert labels.get(manifests.LABEL_MANAGED_BY) == manifests.MANAGED_BY and "e2e" not in labels
    finally:
        client.CoreV1Api(admin).delete_namespace(name)


def test_service_account_cannot_bind_roles_outside_its_sandboxes(
    sa: client.ApiClient, namespace_factory: Callable[..., str]
) -> None:
    """RBAC grants `rolebindings create` cluster-wide (and `bind` on the sandbox role): without
    the policy the SA could give itself the sandbox role in any namespace."""
    rbac = client.RbacAuthorizationV1Api(sa)
    binding = {
        "metadata": {"name": "grab"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sandbox-kernel-sandbox"},
        "subjects": [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": SA_NAMESPACE}],
    }
    for ns in (
        namespace_factory(),
        namespace_factory(labels={manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY}, prefix="sandbox"),
    ):
        message = refused_by(ROLEBINDING_POLICY, lambda: rbac.create_namespaced_role_binding(ns, binding))
        assert f"may only create RoleBindings in sandbox namespaces it created; {ns} is not one" in message


# ---------------------------------------------------------------------------------------------
# The gc CronJob.


def _sandbox_objects(name: str, renewed: datetime, kernel_id: str) -> list[dict[str, Any]]:
    """Namespace, RoleBinding, quota, limits, policy, agent ConfigMap and heartbeat Lease, as the
    backend builds them (its own builders), for a kernel of the service account."""
    ident = manifests.SandboxIdentity(
        namespace=name,
        kernel_id=kernel_id,
        language="python",
        owner=manifests.owner_label(SA_USER),
        user=SA_USER,
        created=renewed.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    spec = manifests.PodSpec(
        name="sandbox-1", image="localhost/sandbox-python:3.11", interpreter="python3", agent_file="python_agent.py"
    )
    objects = manifests.sandbox_objects(
        ident,
        manifests.QuotaSpec(),
        manifests.LimitRangeSpec(),
        spec,
        "# agent\n",
        60,
        micro_time(renewed),
        manifests.Subject.from_username(SA_USER),
        "sandbox-kernel-sandbox",
    )
    return [o for o in objects.in_order() if o["kind"] != "Pod"]  # no kernel: no pod either


def _create_all(api: client.ApiClient, objects: list[dict[str, Any]]) -> None:
    from kubernetes import utils

    for obj in objects:
        utils.create_from_dict(api, obj)


def test_controller_deployment_reclaims_a_direct_mode_sandbox_whose_heartbeat_expired(
    kubeconfig: str, admin: client.ApiClient, platform: dict[str, str], namespace_factory: Callable[..., str]
) -> None:
    """The controller took over the gc CronJob's job: its sweep (every 30 s in k8s/platform/controller.yaml)
    deletes a sandbox whose Lease expired and keeps a live one and namespaces that are not sandboxes."""
    core = client.CoreV1Api(admin)
    now = datetime.now(timezone.utc)
    suffix = uuid.uuid4().hex[:6]
    dead, alive = f"sandbox-e2egc{suffix}a", f"sandbox-e2egc{suffix}b"
    try:
        _create_all(admin, _sandbox_objects(dead, now - timedelta(minutes=10), f"e2e-gc-dead-{suffix}"))
        _create_all(admin, _sandbox_objects(alive, now, f"e2e-gc-alive-{suffix}"))
        # Not sandboxes: a plain namespace, and one with the label but not the sandbox- name.
        plain = namespace_factory()
        lookalike = namespace_factory(labels={manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY})
        wait_until(
            lambda: not namespace_exists(core, dead) or core.read_namespace(dead).metadata.deletion_timestamp,
            75,
            interval=1,
            what=f"the controller to reclaim {dead}",
        )
        logs = _controller_logs(core)
        assert f"direct-mode sandbox {dead}: heartbeat expired" in logs, logs[-3000:]
        for name in (alive, plain, lookalike):
            assert core.read_namespace(name).metadata.deletion_timestamp is None, f"the controller touched {name}"
        assert alive not in logs and plain not in logs and lookalike not in logs, logs[-3000:]
    finally:
        for name in (dead, alive):
            try:
                core.delete_namespace(name)
            except ApiException:
                pass


def _controller_logs(core: client.CoreV1Api) -> str:
    pods = core.list_namespaced_pod(
        PLATFORM_NS, label_selector="app.kubernetes.io/name=sandbox-kernel-controller"
    ).items
    return "\n".join(
        core.read_namespaced_pod_log(p.metadata.name, PLATFORM_NS)
        for p in pods
        if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    )


# ---------------------------------------------------------------------------------------------
# JupyterLab in the cluster, through the API server.


class LabThroughApiServer:
    """Jupyter Server's API through the API server, as cluster-admin.

    REST goes through the service proxy (``/api/v1/namespaces/…/services/http:jupyterlab:8888/proxy``)
    with the Jupyter token in the query string: the API server drops the Authorization header
    once it has authenticated the request (here by client certificate). The kernel's websocket
    goes through ``kubectl port-forward`` (pods/portforward, also via the API server): on an
    upgrade request the service proxy does not pass the query string on, so Jupyter would never
    see the token (it answers "Couldn't authenticate WebSocket connection").
    """

    def __init__(self, kubeconfig: str, token: str, forwarded_port: int = 0) -> None:
        self.forwarded_port = forwarded_port
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.cfg = cfg
        self.token = token
        self.base = f"{cfg.host}/api/v1/namespaces/{PLATFORM_NS}/services/http:jupyterlab:8888/proxy"
        self.http = requests.Session()
        self.http.trust_env = False  # else $REQUESTS_CA_BUNDLE would replace the cluster's CA
        self.http.verify = cfg.ssl_ca_cert
        self.http.cert = (cfg.cert_file, cfg.key_file)

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, self.url(path), timeout=150, **kwargs)

    def channels(self, kernel_id: str) -> websocket.WebSocket:
        """The kernel's channels websocket (Jupyter's JSON protocol), via the port-forward."""
        assert self.forwarded_port, "no port-forward"
        url = f"ws://127.0.0.1:{self.forwarded_port}/api/kernels/{kernel_id}/channels?token={self.token}"
        # No Origin header: Jupyter refuses cross-origin websockets, and this is no browser.
        return websocket.create_connection(url, timeout=150, suppress_origin=True)


@pytest.fixture
def port_forward(kubeconfig: str, platform: dict[str, str]) -> Iterator[int]:
    """`kubectl port-forward svc/jupyterlab :8888`: the local port it chose."""
    proc = subprocess.Popen(
        [find_kubectl(), "--kubeconfig", kubeconfig, "-n", PLATFORM_NS, "port-forward", "svc/jupyterlab", ":8888"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8888", line)
        assert match, (
            f"kubectl port-forward said {line!r} {proc.stderr.read() if proc.poll() is not None and proc.stderr else ''}"
        )
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


def execute(ws: websocket.WebSocket, code: str, timeout: float = 150) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send an execute_request on the shell channel; collect its iopub outputs and its reply."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "e2e",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                    "date": datetime.now(timezone.utc).isoformat(),
                },
                "parent_header": {},
                "metadata": {},
                "buffers": [],
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    outputs: list[dict[str, Any]] = []
    reply: dict[str, Any] | None = None
    idle = False
    deadline = time.monotonic() + timeout
    while not (reply is not None and idle):
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            reply = msg["content"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
        elif kind in ("stream", "execute_result", "display_data", "error"):
            outputs.append({"msg_type": kind, **msg["content"]})
        if time.monotonic() > deadline:
            raise AssertionError(f"no reply to {code!r} within {timeout} s; outputs so far: {outputs}")
    return reply, outputs


def test_jupyterlab_in_cluster_runs_a_sandbox_kernel_reached_through_the_api_server(
    kubeconfig: str, admin: client.ApiClient, platform: dict[str, str], port_forward: int
) -> None:
    lab = LabThroughApiServer(kubeconfig, platform["token"], port_forward)
    core = client.CoreV1Api(admin)
    # /api is open (the probes use it); everything else needs the token.
    assert "version" in lab.http.get(f"{lab.base}/api", timeout=30).json()
    assert lab.http.get(f"{lab.base}/api/kernels", timeout=30).status_code == 403
    specs = lab.request("GET", "/api/kernelspecs").json()["kernelspecs"]
    assert set(specs) == {"sandbox-python", "sandbox-node", "sandbox-bash"}, "only Sandbox kernels may be offered"
    assert "--SandboxKernel.backend=kubernetes" in specs["sandbox-python"]["spec"]["argv"]

    started = lab.request("POST", "/api/kernels", json={"name": "sandbox-python"})
    assert started.status_code == 201, started.text
    kernel_id = started.json()["id"]
    selector = f"{manifests.LABEL_KERNEL_ID}={kernel_id}"
    try:
        ws = lab.channels(kernel_id)
        try:
            reply, outputs = execute(
                ws, "import os, socket\nprint('sum', sum(range(10)), os.getuid())\nsocket.gethostname()"
            )
            assert reply["status"] == "ok", (reply, outputs)
            stdout = "".join(o["text"] for o in outputs if o["msg_type"] == "stream" and o["name"] == "stdout")
            assert "sum 45 1000" in stdout, outputs
            # State persists between cells, and the cell really ran in the sandbox pod.
            reply, outputs = execute(ws, "x = 41\nx + 1")
            assert [o["data"]["text/plain"] for o in outputs if o["msg_type"] == "execute_result"] == ["42"], outputs
        finally:
            ws.close()
        live = [n for n in core.list_namespace(label_selector=selector).items if n.metadata.deletion_timestamp is None]
        assert len(live) == 1, f"expected one sandbox namespace for kernel {kernel_id}"
        sandbox = live[0]
        assert sandbox.metadata.name.startswith("sandbox-")
        # Claimed by the JupyterLab pod's service account (in-cluster configuration, claims mode) and
        # made by the controller Deployment's, not by an admin or by the kernel.
        assert sandbox.metadata.annotations[manifests.ANNOTATION_USER] == CONTROLLER_USER
        assert sandbox.metadata.annotations["sandbox-kernel/claim-user"] == CLAIMS_USER
        pods = core.list_namespaced_pod(sandbox.metadata.name).items
        assert [p.status.phase for p in pods] == ["Running"]
    finally:
        deleted = lab.request("DELETE", f"/api/kernels/{kernel_id}")
    assert deleted.status_code == 204, deleted.text
    assert kernel_id not in [k["id"] for k in lab.request("GET", "/api/kernels").json()]
    # Shutdown deleted the sandbox namespace (the kernel waits for it; allow the controller a moment).
    wait_until(
        lambda: not core.list_namespace(label_selector=selector).items,
        60,
        what=f"the sandbox namespace of kernel {kernel_id} to be gone",
    )


def test_plain_kubectl_apply_k_k8s_deploys_the_version_tag(
    kubeconfig: str, admin: client.ApiClient, platform: dict[str, str]
) -> None:
    """Exactly what k8s/README.md tells an operator: `kubectl apply -k k8s/`, no overlay. The
    image build tagged the same image <version> too, so the Deployment rolls out on it."""
    kubectl(kubeconfig, "apply", "-k", str(REPO / "k8s"))
    kubectl(kubeconfig, "-n", PLATFORM_NS, "rollout", "status", "deployment/jupyterlab", "--timeout=300s", timeout=330)
    version = platform["image"].split(":", 1)[1].rsplit("-", 1)[0]
    core = client.CoreV1Api(admin)
    pods = [
        p
        for p in core.list_namespaced_pod(PLATFORM_NS, label_selector="app.kubernetes.io/name=jupyterlab").items
        if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
    ]
    assert [p.spec.containers[0].image for p in pods] == [f"{LAB_IMAGE}:{version}"]
    controller = client.AppsV1Api(admin).read_namespaced_deployment("sandbox-kernel-controller", PLATFORM_NS)
    assert controller.spec.template.spec.containers[0].image == f"{LAB_IMAGE}:{version}"
    lab = LabThroughApiServer(kubeconfig, platform["token"])
    assert "version" in lab.http.get(f"{lab.base}/api", timeout=30).json()
