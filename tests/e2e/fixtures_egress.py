"""Fixtures for the egress tests on the real cluster (tests/egress_cluster.py does the work):

test_hosts   module: the HTTPS/HTTP test host pod in a namespace of its own (allowed.test,
             denied.test and pypi.org name it in the proxy's test-only hosts file).
proxy        module: k8s/egress/ built from this tree with the test-only options; yields the
             proxy Service's ClusterIP. Used by test_egress_kubernetes.py and test_egress_claims.py.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from kubernetes import client

from egress_cluster import PLATFORM, apply_test_proxy, build_lab_image, remove_test_proxy, start_test_hosts

__all__ = ["test_hosts", "proxy"]


@pytest.fixture(scope="module")
def test_hosts(
    core_v1: client.CoreV1Api, sandbox_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The HTTPS/HTTP test host pod in its own namespace: {'ip', 'ca', 'namespace'}."""
    hosts = start_test_hosts(core_v1, sandbox_images["SANDBOX_IMAGE_PYTHON"], tmp_path_factory.mktemp("egress-ca"))
    try:
        yield hosts
    finally:
        core_v1.delete_namespace(hosts["namespace"])


@pytest.fixture(scope="module")
def proxy(
    kubeconfig: str,
    core_v1: client.CoreV1Api,
    rbac_applied: None,
    test_hosts: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """k8s/egress/ with the test-only options; yields the proxy Service's ClusterIP."""
    try:
        image = build_lab_image(kubeconfig)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    overlay = apply_test_proxy(kubeconfig, image, test_hosts, tmp_path_factory.mktemp("egress-proxy"))
    try:
        yield core_v1.read_namespaced_service("sandbox-egress-proxy", PLATFORM).spec.cluster_ip
    finally:
        remove_test_proxy(kubeconfig, overlay)
