"""A sandbox pod the session could not delete is remembered and deleted later, never forgotten
(a forgotten pod can hold the namespace's quota). The API object is a stand-in recording calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import ClusterUnreachable, SandboxStartError
from sandbox_kernel.kubernetes import manifests
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

IDENT = manifests.SandboxIdentity("sandbox-0123abcd", "kernel-1", "python", "owner", "user", "2025-01-02T03:04:05Z")


class ApiWithBadImages:
    """Every pod waits in ErrImagePull; pod deletes fail while ``deletes_fail`` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.deletes_fail = True

    def read_namespace(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}}

    def create(self, obj: dict[str, Any], **settle: float) -> dict[str, Any]:
        self.calls.append(f"create {obj['kind']} {obj['metadata']['name']}")
        return obj

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        waiting = {"reason": "ErrImagePull", "message": "not found"}
        return {
            "metadata": {"name": name},
            "status": {
                "phase": "Pending",
                "containerStatuses": [{"name": manifests.CONTAINER_NAME, "state": {"waiting": waiting}}],
            },
        }

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.calls.append(f"delete pod {name}")
        if self.deletes_fail:
            raise ClusterUnreachable("The Kubernetes API server could not be reached.")
        return True

    def delete_namespace(self, name: str) -> bool:
        self.calls.append(f"delete namespace {name}")
        return True


def test_a_pod_whose_delete_failed_is_deleted_before_the_next_one_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    session = KubernetesSandboxSession(
        LANGUAGES["python"], Sandbox().limits(), KubernetesSandbox(), kernel_id="kernel-1"
    )
    api = ApiWithBadImages()
    session._api, session._ident = api, IDENT  # type: ignore[assignment]

    async def main() -> None:
        with pytest.raises(SandboxStartError, match="could not be pulled"):
            await session._spawn()
        assert session._stale_pods == {"sandbox-1"}
        assert api.calls == ["create Pod sandbox-1", "delete pod sandbox-1"]
        api.deletes_fail = False
        api.calls.clear()
        with pytest.raises(SandboxStartError, match="could not be pulled"):
            await session._spawn()
        assert api.calls == ["delete pod sandbox-1", "create Pod sandbox-2", "delete pod sandbox-2"]
        assert session._stale_pods == set()

    asyncio.run(main())


def test_close_deletes_a_pod_whose_delete_failed() -> None:
    session = KubernetesSandboxSession(
        LANGUAGES["python"],
        Sandbox().limits(),
        KubernetesSandbox(shutdown_deadline=0.2),
        kernel_id="kernel-1",
    )
    api = ApiWithBadImages()
    session._api, session._ident = api, IDENT  # type: ignore[assignment]

    async def main() -> None:
        with pytest.raises(SandboxStartError):
            await session._spawn()
        api.deletes_fail = False
        api.calls.clear()
        await session.close()

    asyncio.run(main())
    assert api.calls[:2] == ["delete pod sandbox-1", f"delete namespace {IDENT.namespace}"]
