"""The namespace prefix in k8s/rbac/admission-policy.yaml follows KubernetesSandbox.namespace_prefix:
it is written in the two PREFIX variables only, every name check reads it from there, and a kernel
with another prefix that the policy refuses says what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import AdmissionError, ApiStatus, SandboxError
from sandbox_kernel.kubernetes import provision
from sandbox_kernel.kubernetes.settings import DEFAULT_NAMESPACE_PREFIX, KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

POLICY_FILE = Path(__file__).resolve().parents[2] / "k8s" / "rbac" / "admission-policy.yaml"


def policies() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(POLICY_FILE.read_text()) if d and d["kind"] == "ValidatingAdmissionPolicy"]
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_the_default_prefix_is_what_the_policy_admits() -> None:
    assert KubernetesSandbox().namespace_prefix == DEFAULT_NAMESPACE_PREFIX
    prefixes = {
        name: [v["expression"] for v in spec.get("variables", []) if v["name"] == "prefix"]
        for name, spec in policies().items()
    }
    assert {name: found for name, found in prefixes.items() if found} == {
        "sandbox-kernel-namespaces": [f"'{DEFAULT_NAMESPACE_PREFIX}'"],
        "sandbox-kernel-rolebindings": [f"'{DEFAULT_NAMESPACE_PREFIX}'"],
    }


def test_the_prefix_is_written_nowhere_else_in_the_policies() -> None:
    for name, spec in policies().items():
        rest = [s for s in strings(spec) if s != f"'{DEFAULT_NAMESPACE_PREFIX}'"]
        assert not [s for s in rest if f"'{DEFAULT_NAMESPACE_PREFIX}'" in s or f"{DEFAULT_NAMESPACE_PREFIX}*" in s], (
            name
        )
    text = "\n".join(strings(policies()["sandbox-kernel-namespaces"]))
    assert text.count("startsWith(variables.prefix)") == 3  # new and old object, and the create check
    assert "startsWith(variables.prefix)" in "\n".join(strings(policies()["sandbox-kernel-rolebindings"]))


class RefusingApi:
    """An API server whose admission policy refuses every namespace."""

    def whoami(self) -> str:
        return ""

    def create(self, obj: dict[str, Any], **settle: float) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        message = f"sandbox-kernel may only create namespaces named sandbox-*, not {name}"
        raise AdmissionError(
            f"Kubernetes refused to create Namespace {name}: {message}", api_status=ApiStatus(403, "Forbidden", message)
        )


def refusal(prefix: str) -> SandboxError:
    with pytest.raises(AdmissionError) as caught:
        provision.create_namespace_objects(
            RefusingApi(),
            KubernetesSandbox(namespace_prefix=prefix),
            LANGUAGES["python"],
            Sandbox().limits(),
            "k",  # type: ignore[arg-type]
        )
    return caught.value


def test_a_refused_namespace_of_another_prefix_names_the_policy_s_prefix_variables() -> None:
    hint = refusal("nb-").hint
    assert "PREFIX variables to 'nb-'" in hint and "admission-policy.yaml" in hint and "\n" not in hint
    assert refusal(DEFAULT_NAMESPACE_PREFIX).hint == AdmissionError.hint
