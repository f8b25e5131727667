"""Controlled egress in claims mode on the real test cluster (issue 10, k8s/EGRESS.md): a kernel
whose identity can make no namespace asks for egress in its SandboxClaim; the controller serves
it only within SandboxController.allow_hosts and never copies a list beyond the claim's hosts.

Set-up as in test_egress_kubernetes.py (fixtures_egress.py: the test host pod, the proxy of
k8s/egress/ with the test-only options) plus the controller as a host process (fixtures_claims.running_controller)
with ``--SandboxController.allow_hosts`` naming the test hosts. The kernels run as the claims
identity, the controller as its own; no test contacts anything outside the cluster.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from egress_cluster import UNTIL_REFUSED, refused_after, urlopen_cell
from fixtures_claims import CONTROLLER_SETTINGS, SA_NAMESPACE, ControllerProcess, running_controller
from fixtures_kubernetes import K8sKernel, start_kernel, stop_kernel, wait_until
from sandbox_kernel.kubernetes import claims, manifests

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

BOUND = ("allowed.test", "denied.test:443")


@pytest.fixture(scope="module")
def egress_controller(
    kubeconfig: str,
    controller_kubeconfig: str,
    sandbox_images: dict[str, str],
    proxy: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControllerProcess]:
    settings = [s for s in CONTROLLER_SETTINGS if not s.startswith("--SandboxController.pool=")]
    settings += [f"--SandboxController.allow_hosts={h}" for h in BOUND]
    log = tmp_path_factory.mktemp("controller") / "controller.log"
    with running_controller(kubeconfig, controller_kubeconfig, sandbox_images, log, *settings, pool_size=0) as proc:
        yield proc


@pytest.fixture(scope="module")
def claimed(
    egress_controller: ControllerProcess,
    kernel_env: dict[str, str],
    core_v1: client.CoreV1Api,
    claims_env: dict[str, str],
    test_hosts: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[K8sKernel]:
    """A claims-mode Python kernel allowed allowed.test, with the test CA written in its sandbox."""
    kernel = start_kernel(
        kernel_env,
        core_v1,
        "python",
        "--Sandbox.allow_hosts=allowed.test",
        env=claims_env,
        cwd=tmp_path_factory.mktemp("notebook"),
    )
    try:
        cell = kernel.run(f"open('/tmp/ca.pem', 'w').write({test_hosts['ca']!r})")
        assert cell.reply["status"] == "ok", (cell.outputs, egress_controller.text()[-3000:])
        yield kernel
    finally:
        stop_kernel(kernel)


@pytest.fixture(scope="module")
def admin_api(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


def the_claim(admin_api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The claim whose sandbox is ``namespace`` (read as admin)."""
    items = client.CustomObjectsApi(admin_api).list_namespaced_custom_object(
        claims.GROUP, claims.VERSION, SA_NAMESPACE, claims.PLURAL
    )["items"]
    (claim,) = [c for c in items if (c.get("status") or {}).get("namespace") == namespace]
    return claim


def test_a_claimed_sandbox_reaches_its_allowed_host_and_nothing_else(claimed: K8sKernel) -> None:
    assert "hello from the test host (Host: allowed.test)" in claimed.run(urlopen_cell("https://allowed.test/")).stdout
    out = claimed.run(
        urlopen_cell("https://denied.test/")
    ).stdout  # within the controller's bound, not the kernel's list
    assert "FAILED" in out and "403" in out and "%sandbox allow denied.test" in out, out


