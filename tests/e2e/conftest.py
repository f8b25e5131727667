"""Fixtures for end-to-end tests against the real test cluster (tests/cluster/up).

Cluster fixtures:
  kubeconfig       session: path from $SANDBOX_KUBECONFIG; FAILS (never skips) when it is unset
                   or the cluster does not answer.
  k8s_api          session: a kubernetes.client.ApiClient for that kubeconfig.
  core_v1          session: CoreV1Api.
  sandbox_images   session: image names (SANDBOX_IMAGE_* from the environment, else from the
                   images.env that tests/cluster/images writes into the cluster cache).
  namespace_factory / namespace
                   per test: fresh namespaces (like kr8s' fixture), deleted afterwards.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

DEFAULT_IMAGES = {
    "SANDBOX_IMAGE_PYTHON": "localhost/sandbox-python:3.11",
    "SANDBOX_IMAGE_NODE": "localhost/sandbox-node:18",
    "SANDBOX_IMAGE_BASH": "localhost/sandbox-bash:5",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real Kubernetes test cluster (tests/cluster/up)")


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = os.environ.get("SANDBOX_KUBECONFIG", "")
    if not path:
        pytest.fail(
            "SANDBOX_KUBECONFIG is not set. Start the test cluster with `sudo tests/cluster/up` "
            "and export SANDBOX_KUBECONFIG=<the path it prints on its last line>.",
            pytrace=False,
        )
    if not os.path.isfile(path):
        pytest.fail(f"SANDBOX_KUBECONFIG={path} does not exist (is the cluster up?)", pytrace=False)
    try:
        api = config.new_client_from_config(config_file=path)
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means the cluster is unusable
        pytest.fail(f"the cluster in {path} is unreachable: {exc}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core_v1(k8s_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


def _images_env_file() -> Path:
    cache = os.environ.get("SANDBOX_CLUSTER_CACHE") or os.path.expanduser("~/.cache/sandbox-kernel/cluster")
    return Path(cache) / "images.env"


@pytest.fixture(scope="session")
def sandbox_images() -> dict[str, str]:
    images = dict(DEFAULT_IMAGES)
    env_file = _images_env_file()
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.startswith("SANDBOX_IMAGE_"):
                images[key.strip()] = value.strip()
    for key in list(images):
        images[key] = os.environ.get(key, images[key])
    return images


@pytest.fixture
def namespace_factory(core_v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create namespaces named after the test; all are deleted (without waiting) afterwards."""
    created: list[str] = []
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")

    def make(labels: dict[str, str] | None = None, prefix: str = "e2e") -> str:
        name = f"{prefix}-{base}-{uuid.uuid4().hex[:6]}"[:63].rstrip("-")
        core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or {})))
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            core_v1.delete_namespace(name, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def namespace(namespace_factory: Callable[..., str]) -> str:
    return namespace_factory()


# Kubernetes backend fixtures (rbac_applied, sa_kubeconfig, sa_api, kernel_env, k8s_kernel).
from fixtures_kubernetes import *  # noqa: E402,F401,F403

# Claims mode fixtures (claims_kubeconfig, controller_kubeconfig, controller, claims_env).
from fixtures_claims import *  # noqa: E402,F401,F403

# Egress fixtures (test_hosts, proxy).
from fixtures_egress import *  # noqa: E402,F401,F403
