"""The API server's answers on the real cluster reach the project's errors whole: the HTTP status,
Status.reason and Status.message on ``err.api_status``, and a hint for what to do next."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from fixtures_kubernetes import KERNEL_ID_LABEL
from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import AdmissionError, SandboxStartError
from sandbox_kernel.kubernetes.api import KubernetesApi, is_already_exists
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES
from sandbox_kernel.session import ErrorOutput

pytestmark = pytest.mark.cluster


def test_a_namespace_the_admission_policy_forbids_keeps_its_status_and_names_the_prefix_variables(
    sa_kubeconfig: str,
    core_v1: client.CoreV1Api,
) -> None:
    settings = KubernetesSandbox(kubeconfig=sa_kubeconfig, namespace_prefix="nb-")
    session = KubernetesSandboxSession(LANGUAGES["python"], Sandbox().limits(), settings, kernel_id="prefix-refused")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(AdmissionError) as refused:
            loop.run_until_complete(session.start())
    finally:
        loop.run_until_complete(session.close())
        loop.close()
    status = refused.value.api_status
    assert status is not None and (status.code, status.reason) == (403, "Forbidden")
    assert "sandbox-kernel may only create namespaces named sandbox-*, not nb-" in status.message
    assert str(refused.value).startswith("Kubernetes refused to create Namespace nb-") and status.message in str(
        refused.value
    )
    assert "PREFIX variables to 'nb-'" in refused.value.hint
    shown = ErrorOutput.from_exception(refused.value)
    assert shown.traceback == [f"AdmissionError: {refused.value}", f"Hint: {refused.value.hint}"]
    assert core_v1.list_namespace(label_selector=f"{KERNEL_ID_LABEL}=prefix-refused").items == []


def test_a_taken_name_an_invalid_object_and_a_missing_one(kubeconfig: str, namespace: str) -> None:
    api = KubernetesApi(kubeconfig)
    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "twice", "namespace": namespace},
    }
    api.create(config_map)
    with pytest.raises(SandboxStartError) as taken:
        api.create(config_map)
    assert is_already_exists(taken.value)
    assert taken.value.api_status is not None and taken.value.api_status.message == 'configmaps "twice" already exists'
    assert "(HTTP 409)" in str(taken.value) and "Another client" in taken.value.hint

    invalid = {**config_map, "metadata": {"name": "Not_A_Name", "namespace": namespace}}
    with pytest.raises(AdmissionError) as rejected:
        api.create(invalid)
    assert rejected.value.api_status is not None and (
        rejected.value.api_status.code,
        rejected.value.api_status.reason,
    ) == (422, "Invalid")
    assert "as invalid" in str(rejected.value) and "Not_A_Name" in rejected.value.api_status.message

    assert api.read_pod(namespace, "no-such-pod") is None
    assert api.delete_pod(namespace, "no-such-pod") is False
