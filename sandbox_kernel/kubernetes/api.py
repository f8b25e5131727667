"""The one module that talks to the Kubernetes API server through the ``kubernetes`` client.

Every call goes through :meth:`KubernetesApi._calling`, which turns what the client raises into
the project's error tree (``errors.py``), by :mod:`.answers` (the one place answers are
translated, shared with the early start's :mod:`.early_client`). Reads and deletes of a missing
object (404) are not errors: they return ``None`` / ``False``.

Reads return plain JSON dicts (camelCase, as ``kubectl get -o json`` shows them). All methods
block; callers on an event loop run them in an executor.
"""

from __future__ import annotations

import json
import logging
import os
import select
import ssl
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream.ws_client import WSClient, get_websocket_url
from websocket import ABNF, WebSocketBadStatusException

from ..errors import (
    AdmissionError,
    ApiStatus,
    ClusterNotConfigured,
    ClusterUnreachable,
    ConfigError,
    SandboxError,
    SandboxStartError,
)
from . import answers
from .answers import is_already_exists, is_not_found, micro_time

__all__ = [
    "AttachStream",
    "Conflict",
    "KubernetesApi",
    "api_status",
    "is_already_exists",
    "is_not_found",
    "micro_time",
    "parse_time",
]

log = logging.getLogger("sandbox_kernel")

REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every ordinary request, so a dead API server is noticed quickly."""


def parse_time(text: str | None) -> datetime | None:
    """Parse a Kubernetes Time or MicroTime; ``None`` when absent."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def api_status(exc: ApiException) -> ApiStatus:
    """The API server's answer carried by the client's exception (see :func:`.answers.status_of`)."""
    return answers.status_of(int(exc.status or 0), exc.body, str(exc.reason or ""))


class Conflict(SandboxStartError):
    """The object changed since it was read (HTTP 409 on a write with a ``resourceVersion``)."""


READ_BYTES = 1 << 20
"""At most about this many bytes are taken off an attach stream's socket by one read."""

_STDOUT, _STDERR, _STATUS = 1, 2, 3  # the channel byte of each websocket frame (255: v5's close)


def _frame_waiting(ws: Any, timeout: float) -> bool:
    """Whether a frame can be read from ``ws`` (a ``WSClient``) within ``timeout`` seconds.

    TLS decrypts whole records, so frames may already sit decrypted in the SSL socket's buffer,
    invisible to ``poll`` on the socket underneath: ``pending()`` is asked first."""
    sock = ws.sock.sock if ws.sock is not None else None
    if sock is None or not ws.sock.connected:
        ws._connected = False
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(timeout * 1000))


def _read_frame(ws: Any) -> tuple[int | None, bytes]:
    """Read one frame: ``(channel, data)``, or ``(None, b"")`` when the server closed the stream.
    The v5 protocol's close of one channel (channel byte 255) carries no data for any channel."""
    opcode, frame = ws.sock.recv_data_frame(True)
    if opcode == ABNF.OPCODE_CLOSE:
        ws._connected = False
        return None, b""
    if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) or not frame.data:
        return 0, b""  # a ping, pong or empty frame: nothing for any channel
    data = bytes(frame.data)
    return data[0], data[1:]


class AttachStream:
    """A blocking attach stream to one container: stdin in, stdout and stderr out.

    Wraps the ``kubernetes`` client's ``WSClient`` (binary mode). :meth:`read` may be called
    from one thread while :meth:`write` is called from another (websocket-client locks sends).
    """

    def __init__(self, api: "KubernetesApi", ws: Any) -> None:
        self._api = api
        self._ws = ws
        self._closed = False

    def read(self, timeout: float = 0.5) -> tuple[bytes, bytes] | None:
        """Wait up to ``timeout`` s; return ``(stdout, stderr)`` bytes (maybe empty, at most about
        :data:`READ_BYTES`), or ``None`` once the server has closed the stream (the container
        ended, or the API server went away).

        Frames are read here, not by ``WSClient.update()``: that one reads every frame already
        waiting, and during a flood one keeps waiting, so a single call gathered tens of MiB in
        the kernel process (by repeated ``bytes +=``) before the attach reader could apply its
        bound. Here a read stops at :data:`READ_BYTES` and the rest stays in the socket."""
        with self._api._calling("read from the sandbox's attach stream", unreachable=True):
            ws = self._ws
            if self._closed or not ws.is_open():
                return None
            out: list[bytes] = []
            err: list[bytes] = []
            size = 0
            wait = timeout
            while size < READ_BYTES and _frame_waiting(ws, wait):
                wait = 0.0
                channel, data = _read_frame(ws)
                if channel is None:  # the server closed the stream
                    break
                if channel == _STDOUT:
                    out.append(data)
                elif channel == _STDERR:
                    err.append(data)
                elif channel == _STATUS and data:
                    log.debug("attach stream status: %s", data.decode("utf-8", "replace"))
                size += len(data)
            if not ws.is_open() and not out and not err:
                return None
            return b"".join(out), b"".join(err)

    def write(self, data: bytes) -> None:
        with self._api._calling("write to the sandbox's attach stream", unreachable=True):
            self._ws.write_stdin(data)

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001 - closing a broken websocket may fail any way
            pass


