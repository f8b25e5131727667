"""The early sandbox start (sandbox_kernel/kubernetes/early.py): configuration it reads, and when a
session takes its sandbox over. No cluster: the API object is a stand-in that records calls."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.kubernetes import early, manifests
from sandbox_kernel.kubernetes.provision import PreparedSandbox, expected_objects
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox, current_kernel_id
from sandbox_kernel.languages import LANGUAGES

IDENT = manifests.SandboxIdentity(
    namespace="sandbox-0123abcd",
    kernel_id="kernel-1",
    language="python",
    owner="sandbox-kernel",
    user="system:serviceaccount:sandbox-kernel-system:sandbox-kernel",
    created="2025-01-02T03:04:05Z",
)
RENEW = "2025-01-02T03:04:05.000000Z"


class RecordingApi:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_namespace(self, name: str) -> bool:
        self.deleted.append(name)
        return True


def prepared_for(
    settings: KubernetesSandbox, limits: Any, api: RecordingApi, kernel_id: str = "kernel-1"
) -> PreparedSandbox:
    objects = expected_objects(settings, LANGUAGES["python"], limits, IDENT, RENEW)
    return PreparedSandbox(
        api,
        settings.kubeconfig,
        settings.context,
        IDENT,
        RENEW,
        "sandbox-1",
        objects.in_order(),
        0.0,  # type: ignore[arg-type]
    )


def claim(
    session: KubernetesSandboxSession, prepared: PreparedSandbox, monkeypatch: pytest.MonkeyPatch
) -> PreparedSandbox | None:
    future: Future[PreparedSandbox] = Future()
    future.set_result(prepared)
    monkeypatch.setattr(early, "_pending", future)
    return asyncio.run(session._claim_early())


def test_config_files_then_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sandbox_kernel_config.py").write_text(
        "c.SandboxKernel.backend = 'kubernetes'\nc.Sandbox.memory_limit = '128Mi'\nc.Sandbox.cpu_limit = '250m'\n"
    )
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    config = early.load_config(
        ["-f", "/run/kernel-abc.json", "--SandboxKernel.language_name=node", "--Sandbox.cpu_limit=100m"]
    )
    assert config.SandboxKernel.backend == "kubernetes"
    assert config.SandboxKernel.language_name == "node"
    limits = Sandbox(config=config).limits()
    assert (limits.memory, limits.cpu) == ("128Mi", "100m")


def test_no_early_start_for_the_local_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOX_KERNEL_BACKEND", raising=False)
    monkeypatch.setattr(early, "_pending", None)
    early.begin(["-f", "/run/kernel-abc.json", "--SandboxKernel.backend=local"])
    assert early.claim() is None


def test_unknown_arguments_mean_no_early_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_KERNEL_BACKEND", "kubernetes")
    monkeypatch.setattr(early, "_pending", None)
    early.begin(["--no-such-flag", "-f", "/run/kernel-abc.json"])
    assert early.claim() is None


def test_random_kernel_id_is_one_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOX_KERNEL_ID", raising=False)
    monkeypatch.setattr("sys.argv", ["x", "-f", "/tmp/tmpab12cd.json"])
    assert current_kernel_id() == current_kernel_id()


def test_a_matching_early_sandbox_is_taken_over(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, limits, api = KubernetesSandbox(kubeconfig="/k"), Sandbox().limits(), RecordingApi()
    session = KubernetesSandboxSession(
        LANGUAGES["python"], limits, KubernetesSandbox(kubeconfig="/k"), kernel_id="kernel-1"
    )
    prepared = prepared_for(settings, limits, api)
    assert claim(session, prepared, monkeypatch) is prepared
    assert api.deleted == []
    assert early.claim() is None  # once per process


@pytest.mark.parametrize(
    "differs",
    [
        {"settings": {"network_policy_wait": 0}},
        {"settings": {"kubeconfig": "/other"}},
        {"limits": {"memory_limit": "200Mi"}},
        {"kernel_id": "kernel-2"},
    ],
)
def test_any_difference_deletes_the_early_sandbox(differs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    api = RecordingApi()
    prepared = prepared_for(KubernetesSandbox(kubeconfig="/k"), Sandbox().limits(), api)
    session = KubernetesSandboxSession(
        LANGUAGES["python"],
        Sandbox(**differs.get("limits", {})).limits(),
        KubernetesSandbox(**{"kubeconfig": "/k", **differs.get("settings", {})}),
        kernel_id=differs.get("kernel_id", "kernel-1"),
    )
    assert claim(session, prepared, monkeypatch) is None
    assert api.deleted == [IDENT.namespace]


def test_a_failed_early_start_leaves_it_to_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    session = KubernetesSandboxSession(
        LANGUAGES["python"], Sandbox().limits(), KubernetesSandbox(kubeconfig="/k"), kernel_id="kernel-1"
    )
    future: Future[PreparedSandbox] = Future()
    future.set_exception(RuntimeError("cluster away"))
    monkeypatch.setattr(early, "_pending", future)
    assert asyncio.run(session._claim_early()) is None
