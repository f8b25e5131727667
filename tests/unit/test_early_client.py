"""The early start's own API client (sandbox_kernel/kubernetes/early_client.py): which kubeconfigs it
speaks for (the others are left to the kubernetes client), and that the early start's path imports
no kubernetes client. Its requests are exercised against the real cluster by every Jupyter kernel
of the e2e suite (the early start makes their sandboxes)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel.kubernetes import early_client


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A self-signed certificate and its key (openssl), as a kubeconfig embeds them."""
    folder = tmp_path_factory.mktemp("pki")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return {"cert": (folder / "cert.pem").read_bytes(), "key": (folder / "key.pem").read_bytes()}


def kubeconfig(tmp_path: Path, cluster: dict, user: dict) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_client_certificate_kubeconfig_as_tests_cluster_up_writes_it(tmp_path: Path, pki: dict[str, bytes]) -> None:
    path = kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(pki["cert"])},
        {"client-certificate-data": b64(pki["cert"]), "client-key-data": b64(pki["key"])},
    )
    client = early_client.connect(str(path), "")
    assert client is not None and client.host == "https://127.0.0.1:6443" and client.cluster.token == ""
    assert list(tmp_path.iterdir()) == [path]  # the key's temporary copy is gone


def test_a_service_account_token_kubeconfig_as_kubeconfig_for_writes_it(tmp_path: Path, pki: dict[str, bytes]) -> None:
    (tmp_path / "ca.crt").write_bytes(pki["cert"])
    (tmp_path / "token").write_text("abc.def\n")
    path = kubeconfig(
        tmp_path, {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt"}, {"tokenFile": "token"}
    )
    client = early_client.connect(str(path), "")
    assert client is not None and client.cluster.token == "abc.def"


@pytest.mark.parametrize(
    "cluster, user",
    [
        ({"insecure-skip-tls-verify": True}, {"token": "t"}),
        ({"proxy-url": "http://proxy:3128"}, {"token": "t"}),
        ({}, {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}),
        ({}, {"auth-provider": {"name": "oidc"}}),
        ({}, {"username": "a", "password": "b"}),
        ({}, {"client-certificate-data": "eA=="}),  # a certificate without its key
    ],
)
def test_anything_else_is_left_to_the_kubernetes_client(
    tmp_path: Path, pki: dict[str, bytes], cluster: dict, user: dict
) -> None:
    path = kubeconfig(
        tmp_path, {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(pki["cert"]), **cluster}, user
    )
    assert early_client.connect(str(path), "") is None


def test_a_missing_file_or_context_is_left_to_the_kubernetes_client(tmp_path: Path, pki: dict[str, bytes]) -> None:
    assert early_client.connect(str(tmp_path / "nope"), "") is None
    path = kubeconfig(
        tmp_path, {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(pki["cert"])}, {"token": "t"}
    )
    assert early_client.connect(str(path), "other-context") is None
    assert early_client.connect(str(path), "c") is not None


def test_the_early_start_path_imports_no_kubernetes_client() -> None:
    """What early.py runs before ipykernel is imported: importing the kubernetes client cost 0.2-0.6 s of it."""
    code = (
        "import sys\nfrom sandbox_kernel.kubernetes import early, provision, early_client\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'urllib3', 'requests', 'websocket'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
