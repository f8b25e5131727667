"""Fixtures for claims mode on the real test cluster (imported by tests/e2e/conftest.py).

claims_kubeconfig      session: a kubeconfig for system:serviceaccount:sandbox-kernel-system:sandbox-kernel-claims,
                       the kernels' identity in claims mode (k8s/rbac/claims.yaml).
controller_kubeconfig  session: one for ...:sandbox-kernel-controller, the controller's (k8s/rbac/controller.yaml).
controller             module: `sandbox-kernel controller` as a host process with that kubeconfig, leader of
                       the real Lease (the in-cluster Deployment, if deployed, is scaled to 0 meanwhile, so
                       one controller acts), a warm pool of POOL_SIZE Python sandboxes, short intervals.
claims_env             session: environment for kernels in claims mode (as sandbox-kernel-claims).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from fixtures_kubernetes import REPO, SA_NAMESPACE, apply_rbac, wait_until
from sandbox_kernel.kubernetes import claims, manifests

__all__ = ["claims_kubeconfig", "controller_kubeconfig", "controller", "claims_env"]

CLAIMS_SA = "sandbox-kernel-claims"
CONTROLLER_SA = "sandbox-kernel-controller"
CLAIMS_USER = f"system:serviceaccount:{SA_NAMESPACE}:{CLAIMS_SA}"
CONTROLLER_USER = f"system:serviceaccount:{SA_NAMESPACE}:{CONTROLLER_SA}"
DEPLOYMENT = "sandbox-kernel-controller"
POOL_SIZE = 3
CONTROLLER_SETTINGS = (
    f"--SandboxController.pool=python={POOL_SIZE}",
    "--SandboxController.lease_duration=6",
    "--SandboxController.renew_deadline=4",
    "--SandboxController.retry_period=1",
    "--SandboxController.heartbeat_check=1",
    "--SandboxController.sweep_interval=5",
    "--SandboxController.pool_resync=3",
)


def mint(admin_kubeconfig: str, account: str, out: Path) -> str:
    result = subprocess.run(
        [str(REPO / "tests" / "cluster" / "kubeconfig-for"), SA_NAMESPACE, account, str(out), "4h"],
        env={**os.environ, "SANDBOX_KUBECONFIG": admin_kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"could not mint a kubeconfig for {account}: {result.stderr}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


class ControllerProcess:
    """`python -m sandbox_kernel.cli controller …`, its log in a file."""

    def __init__(self, kubeconfig: str, images: dict[str, str], log: Path, *settings: str) -> None:
        self.log = log
        env = {
            **os.environ,
            **{k: v for k, v in images.items() if k.startswith("SANDBOX_IMAGE_")},
            "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH", "")))),
        }
        env.pop("SANDBOX_KUBERNETES_MODE", None)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sandbox_kernel.cli",
                    "controller",
                    f"--KubernetesSandbox.kubeconfig={kubeconfig}",
                    *settings,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/tmp",
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, words: str, timeout: float) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the controller exited ({self.proc.returncode}):\n{self.text()[-4000:]}")
            return words in self.text()

        wait_until(seen, timeout, interval=0.1, what=f"{words!r} in the controller's log")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def scale_deployment(apps: client.AppsV1Api, replicas: int) -> int | None:
    """Scale the in-cluster controller (if deployed); its former replica count, or None."""
    try:
        current = apps.read_namespaced_deployment(DEPLOYMENT, SA_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    apps.patch_namespaced_deployment_scale(DEPLOYMENT, SA_NAMESPACE, {"spec": {"replicas": replicas}})
    return int(current.spec.replicas or 0)


def pool_ready(core: client.CoreV1Api) -> list[str]:
    selector = f"{manifests.SELECTOR},{claims.LABEL_MADE_BY}=controller,{claims.LABEL_STATE}=ready"
    return [
        n.metadata.name
        for n in core.list_namespace(label_selector=selector).items
        if n.metadata.deletion_timestamp is None
    ]


def delete_controller_leftovers(core: client.CoreV1Api, claims_api: client.CustomObjectsApi) -> None:
    """Claims the tests left in the kernels' namespace (with their sandboxes), then unbound (pooled) sandboxes.

    Run once no controller serves any more: a claim's finalizer is removed here (as admin), and its
    sandbox namespace deleted by the uid the controller wrote on it.
    """
    args = (claims.GROUP, claims.VERSION, SA_NAMESPACE, claims.PLURAL)
    for claim in claims_api.list_namespaced_custom_object(*args)["items"]:
        name, uid = claim["metadata"]["name"], claim["metadata"]["uid"]
        try:
            claims_api.patch_namespaced_custom_object(*args, name, {"metadata": {"finalizers": None}})
            claims_api.delete_namespaced_custom_object(*args, name)
        except ApiException:
            pass
        for ns in core.list_namespace(label_selector=f"{manifests.SELECTOR},{claims.LABEL_MADE_BY}=controller").items:
            if (ns.metadata.annotations or {}).get(claims.ANNOTATION_CLAIM_UID) == uid:
                core.delete_namespace(ns.metadata.name)
    pooled = f"{manifests.SELECTOR},{claims.LABEL_MADE_BY}=controller,{claims.LABEL_STATE}!=bound"
    for ns in core.list_namespace(label_selector=pooled).items:
        core.delete_namespace(ns.metadata.name)


@pytest.fixture(scope="session")
def claims_kubeconfig(kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    apply_rbac(kubeconfig)
    return mint(kubeconfig, CLAIMS_SA, tmp_path_factory.mktemp("claims") / "claims.kubeconfig")


@pytest.fixture(scope="session")
def controller_kubeconfig(kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    apply_rbac(kubeconfig)
    return mint(kubeconfig, CONTROLLER_SA, tmp_path_factory.mktemp("controller") / "controller.kubeconfig")


@contextmanager
def running_controller(
    kubeconfig: str, controller_kubeconfig: str, images: dict[str, str], log: Path, *settings: str, pool_size: int
) -> Iterator[ControllerProcess]:
    """The one controller that acts while the block runs (the in-cluster one scaled to 0 meanwhile),
    leading, with ``pool_size`` pooled Python sandboxes ready; everything it made is deleted after."""
    admin = config.new_client_from_config(config_file=kubeconfig)
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    replicas = scale_deployment(apps, 0)
    if replicas:
        wait_until(
            lambda: (
                not core.list_namespaced_pod(SA_NAMESPACE, label_selector=f"app.kubernetes.io/name={DEPLOYMENT}").items
            ),
            60,
            what="the in-cluster controller to stop",
        )
    proc = ControllerProcess(controller_kubeconfig, images, log, *settings)
    try:
        proc.wait_for("leading", 60)
        wait_until(lambda: len(pool_ready(core)) >= pool_size, 120, interval=0.5, what=f"{pool_size} pooled sandboxes")
        yield proc
    finally:
        proc.stop()
        delete_controller_leftovers(core, client.CustomObjectsApi(admin))
        if replicas:
            scale_deployment(apps, replicas)
        admin.close()


@pytest.fixture(scope="module")
def controller(
    kubeconfig: str,
    controller_kubeconfig: str,
    sandbox_images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControllerProcess]:
    log = tmp_path_factory.mktemp("controller") / "controller.log"
    with running_controller(
        kubeconfig, controller_kubeconfig, sandbox_images, log, *CONTROLLER_SETTINGS, pool_size=POOL_SIZE
    ) as proc:
        yield proc


@pytest.fixture(scope="session")
def claims_env(kernel_env: dict[str, str], claims_kubeconfig: str) -> dict[str, Any]:
    return {**kernel_env, "SANDBOX_KUBECONFIG": claims_kubeconfig, "SANDBOX_KUBERNETES_MODE": "claims"}