class KubernetesApi:
    """A connection to one cluster (kubeconfig context, or the pod's in-cluster identity).

    Requests go through the client's own transport (authentication, TLS, token refresh) but
    by URL path, with JSON dicts in and out: the generated typed API classes cost more than a
    second to import, which a kernel would pay on every start.
    """

    def __init__(self, kubeconfig: str = "", context: str = "", connections: int = 0) -> None:
        self.configuration = _load_configuration(kubeconfig, context)
        if connections:  # many threads at once (the controller): keep that many connections open
            self.configuration.connection_pool_maxsize = connections
        self.host = self.configuration.host
        self.api_client = client.ApiClient(self.configuration)

    # -- error translation: the one boundary ---------------------------------------------------

    @contextmanager
    def _calling(self, action: str, unreachable: bool = False) -> Iterator[None]:
        """Translate anything the client raises while doing ``action`` into a SandboxError."""
        try:
            yield
        except SandboxError:
            raise
        except ApiException as exc:
            raise self._translate(action, exc) from exc
        except WebSocketBadStatusException as exc:  # the HTTP answer to a stream's upgrade request
            body = exc.resp_body.decode("utf-8", "replace") if isinstance(exc.resp_body, bytes) else exc.resp_body
            raise self._translate(action, ApiException(status=exc.status_code, reason=str(exc), body=body)) from exc
        except (urllib3.exceptions.HTTPError, OSError, ConnectionError) as exc:
            raise ClusterUnreachable(self._unreachable(action, exc)) from exc
        except Exception as exc:  # other websocket-client errors and the like
            if unreachable:
                raise ClusterUnreachable(self._unreachable(action, exc)) from exc
            raise SandboxStartError(f"Could not {action}: {exc}") from exc

    def _unreachable(self, action: str, exc: BaseException) -> str:
        return str(answers.unreachable(self.host, action, exc))

    def _translate(self, action: str, exc: ApiException) -> SandboxError:
        return answers.translate(self.host, action, api_status(exc))

    # -- transport -----------------------------------------------------------------------------

    def _serialize(
        self, method: str, path: str, query: list[tuple[str, str]] | None, headers: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        _method, url, headers, _body, _post = self.api_client.param_serialize(
            method, path, query_params=query or [], header_params=headers, auth_settings=["BearerToken"]
        )
        return url, headers

    def _request(
        self,
        action: str,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API request; the decoded JSON answer, or a SandboxError."""
        with self._calling(action):
            url, headers = self._serialize(
                method, path, query, {"Accept": "application/json", "Content-Type": content_type}
            )
            response = self.api_client.call_api(method, url, headers, body, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response)
            return json.loads(data) if data else {}

    def request(self, action: str, method: str, path: str, query: Any = None, body: Any = None) -> dict[str, Any]:
        """Any JSON request by path: the study magics' reviews and dry runs (kubernetes/study.py)."""
        return self._request(action, method, path, query, body)

    def read_log(self, namespace: str, name: str, query: list[tuple[str, str]]) -> str:
        """A pod's container log as text (``kubectl logs``; ``query``: container, previous, limitBytes)."""
        with self._calling(f"read the log of pod {name} in namespace {namespace}"):
            url, headers = self._serialize("GET", _pod_path(namespace, name) + "/log", query, {"Accept": "*/*"})
            response = self.api_client.call_api("GET", url, headers, None, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response)
            return str(data.decode("utf-8", "replace"))

    # -- generic create ------------------------------------------------------------------------

    def create(self, obj: dict[str, Any], rbac_settle: float = 0.0, account_settle: float = 0.0) -> dict[str, Any]:
        """Create ``obj`` (a dict from :mod:`.manifests`); return what the server stored.

        A refusal that only means the namespace is brand new is retried for ``rbac_settle`` /
        ``account_settle`` seconds (:func:`.answers.settle`).
        """
        kind = obj["kind"]
        meta = obj["metadata"]
        namespace = meta.get("namespace", "")
        where = f" in namespace {namespace}" if namespace else ""
        action = f"create {kind} {meta['name']}{where}"
        path = answers.PATHS[kind].format(namespace=quote(namespace, safe=""))
        return answers.settle(lambda: self._request(action, "POST", path, body=obj), rbac_settle, account_settle)

    # -- identity ------------------------------------------------------------------------------

    def whoami(self) -> str:
        """The user name the API server knows this client as (SelfSubjectReview); '' if unknown."""
        try:
            review = self._request(answers.WHOAMI_ACTION, "POST", answers.WHOAMI_PATH, body=answers.WHOAMI_BODY)
        except (AdmissionError, SandboxStartError) as exc:
            log.info("identity unknown: %s", exc)
            return ""
        return str(review.get("status", {}).get("userInfo", {}).get("username", ""))

    # -- namespaces ----------------------------------------------------------------------------

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        return self._read(f"read namespace {name}", f"/api/v1/namespaces/{quote(name, safe='')}")

    def list_namespaces(self, selector: str) -> list[dict[str, Any]]:
        body = self._request(
            f"list namespaces ({selector})", "GET", "/api/v1/namespaces", [("labelSelector", selector)]
        )
        return list(body.get("items") or [])

    def delete_namespace(self, name: str, resource_version: str = "") -> bool:
        """Ask for the namespace and everything in it to be deleted; ``False`` if it was already gone.
        With ``resource_version``, only if it is still at that version (else :class:`Conflict`)."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if resource_version:
            options["preconditions"] = {"resourceVersion": resource_version}
        try:
            return self._delete(f"delete namespace {name}", f"/api/v1/namespaces/{quote(name, safe='')}", options)
        except SandboxError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 409:
                raise Conflict(str(exc)) from exc.__cause__
            raise

    # -- pods ----------------------------------------------------------------------------------

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(f"read pod {name} in namespace {namespace}", _pod_path(namespace, name))

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete the pod at once (grace period 0); ``False`` if it was already gone."""
        return self._delete(
            f"delete pod {name} in namespace {namespace}",
            _pod_path(namespace, name),
            {"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
        )

    def attach(self, namespace: str, pod: str, container: str) -> AttachStream:
        """Open an attach stream (stdin, stdout, stderr; no TTY) to a running container."""
        query = [("container", container), ("stdin", "true"), ("stdout", "true"), ("stderr", "true"), ("tty", "false")]
        with self._calling(f"attach to pod {pod} in namespace {namespace}", unreachable=True):
            url, headers = self._serialize("GET", _pod_path(namespace, pod) + "/attach", query, {})
            ws = WSClient(self.configuration, get_websocket_url(url), headers, capture_all=False, binary=True)
        return AttachStream(self, ws)

    # -- leases (heartbeat) --------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(f"read lease {name} in namespace {namespace}", _lease_path(namespace, name))

    def renew_lease(self, namespace: str, name: str, renew_time: str) -> None:
        self._request(
            f"renew the heartbeat lease in namespace {namespace}",
            "PATCH",
            _lease_path(namespace, name),
            body={"spec": {"renewTime": renew_time}},
            content_type="application/merge-patch+json",
        )

    # -- what %sandbox shows -------------------------------------------------------------------

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        body = self._request(
            f"list events in namespace {namespace}", "GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        )
        return list(body.get("items") or [])

    def read_resource_quota(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(
            f"read resource quota {name}",
            f"/api/v1/namespaces/{quote(namespace, safe='')}/resourcequotas/{quote(name, safe='')}",
        )

    def read_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(
            f"read network policy {name}",
            f"/apis/networking.k8s.io/v1/namespaces/{quote(namespace, safe='')}/networkpolicies/{quote(name, safe='')}",
        )

    def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The egress proxy's Service (its ClusterIP goes into a sandbox's proxy variables)."""
        return self._read(
            f"read service {name} in namespace {namespace}",
            f"/api/v1/namespaces/{quote(namespace, safe='')}/services/{quote(name, safe='')}",
        )

    # -- SandboxClaims (claims mode) and the controller's namespace changes --------------------

    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(f"read SandboxClaim {name} in namespace {namespace}", _claim_path(namespace, name))

    def list_claims(self, namespace: str = "", selector: str = "") -> list[dict[str, Any]]:
        """Claims in ``namespace`` (every namespace when empty)."""
        path = _claim_path(namespace, "") if namespace else "/apis/sandbox-kernel.dev/v1alpha1/sandboxclaims"
        query = [("labelSelector", selector)] if selector else []
        body = self._request(
            f"list SandboxClaims{' in namespace ' + namespace if namespace else ''}", "GET", path, query
        )
        return list(body.get("items") or [])

    def delete_claim(self, namespace: str, name: str, uid: str = "") -> bool:
        """Delete a claim (only that very object when ``uid`` is given); ``False`` if it was already gone."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        return self._delete(
            f"delete SandboxClaim {name} in namespace {namespace}", _claim_path(namespace, name), options
        )

    def patch_claim_annotations(
        self, namespace: str, name: str, annotations: dict[str, str], action: str = "renew the heartbeat of"
    ) -> None:
        self._request(
            f"{action} SandboxClaim {name} in namespace {namespace}",
            "PATCH",
            _claim_path(namespace, name),
            body={"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json",
        )

    def patch_claim_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            f"record the status of SandboxClaim {name} in namespace {namespace}",
            "PATCH",
            _claim_path(namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def patch_namespace(
        self, name: str, labels: dict[str, str | None], annotations: dict[str, str | None], resource_version: str = ""
    ) -> dict[str, Any]:
        """Change a namespace's labels/annotations (``None`` removes one). With ``resource_version``
        the change applies only if the namespace is still at that version (else a 409, raised as
        :class:`Conflict`): how the controller binds a pooled sandbox to exactly one claim."""
        meta: dict[str, Any] = {"labels": labels, "annotations": annotations}
        if resource_version:
            meta["resourceVersion"] = resource_version
        try:
            return self._request(
                f"label namespace {name}",
                "PATCH",
                f"/api/v1/namespaces/{quote(name, safe='')}",
                body={"metadata": meta},
                content_type="application/merge-patch+json",
            )
        except SandboxError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 409:
                raise Conflict(str(exc)) from exc.__cause__
            raise

    # -- helpers -------------------------------------------------------------------------------

    def _read(self, action: str, path: str) -> dict[str, Any] | None:
        try:
            return self._request(action, "GET", path)
        except SandboxError as exc:
            if is_not_found(exc):
                return None
            raise

    def _delete(self, action: str, path: str, options: dict[str, Any]) -> bool:
        try:
            self._request(action, "DELETE", path, body={"apiVersion": "v1", "kind": "DeleteOptions", **options})
            return True
        except SandboxError as exc:
            if is_not_found(exc):
                return False
            raise


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


def _claim_path(namespace: str, name: str) -> str:
    base = f"/apis/sandbox-kernel.dev/v1alpha1/namespaces/{quote(namespace, safe='')}/sandboxclaims"
    return f"{base}/{quote(name, safe='')}" if name else base


def _lease_path(namespace: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases/{quote(name, safe='')}"


def _load_configuration(kubeconfig: str, context: str) -> client.Configuration:
    """Explicit kubeconfig → in-cluster service account → $KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    in_cluster = (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
    )
    try:
        if kubeconfig:
            if not Path(kubeconfig).exists():
                raise ConfigError("KubernetesSandbox.kubeconfig", f"{kubeconfig} does not exist")
            config.load_kube_config(config_file=kubeconfig, context=context or None, client_configuration=configuration)
        elif in_cluster and not context:
            config.load_incluster_config(client_configuration=configuration)
        else:
            default = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
            if not Path(default).exists():
                raise ClusterNotConfigured(
                    "No Kubernetes cluster is configured: set c.KubernetesSandbox.kubeconfig (or "
                    "SANDBOX_KUBECONFIG / KUBECONFIG), or run the kernel in a pod with a service account."
                )
            config.load_kube_config(config_file=default, context=context or None, client_configuration=configuration)
    except SandboxError:
        raise
    except Exception as exc:  # config.ConfigException, YAML errors, missing files
        setting = (
            "KubernetesSandbox.context" if context and "context" in str(exc).lower() else "KubernetesSandbox.kubeconfig"
        )
        raise ConfigError(setting, f"could not load the Kubernetes configuration: {exc}") from exc
    return configuration
