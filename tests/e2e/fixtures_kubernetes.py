"""Fixtures for the Kubernetes backend's end-to-end tests (imported by tests/e2e/conftest.py).

Everything runs against the real test cluster (tests/cluster/up), and every kernel runs as the
service account of k8s/rbac/, never as cluster-admin:

  rbac_applied      session: `kubectl apply -k k8s/rbac/` (RBAC + admission policies) as admin.
  sa_kubeconfig     session: a kubeconfig for system:serviceaccount:sandbox-kernel-system:sandbox-kernel
                    (minted by tests/cluster/kubeconfig-for, i.e. the TokenRequest API).
  sa_api            session: a kubernetes ApiClient authenticated as that service account.
  kernel_env        session: environment for kernels and CLI commands run as the service account
                    (SANDBOX_KUBECONFIG, SANDBOX_IMAGE_*, SANDBOX_KERNEL_BACKEND=kubernetes);
                    $SANDBOX_E2E_SECCOMP_PROFILE, if set, becomes every kernel's
                    KubernetesSandbox.seccomp_profile (default: RuntimeDefault).
  k8s_kernel        per test: start Sandbox kernels through jupyter_client.KernelManager (kernelspecs
                    written to a temporary JUPYTER_PATH, never the user's); shut down afterwards.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kernels import run_cell, write_kernelspecs

__all__ = [
    "rbac_applied",
    "sa_kubeconfig",
    "sa_api",
    "kernel_env",
    "k8s_kernel",
]  # what conftest imports (start_kernel, stop_kernel: by name)

REPO = Path(__file__).resolve().parents[2]
SA_NAMESPACE = "sandbox-kernel-system"
SA_NAME = "sandbox-kernel"
SA_USER = f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"
KERNEL_ID_LABEL = "sandbox-kernel/kernel-id"


# ---------------------------------------------------------------------------------------------
# Plain helpers (also used by the unittest-style conformance suite).


def find_kubectl() -> str:
    """The kubectl of the test cluster build ($KUBECTL, else the cluster cache's, else PATH's)."""
    import glob
    import shutil

    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    for cache in filter(
        None, [os.environ.get("SANDBOX_CLUSTER_CACHE", ""), str(Path.home() / ".cache/sandbox-kernel/cluster")]
    ):
        if os.access(os.path.join(cache, "bin", "current", "kubectl"), os.X_OK):
            return os.path.join(cache, "bin", "current", "kubectl")
        found = sorted(glob.glob(os.path.join(cache, "bin", "*", "kubectl")), key=os.path.getmtime)
        if found:
            return found[-1]
    found = shutil.which("kubectl")
    if not found:
        pytest.fail("no kubectl: set KUBECTL or build the test cluster (tests/cluster/up)", pytrace=False)
    return found


def apply_rbac(admin_kubeconfig: str) -> None:
    """`kubectl apply -k k8s/rbac/`, the README's step: the RBAC together with its admission policies.

    The policies are what make the RBAC safe (k8s/rbac/admission-policy.yaml), so every test
    that runs as the service account runs under them, as a deployment would.
    """
    result = subprocess.run(
        [find_kubectl(), "--kubeconfig", admin_kubeconfig, "apply", "-k", str(REPO / "k8s" / "rbac")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl apply -k k8s/rbac/ failed:\n{result.stdout}\n{result.stderr}", pytrace=False)


def mint_sa_kubeconfig(admin_kubeconfig: str, out: Path) -> str:
    """A kubeconfig for the service account, via tests/cluster/kubeconfig-for (TokenRequest)."""
    result = subprocess.run(
        [str(REPO / "tests" / "cluster" / "kubeconfig-for"), SA_NAMESPACE, SA_NAME, str(out), "4h"],
        env={**os.environ, "SANDBOX_KUBECONFIG": admin_kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"could not mint a service-account kubeconfig: {result.stderr}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


def kernel_environment(admin_kubeconfig: str, images: dict[str, str], work: Path) -> dict[str, str]:
    """Environment for kernels and `sandbox-kernel` commands running as the service account."""
    apply_rbac(admin_kubeconfig)
    sa = mint_sa_kubeconfig(admin_kubeconfig, work / "sa.kubeconfig")
    # The kernels run with the backend's default seccomp profile (RuntimeDefault, what every cluster
    # gets); SANDBOX_E2E_SECCOMP_PROFILE=profiles/sandbox-kernel.json runs the whole suite under the
    # project's Localhost profile (tests/cluster/up installs it; tests/security/test_kubernetes_seccomp.py
    # and the selftest test use it either way).
    profile = os.environ.get("SANDBOX_E2E_SECCOMP_PROFILE", "")
    specs = write_kernelspecs(
        work / "jupyter", "kubernetes", [f"--KubernetesSandbox.seccomp_profile={profile}"] if profile else None
    )
    env = {
        "SANDBOX_KUBECONFIG": sa,
        "SANDBOX_KERNEL_BACKEND": "kubernetes",
        "JUPYTER_PATH": str(specs),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    env.update(
        {k: v for k, v in images.items() if k in ("SANDBOX_IMAGE_PYTHON", "SANDBOX_IMAGE_NODE", "SANDBOX_IMAGE_BASH")}
    )
    return env


def images_from_cache() -> dict[str, str]:
    """SANDBOX_IMAGE_* from the environment, else from the cluster cache's images.env."""
    images: dict[str, str] = {}
    cache = Path(os.environ.get("SANDBOX_CLUSTER_CACHE") or Path.home() / ".cache/sandbox-kernel/cluster")
    env_file = cache / "images.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.startswith("SANDBOX_IMAGE_"):
                images[key.strip()] = value.strip()
    images.update({k: v for k, v in os.environ.items() if k.startswith("SANDBOX_IMAGE_")})
    return images


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def namespace_exists(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


# ---------------------------------------------------------------------------------------------
# Running kernels.


@dataclass
class Cell:
    """What one execute request produced: :func:`kernels.run_cell`'s reply and outputs."""

    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(o["text"] for o in self.outputs if o["type"] == "stream" and o["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(o["text"] for o in self.outputs if o["type"] == "stream" and o["name"] == "stderr")

    @property
    def result(self) -> str | None:
        for o in self.outputs:
            if o["type"] == "execute_result":
                return str(o["data"].get("text/plain"))
        return None

    @property
    def error(self) -> dict[str, Any] | None:
        for o in self.outputs:
            if o["type"] == "error":
                return o
        return None


@dataclass
class K8sKernel:
    """A running Sandbox kernel on the Kubernetes backend, and how to find its namespace."""

    km: KernelManager
    kc: Any
    kernel_id: str
    core: client.CoreV1Api

    def run(self, code: str, timeout: float = 90) -> Cell:
        reply, outputs = run_cell(self.kc, code, timeout)
        return Cell(reply, [{**o, "msg_type": o["type"]} for o in outputs])  # the e2e tests read msg_type

    def namespace(self) -> str:
        """The kernel's sandbox namespace (found by its kernel-id label, as an admin)."""
        items = self.core.list_namespace(label_selector=f"{KERNEL_ID_LABEL}={self.kernel_id}").items
        live = [n.metadata.name for n in items if n.metadata.deletion_timestamp is None]
        assert len(live) == 1, f"expected one namespace for kernel {self.kernel_id}, found {live}"
        return live[0]

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.pid)  # type: ignore[union-attr]

    def drain_iopub(self) -> None:
        while True:
            try:
                self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                return


@pytest.fixture(scope="session")
def rbac_applied(kubeconfig: str) -> None:
    apply_rbac(kubeconfig)


@pytest.fixture(scope="session")
def sa_kubeconfig(kubeconfig: str, rbac_applied: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    return mint_sa_kubeconfig(kubeconfig, tmp_path_factory.mktemp("sa") / "sa.kubeconfig")


@pytest.fixture(scope="session")
def sa_api(sa_kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=sa_kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def kernel_env(
    kubeconfig: str, sandbox_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return kernel_environment(kubeconfig, sandbox_images, tmp_path_factory.mktemp("k8s-kernels"))


def start_kernel(
    kernel_env: dict[str, str],
    core_v1: client.CoreV1Api,
    language: str = "python",
    *argv: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120,
    cwd: Path | None = None,
) -> K8sKernel:
    """Start a Sandbox kernel on the cluster through jupyter_client.KernelManager; wait until it is ready.
    ``cwd``: the notebook's directory (default: a new empty one, so nothing is copied in)."""
    kernel_id = str(uuid.uuid4())
    spec_manager = KernelSpecManager(kernel_dirs=[str(Path(kernel_env["JUPYTER_PATH"]) / "kernels")])
    km = KernelManager(kernel_name=f"sandbox-{language}", kernel_spec_manager=spec_manager)
    km.shutdown_wait_time = 60.0  # shutdown deletes a namespace and waits for it
    km.start_kernel(
        env={**os.environ, **kernel_env, "SANDBOX_KERNEL_ID": kernel_id, **(env or {})},
        extra_arguments=list(argv),
        cwd=str(cwd or tempfile.mkdtemp(prefix="notebook-")),
    )
    kc = km.client()
    kc.start_channels()
    kernel = K8sKernel(km, kc, kernel_id, core_v1)
    try:
        kc.wait_for_ready(timeout=ready_timeout)
    except BaseException:
        stop_kernel(kernel)
        raise
    return kernel


def stop_kernel(kernel: K8sKernel) -> None:
    """Shut the kernel down; delete whatever namespace of it is left (best effort)."""
    try:
        kernel.kc.stop_channels()
        if kernel.km.is_alive():
            kernel.km.shutdown_kernel(now=False)
    except Exception:  # noqa: BLE001 - best effort; gc and namespace cleanup below
        pass
    for ns in kernel.core.list_namespace(label_selector=f"{KERNEL_ID_LABEL}={kernel.kernel_id}").items:
        try:
            kernel.core.delete_namespace(ns.metadata.name)
        except ApiException:
            pass


@pytest.fixture
def k8s_kernel(
    kernel_env: dict[str, str], core_v1: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., K8sKernel]]:
    """Start kernels: ``k8s_kernel("python", "--KubernetesSandbox.heartbeat_ttl=5", env={...})``;
    ``cwd``: the notebook's directory (default: an empty one, so nothing is copied in)."""
    started: list[K8sKernel] = []

    def start(
        language: str = "python",
        *argv: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = 120,
        cwd: Path | None = None,
    ) -> K8sKernel:
        kernel = start_kernel(
            kernel_env,
            core_v1,
            language,
            *argv,
            env=env,
            ready_timeout=ready_timeout,
            cwd=cwd or tmp_path_factory.mktemp("notebook"),
        )
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        stop_kernel(kernel)


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``sandbox-kernel ARGS`` as a separate process with ``env`` (e.g. as the service account)."""
    return subprocess.run(
        [sys.executable, "-m", "sandbox_kernel.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
    )
