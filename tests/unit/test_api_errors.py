"""The API boundary (kubernetes/api.py) keeps the server's answer on the error (ApiStatus: HTTP
status, Status.reason, Status.message), and callers branch on those fields, not on message text.
No cluster: the client's own ApiException is built from the bytes a server sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException
from websocket import WebSocketBadStatusException

from sandbox_kernel import errors
from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import (
    AdmissionError,
    ApiStatus,
    ClusterNotConfigured,
    ClusterUnreachable,
    SandboxError,
    SandboxStartError,
    SandboxUnavailable,
    Unschedulable,
)
from sandbox_kernel.kubernetes import api as api_module
from sandbox_kernel.kubernetes import manifests, provision
from sandbox_kernel.kubernetes.api import KubernetesApi, api_status, is_already_exists, is_not_found
from sandbox_kernel.kubernetes.pod_status import start_problem
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES
from sandbox_kernel.session import ErrorOutput

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def status_body(code: int, reason: str, message: str) -> str:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}
    )


def answer(code: int, reason: str, message: str, phrase: str = "") -> ApiException:
    return ApiException(status=code, reason=phrase or reason, body=status_body(code, reason, message))


@pytest.fixture
def api(tmp_path: Path) -> KubernetesApi:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return KubernetesApi(str(path))


def test_api_status_reads_the_status_body() -> None:
    exc = answer(409, "AlreadyExists", 'namespaces "sandbox-1" already exists', "Conflict")
    assert api_status(exc) == ApiStatus(409, "AlreadyExists", 'namespaces "sandbox-1" already exists')


def test_api_status_of_an_answer_that_is_no_status() -> None:
    assert api_status(ApiException(status=502, reason="Bad Gateway", body="<html>bad gateway</html>")) == ApiStatus(
        502, "", "<html>bad gateway</html>"
    )
    assert api_status(ApiException(status=503, reason="Service Unavailable")) == ApiStatus(
        503, "", "Service Unavailable"
    )
    assert (
        api_status(ApiException(status=500, reason="x", body=b'["not", "a status"]')).message == '["not", "a status"]'
    )


@pytest.mark.parametrize(
    "code,reason,error,words",
    [
        (401, "Unauthorized", SandboxUnavailable, "rejected the kernel's credentials"),
        (403, "Forbidden", AdmissionError, "Kubernetes refused to create Pod p in namespace n: "),
        (422, "Invalid", AdmissionError, "Kubernetes rejected the request to create Pod p in namespace n as invalid: "),
        (404, "NotFound", SandboxStartError, "Could not create Pod p in namespace n: "),
        (409, "AlreadyExists", SandboxStartError, "(HTTP 409)"),
        (429, "TooManyRequests", ClusterUnreachable, "failed to create Pod p in namespace n (429: "),
        (500, "InternalError", ClusterUnreachable, "The kernel keeps running"),
    ],
)
def test_every_answer_keeps_its_status_and_gets_a_hint(
    api: KubernetesApi,
    code: int,
    reason: str,
    error: type[SandboxError],
    words: str,
) -> None:
    translated = api._translate("create Pod p in namespace n", answer(code, reason, "the server's words"))
    assert type(translated) is error
    assert translated.api_status == ApiStatus(code, reason, "the server's words")
    assert words in str(translated) and "the server's words" in str(translated)
    assert translated.hint and "\n" not in translated.hint


def test_no_answer_is_unreachable_without_a_status(api: KubernetesApi) -> None:
    translated = api._translate("read pod p", ApiException(status=0, reason="connection reset"))
    assert isinstance(translated, ClusterUnreachable) and translated.api_status is None


def test_a_refused_stream_upgrade_keeps_its_status(api: KubernetesApi) -> None:
    body = status_body(
        403, "Forbidden", 'pods "p" is forbidden: User "x" cannot create resource "pods/attach"'
    ).encode()
    with pytest.raises(AdmissionError) as caught:
        with api._calling("attach to pod p in namespace n", unreachable=True):
            raise WebSocketBadStatusException("Handshake status %d %s", 403, "Forbidden", resp_body=body)
    assert caught.value.api_status is not None
    assert (caught.value.api_status.code, caught.value.api_status.reason) == (403, "Forbidden")
    assert isinstance(caught.value.__cause__, WebSocketBadStatusException)


def test_not_found_and_already_exists_are_told_by_status_not_by_text() -> None:
    assert is_not_found(SandboxStartError("x", api_status=ApiStatus(404, "NotFound", 'pods "p" not found')))
    assert not is_not_found(SandboxStartError('pods "p" not found (NotFound)'))
    assert is_already_exists(SandboxStartError("x", api_status=ApiStatus(409, "AlreadyExists", "exists")))
    assert not is_already_exists(
        SandboxStartError("x", api_status=ApiStatus(409, "Conflict", "the object has been modified"))
    )
    assert not is_already_exists(SandboxStartError('namespaces "sandbox-1" already exists'))


class NamespaceCreates:
    """Answers the namespace creates with ``refusals`` in turn, then creates everything."""

    def __init__(self, *refusals: SandboxError) -> None:
        self.refusals = list(refusals)
        self.namespaces: list[str] = []

    def whoami(self) -> str:
        return ""

    def create(self, obj: dict[str, Any], **settle: float) -> dict[str, Any]:
        if obj["kind"] == "Namespace":
            self.namespaces.append(obj["metadata"]["name"])
            if self.refusals:
                raise self.refusals.pop(0)
        return obj

    def delete_namespace(self, name: str) -> bool:
        return True


def create(api: NamespaceCreates) -> manifests.SandboxIdentity:
    ident, _objects = provision.create_namespace_objects(
        api,
        KubernetesSandbox(),
        LANGUAGES["python"],
        Sandbox().limits(),
        "kernel-1",  # type: ignore[arg-type]
    )
    return ident


def test_a_taken_namespace_name_is_drawn_again() -> None:
    api = NamespaceCreates(SandboxStartError("taken", api_status=ApiStatus(409, "AlreadyExists", "exists")))
    ident = create(api)
    assert len(api.namespaces) == 2 and api.namespaces[0] != api.namespaces[1] == ident.namespace


def test_a_conflict_or_words_alone_are_not_a_taken_name() -> None:
    conflict = SandboxStartError("conflict", api_status=ApiStatus(409, "Conflict", "the object has been modified"))
    with pytest.raises(SandboxStartError, match="conflict"):
        create(NamespaceCreates(conflict))
    with pytest.raises(SandboxStartError, match="already exists"):
        create(NamespaceCreates(SandboxStartError('namespaces "x" already exists')))


def test_an_unschedulable_pod_is_its_own_error() -> None:
    pod = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient memory.",
                }
            ]
        }
    }
    problem = start_problem(pod, "python:3.12")
    assert isinstance(problem, Unschedulable) and isinstance(problem, SandboxStartError)
    assert str(problem).startswith("No node can run the sandbox pod: 0/1 nodes are available")


def test_no_cluster_configured_is_its_own_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterNotConfigured, match="No Kubernetes cluster is configured") as caught:
        api_module._load_configuration("", "")
    assert caught.value.ename == "SandboxUnavailable"


def every_error_class() -> list[type[SandboxError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, SandboxError)]


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__name__)
def test_every_error_has_a_one_line_hint(cls: type[SandboxError]) -> None:
    assert cls.hint.strip() and "\n" not in cls.hint and len(cls.hint) <= 120, cls.hint


def test_the_kernel_shows_the_hint_on_a_line_of_its_own() -> None:
    error = ErrorOutput.from_exception(AdmissionError("Kubernetes refused to create Pod p: exceeded quota"))
    assert error.evalue == "Kubernetes refused to create Pod p: exceeded quota"
    assert error.traceback == [
        "AdmissionError: Kubernetes refused to create Pod p: exceeded quota",
        f"Hint: {AdmissionError.hint}",
    ]
    given = ErrorOutput.from_exception(SandboxStartError("x", hint="Do this."))
    assert given.traceback[-1] == "Hint: Do this."


def test_no_caller_branches_on_the_text_of_an_error() -> None:
    """Item 3 of issue 15: callers read the API server's status and reason on the error
    (``exc.api_status``, :func:`is_already_exists`), never words of its message."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "sandbox_kernel"
    branching = re.compile(r"""["'][^"'\n]+["']\s+(?:not\s+)?in\s+str\(exc\)""")
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if branching.search(line)
    ]
    # Not an API answer: the kubernetes client's ConfigException has only its text, which names
    # the context it could not find; it picks which setting the ConfigError names, nothing more.
    exempt = ['kubernetes/api.py:"KubernetesSandbox.context" if context and "context" in str(exc).lower()']
    found = [f for f in found if not any(f.startswith(e.split(":")[0]) and e.split(":", 1)[1] in f for e in exempt)]
    assert found == []
    assert branching.search('if "already exists" not in str(exc):')  # what it looks for
