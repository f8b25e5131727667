"""jupyter_kernel_test's conformance suite for each Sandbox kernelspec in claims mode (issue 12:
the core of the e2e suite in both modes): the kernels run as the claims-only identity and get
their sandboxes from the real sandbox controller (a host process as its own service account, a
warm pool of Python sandboxes), the same samples as direct mode (test_kubernetes_conformance.py)
and the local backend. Fails when the cluster is missing.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path
from typing import Any

import jupyter_kernel_test
import pytest
from kubernetes import client, config

from conformance_samples import BashSamples, NodeSamples, PythonSamples
from fixtures_claims import (
    CLAIMS_SA,
    CONTROLLER_SA,
    CONTROLLER_SETTINGS,
    POOL_SIZE,
    ControllerProcess,
    delete_controller_leftovers,
    mint,
    pool_ready,
    scale_deployment,
)
from fixtures_kubernetes import images_from_cache, kernel_environment, wait_until

pytestmark = pytest.mark.cluster

_state: dict[str, Any] = {}


def _admin() -> str:
    admin = os.environ.get("SANDBOX_KUBECONFIG", "")
    if not admin or not Path(admin).is_file():
        raise AssertionError(
            "SANDBOX_KUBECONFIG must name the admin kubeconfig of the test cluster (tests/cluster/up prints it)"
        )
    return admin


def setUpModule() -> None:
    """The controller, as fixtures_claims.controller starts it (the in-cluster one scaled to 0 meanwhile)."""
    admin = _admin()
    work = Path(tempfile.mkdtemp(prefix="sandbox-claims-conformance-"))
    images = images_from_cache()
    env = kernel_environment(admin, images, work)  # applies k8s/rbac/, writes the kernelspecs
    env.update(SANDBOX_KUBECONFIG=mint(admin, CLAIMS_SA, work / "claims.kubeconfig"), SANDBOX_KUBERNETES_MODE="claims")
    api = config.new_client_from_config(config_file=admin)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    _state.update(env=env, api=api, replicas=scale_deployment(apps, 0))
    if _state["replicas"]:
        wait_until(
            lambda: (
                not core.list_namespaced_pod(
                    "sandbox-kernel-system", label_selector="app.kubernetes.io/name=sandbox-kernel-controller"
                ).items
            ),
            60,
            what="the in-cluster controller to stop",
        )
    proc = ControllerProcess(
        mint(admin, CONTROLLER_SA, work / "controller.kubeconfig"),
        images,
        work / "controller.log",
        *CONTROLLER_SETTINGS,
    )
    _state["controller"] = proc
    proc.wait_for("leading", 60)
    wait_until(lambda: len(pool_ready(core)) >= POOL_SIZE, 120, interval=0.5, what=f"{POOL_SIZE} pooled sandboxes")


def tearDownModule() -> None:
    if "controller" in _state:
        _state["controller"].stop()
    api = _state.get("api")
    if api is not None:
        delete_controller_leftovers(client.CoreV1Api(api), client.CustomObjectsApi(api))
        if _state.get("replicas"):
            scale_deployment(client.AppsV1Api(api), _state["replicas"])
        api.close()


class _InClaimsMode(jupyter_kernel_test.KernelTests):
    """The kernel process gets the claims environment for the duration of its start."""

    @classmethod
    def setUpClass(cls) -> None:
        env = dict(_state["env"])
        env["JUPYTER_PATH"] = env["JUPYTER_PATH"] + os.pathsep + os.environ.get("JUPYTER_PATH", "")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            super().setUpClass()
        finally:
            for key, value in saved.items():  # the admin-side code must see the originals
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class SandboxPythonInClaimsMode(PythonSamples, _InClaimsMode):
    pass


class SandboxNodeInClaimsMode(NodeSamples, _InClaimsMode):
    pass


class SandboxBashInClaimsMode(BashSamples, _InClaimsMode):
    pass


del _InClaimsMode  # the base class has no kernel_name: not a test case of its own

if __name__ == "__main__":
    unittest.main()