def test_the_claim_carries_the_credential_s_hash_and_the_controller_did_the_rest(
    claimed: K8sKernel, admin_api: client.ApiClient, core_v1: client.CoreV1Api
) -> None:
    url = claimed.run("import os; print(os.environ['HTTPS_PROXY'])").stdout.strip()
    token = url.split("sandbox:", 1)[1].split("@", 1)[0]
    digest = hashlib.sha256(token.encode()).hexdigest()
    ns = claimed.namespace()
    claim = the_claim(admin_api, ns)
    assert claim["spec"]["egress"] == {"tokenSha256": digest, "hosts": ["allowed.test:443,80"]}
    assert claim["status"]["egressProxy"] == url.rsplit("@", 1)[1] and claim["status"]["fromPool"] is False
    assert token not in json.dumps(claim)
    notes = core_v1.read_namespace(ns).metadata.annotations
    assert notes[manifests.ANNOTATION_EGRESS_TOKEN] == digest
    assert notes[manifests.ANNOTATION_EGRESS_OPERATOR] == "allowed.test:443,80"
    assert notes[manifests.ANNOTATION_EGRESS_WIDENING] == "false"
    pods = core_v1.list_namespaced_pod(ns).items
    assert pods and notes[manifests.ANNOTATION_EGRESS_SOURCE] == pods[0].status.pod_ip
    assert token not in json.dumps(client.ApiClient().sanitize_for_serialization(pods))
    policy = client.NetworkingV1Api(core_v1.api_client).read_namespaced_network_policy(manifests.EGRESS_POLICY_NAME, ns)
    assert policy.spec.egress[0].ports[0].port == 3128


def test_deny_and_allow_on_a_claimed_sandbox_take_effect_within_seconds(claimed: K8sKernel) -> None:
    cell = claimed.run("%sandbox deny allowed.test\n" + UNTIL_REFUSED)
    assert "allowed.test is denied" in cell.stdout and "REFUSED after" in cell.stdout, cell.outputs
    seconds = refused_after(cell.stdout)
    print(f"%sandbox deny on a claimed sandbox took effect after {seconds:.2f} s")
    assert seconds < 5, cell.stdout
    assert "allowed.test is allowed" in claimed.run("%sandbox allow allowed.test").stdout
    wait_until(
        lambda: "hello from" in claimed.run(urlopen_cell("https://allowed.test/")).stdout, 10, 0.2, "allowed.test back"
    )
    cell = claimed.run("%sandbox allow denied.test")  # in the controller's bound, not the claim's hosts
    assert cell.reply["status"] == "error" and "can only narrow" in json.dumps(cell.outputs), cell.outputs


def test_a_list_written_on_the_claim_past_its_hosts_is_not_copied(
    claimed: K8sKernel, claims_kubeconfig: str, admin_api: client.ApiClient, core_v1: client.CoreV1Api
) -> None:
    """The kernel's identity may patch its claim, so it may write any list there: the controller
    copies only what the claim's hosts cover (and the admission policy would refuse the rest)."""
    ns = claimed.namespace()
    name = the_claim(admin_api, ns)["metadata"]["name"]
    claimant = config.new_client_from_config(config_file=claims_kubeconfig)
    try:
        client.CustomObjectsApi(claimant).patch_namespaced_custom_object(
            claims.GROUP,
            claims.VERSION,
            SA_NAMESPACE,
            claims.PLURAL,
            name,
            {
                "metadata": {
                    "annotations": {claims.ANNOTATION_EGRESS_ALLOW: "denied.test:443 evil.test:443 allowed.test:443"}
                }
            },
        )
    finally:
        claimant.close()

    def copied() -> str | None:
        allow = core_v1.read_namespace(ns).metadata.annotations[manifests.ANNOTATION_EGRESS_ALLOW]
        return allow if allow == "allowed.test:443" else None

    allow = wait_until(copied, 10, 0.1, "the controller to copy the claim's list")
    assert "evil.test" not in allow and "denied.test" not in allow
    out = claimed.run(urlopen_cell("https://denied.test/")).stdout
    assert "FAILED" in out and "403" in out, out
    assert "hello from" in claimed.run(urlopen_cell("https://allowed.test/")).stdout  # port 443 kept


def test_a_claim_for_a_host_outside_the_controller_s_bound_is_refused_in_the_cell(
    egress_controller: ControllerProcess, k8s_kernel: Any, claims_env: dict[str, str]
) -> None:
    kernel = k8s_kernel("python", "--Sandbox.allow_hosts=evil.test", env=claims_env)
    started = time.monotonic()
    cell = kernel.run("1")
    assert cell.error is not None and cell.error["ename"] == "AdmissionError", cell.outputs
    assert "evil.test:443 is not within the operator's bound" in cell.error["evalue"], cell.error
    assert "SandboxController.allow_hosts" in cell.error["evalue"], cell.error
    assert time.monotonic() - started < 10
