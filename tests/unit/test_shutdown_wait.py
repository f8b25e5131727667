"""How long kernel shutdown waits for the sandbox: the session says (KubernetesSandbox.shutdown_deadline
on Kubernetes), not a fixed 120 s. The API object is a stand-in recording calls; no cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.kubernetes import manifests
from sandbox_kernel.kubernetes.session import CLOSE_MARGIN, KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

IDENT = manifests.SandboxIdentity("sandbox-0123abcd", "kernel-1", "python", "owner", "user", "2025-01-02T03:04:05Z")


class NamespaceThatStays:
    """An API server on which a deleted namespace stays (say a finalizer holds it)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.calls.append(f"delete pod {name}")
        return True

    def delete_namespace(self, name: str) -> bool:
        self.calls.append(f"delete namespace {name}")
        return True

    def read_namespace(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "deletionTimestamp": "2025-01-02T03:04:06Z"}}


def session(**settings: Any) -> KubernetesSandboxSession:
    return KubernetesSandboxSession(
        LANGUAGES["python"], Sandbox().limits(), KubernetesSandbox(**settings), kernel_id="kernel-1"
    )


def test_the_session_s_close_timeout_follows_shutdown_deadline() -> None:
    assert session(shutdown_deadline=300.0).close_timeout == 300.0 + CLOSE_MARGIN
    assert session(shutdown_deadline=5.0).close_timeout == 5.0 + CLOSE_MARGIN


def test_kernel_shutdown_waits_as_long_as_the_session_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_KERNEL_BACKEND", "kubernetes")
    from traitlets.config import Config

    from sandbox_kernel.kernel import SandboxKernel

    kernel = SandboxKernel(config=Config({"KubernetesSandbox": {"shutdown_deadline": 300.0}}))
    waited: list[float] = []

    def on_shell_loop(coro: Any, timeout: float) -> None:
        coro.close()
        waited.append(timeout)

    monkeypatch.setattr(kernel, "_on_shell_loop", on_shell_loop)
    assert asyncio.run(kernel.do_shutdown(False)) == {"status": "ok", "restart": False}
    assert waited == [300.0 + CLOSE_MARGIN]


def test_close_gives_up_on_a_namespace_that_stays_after_shutdown_deadline(caplog: pytest.LogCaptureFixture) -> None:
    s = session(shutdown_deadline=0.5)
    api = NamespaceThatStays()
    s._api, s._ident, s._last_pod = api, IDENT, "sandbox-1"  # type: ignore[assignment]
    began = time.monotonic()
    asyncio.run(s.close())
    took = time.monotonic() - began
    assert 0.5 <= took < 0.5 + 1.0, took
    assert api.calls == ["delete pod sandbox-1", f"delete namespace {IDENT.namespace}"]
    assert "still exists 0.5 s after deletion was requested" in caplog.text
