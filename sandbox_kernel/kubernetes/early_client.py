"""The early start's own small API client: the few requests that make a sandbox, over ``http.client``.

The early start (:mod:`.early`) creates a sandbox while the kernel process still imports
ipykernel. Importing the ``kubernetes`` client first cost 0.2–0.6 s of that head start (its
configuration loader alone pulls in requests, oauthlib, google-auth and pydantic), before the
first request. This client uses the standard library and PyYAML only, for exactly what
:func:`.provision.create_namespace_objects` needs: who am I, create an object, delete a
namespace. It reads the same kubeconfig the same way as :func:`.api._load_configuration`
(explicit file → in-cluster service account → ``$KUBECONFIG`` / ``~/.kube/config``), with TLS
verified against the cluster's CA, and a client certificate or a bearer token. Anything else a
kubeconfig may ask for (exec plugins, auth providers, proxies, basic auth) makes :func:`connect`
return None, and the early start uses :class:`.api.KubernetesApi` as before. Answers are
translated by :mod:`.answers`, as the main client's are.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import AdmissionError, SandboxError, SandboxStartError
from . import answers

TIMEOUT = 10.0
"""Seconds for one request (connect and answer)."""

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Cluster:
    """Where the API server is and how to prove who we are (what a kubeconfig context says)."""

    server: str
    context: ssl.SSLContext
    token: str = ""


class EarlyClient:
    """Blocking requests to one API server; a connection per thread (the creates run in parallel)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        parts = urlsplit(cluster.server)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https server: {cluster.server}")
        self.host = cluster.server
        self._address = (parts.hostname, parts.port or 443)
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(*self._address, timeout=TIMEOUT, context=self.cluster.context)
            self._local.conn = conn
        return conn

    def _request(self, action: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "sandbox-kernel-early",
        }
        if self.cluster.token:
            headers["Authorization"] = f"Bearer {self.cluster.token}"
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                # A kept-alive connection the server closed meanwhile fails once: try a new one.
                if attempt == 2 or not isinstance(
                    exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                ):
                    raise answers.unreachable(self.host, action, exc) from exc
        if not 200 <= response.status <= 299:
            raise answers.translate(self.host, action, answers.status_of(response.status, answer, response.reason))
        try:
            decoded = json.loads(answer) if answer else {}
        except ValueError as exc:
            raise SandboxStartError(f"Could not {action}: the API server's answer is not JSON") from exc
        return decoded if isinstance(decoded, dict) else {}

    # -- what the early start needs (the same signatures as KubernetesApi's) -------------------

    def whoami(self) -> str:
        """The user name the API server knows us as (SelfSubjectReview); '' if unknown."""
        try:
            review = self._request(answers.WHOAMI_ACTION, "POST", answers.WHOAMI_PATH, answers.WHOAMI_BODY)
        except (AdmissionError, SandboxStartError):
            return ""
        return str(review.get("status", {}).get("userInfo", {}).get("username", ""))

    def create(self, obj: dict[str, Any], rbac_settle: float = 0.0, account_settle: float = 0.0) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        namespace = meta.get("namespace", "")
        action = f"create {kind} {meta['name']}" + (f" in namespace {namespace}" if namespace else "")
        path = answers.PATHS[kind].format(namespace=quote(namespace, safe=""))
        return answers.settle(lambda: self._request(action, "POST", path, obj), rbac_settle, account_settle)

    def delete_namespace(self, name: str, resource_version: str = "") -> bool:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if resource_version:
            options["preconditions"] = {"resourceVersion": resource_version}
        try:
            self._request(f"delete namespace {name}", "DELETE", f"/api/v1/namespaces/{quote(name, safe='')}", options)
        except SandboxError as exc:
            if answers.is_not_found(exc):
                return False
            raise
        return True


def connect(kubeconfig: str, context: str) -> EarlyClient | None:
    """A client for the cluster the kernel will use, or None if this module cannot speak for it."""
    try:
        cluster = _cluster(kubeconfig, context)
        return EarlyClient(cluster) if cluster is not None else None
    except (OSError, ValueError, KeyError, TypeError, ssl.SSLError, ImportError):
        return None  # the kubernetes client reads it (and reports what is wrong with it)


def _cluster(kubeconfig: str, context: str) -> Cluster | None:
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT / "token").exists()
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig), context)
    if in_cluster and not context:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        tls = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        return Cluster(server, tls, (SERVICE_ACCOUNT / "token").read_text().strip())
    default = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    return _from_kubeconfig(Path(default), context)


def _named(items: Any, name: str, field: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item.get(field) or {})
    raise KeyError(name)


def _from_kubeconfig(path: Path, context_name: str) -> Cluster | None:
    import yaml  # PyYAML: a dependency of the kubernetes client, light (C loader)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(path.read_text(), Loader=loader)
    context = _named(doc.get("contexts"), context_name or doc["current-context"], "context")
    cluster = _named(doc.get("clusters"), context["cluster"], "cluster")
    user = _named(doc.get("users"), context["user"], "user") if context.get("user") else {}
    known_cluster = {
        "server",
        "certificate-authority",
        "certificate-authority-data",
        "insecure-skip-tls-verify",
        "extensions",
    }
    known_user = {
        "client-certificate",
        "client-certificate-data",
        "client-key",
        "client-key-data",
        "token",
        "tokenFile",
        "extensions",
    }
    if set(cluster) - known_cluster or set(user) - known_user or cluster.get("insecure-skip-tls-verify"):
        return None  # proxies, tls-server-name, exec plugins, auth providers...: the kubernetes client's job
    base = path.parent
    tls = ssl.create_default_context()
    if cluster.get("certificate-authority-data"):
        tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        tls.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
    cert = _material(user, "client-certificate", base)
    key = _material(user, "client-key", base)
    if cert is not None and key is not None:
        _load_chain(tls, cert, key)
    elif cert is not None or key is not None:
        return None
    token = str(user.get("token") or "")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return Cluster(str(cluster["server"]), tls, token)


def _material(user: dict[str, Any], name: str, base: Path) -> bytes | None:
    if user.get(f"{name}-data"):
        return base64.b64decode(user[f"{name}-data"])
    if user.get(name):
        return (base / str(user[name])).read_bytes()
    return None


def _load_chain(tls: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a client certificate only from files: private ones, deleted at once."""
    with tempfile.TemporaryDirectory(prefix="sandbox-kernel-tls-") as folder:  # mode 0700
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        for file, data in ((cert_file, cert), (key_file, key)):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        tls.load_cert_chain(str(cert_file), str(key_file))
