"""The one module that talks to the Kubernetes API server, and the one place its errors are translated.

Every call goes through :meth:`KubernetesApi._calling`, which turns what the ``kubernetes``
client raises into the project's error tree (``errors.py``), keeping the API server's own
``Status.message``::

    ApiException 403 (RBAC, Pod Security, quota)  →  AdmissionError("… refused to create pod: <message>")
    ApiException 422 (invalid object)             →  AdmissionError("… rejected …: <message>")
    ApiException 401                              →  SandboxUnavailable (credentials)
    ApiException 429 / 5xx, urllib3 / socket errors, websocket drops
                                                  →  ClusterUnreachable
    anything else                                 →  SandboxStartError

Reads return plain JSON dicts (camelCase, as ``kubectl get -o json`` shows them) and ``None``
for a missing object. All methods block; callers on an event loop run them in an executor.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream as k8s_stream

from ..errors import (
    AdmissionError,
    ClusterUnreachable,
    ConfigError,
    SandboxError,
    SandboxStartError,
    SandboxUnavailable,
)

log = logging.getLogger("sandbox_kernel")

REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every ordinary request, so a dead API server is noticed quickly."""

_RBAC_FORBIDDEN = re.compile(r"cannot \w+ resource")


def micro_time(when: datetime | None = None) -> str:
    """A Kubernetes MicroTime (``2025-01-01T00:00:00.000000Z``)."""
    when = when or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    """Parse a Kubernetes Time or MicroTime; ``None`` when absent."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def status_message(exc: ApiException) -> str:
    """The API server's own explanation (``Status.message``), else the HTTP reason."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            message = json.loads(body).get("message")
            if message:
                return str(message)
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(exc.reason or f"HTTP {exc.status}")


class _Sink:
    """Discards what ``WSClient`` would otherwise keep forever in its ``read_all`` buffer."""

    def write(self, _data: Any) -> None:
        pass

    def getvalue(self) -> bytes:
        return b""


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
        """Wait up to ``timeout`` s; return ``(stdout, stderr)`` bytes (maybe empty), or ``None``
        once the server has closed the stream (the container ended, or the API server went away)."""
        with self._api._calling("read from the sandbox's attach stream", unreachable=True):
            ws = self._ws
            if self._closed or not ws.is_open():
                return None
            ws.update(timeout=timeout)
            channels = ws._channels  # read directly: read_channel() would poll the socket again
            out = channels.pop(1, b"")
            err = channels.pop(2, b"")
            status = channels.pop(3, b"")
            if status:
                log.debug("attach stream status: %s", status.decode("utf-8", "replace"))
            if not ws.is_open() and not out and not err:
                return None
            return (out or b"", err or b"")

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
    """A connection to one cluster (kubeconfig context, or the pod's in-cluster identity)."""

    def __init__(self, kubeconfig: str = "", context: str = "") -> None:
        self.configuration = _load_configuration(kubeconfig, context)
        self.host = self.configuration.host
        self.api_client = client.ApiClient(self.configuration)
        self.core = client.CoreV1Api(self.api_client)
        self._typed: dict[str, Any] = {}
        self._lock = threading.Lock()

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
        except (urllib3.exceptions.HTTPError, OSError, ConnectionError) as exc:
            raise ClusterUnreachable(self._unreachable(action, exc)) from exc
        except Exception as exc:  # websocket-client errors and the like
            if unreachable:
                raise ClusterUnreachable(self._unreachable(action, exc)) from exc
            raise SandboxStartError(f"Could not {action}: {exc}") from exc

    def _unreachable(self, action: str, exc: BaseException) -> str:
        return (
            f"The Kubernetes API server at {self.host} could not be reached to {action} ({exc}). "
            "The kernel keeps running; run the cell again once the cluster is back."
        )

    def _translate(self, action: str, exc: ApiException) -> SandboxError:
        status = exc.status or 0
        message = status_message(exc)
        if status == 0:
            # The websocket transport reports HTTP errors of the upgrade as status 0.
            match = re.search(r"Handshake status (\d+)", str(exc.reason))
            if not match:
                return ClusterUnreachable(self._unreachable(action, exc))
            status = int(match.group(1))
            body = re.search(r'(\{"kind":\s*"Status".*\})', str(exc.reason), re.S)
            if body:
                try:
                    message = json.loads(body.group(1).replace("\\'", "'")).get("message", message)
                except ValueError:
                    pass
        if status == 401:
            return SandboxUnavailable(
                f"The Kubernetes API server at {self.host} rejected the kernel's credentials while trying to "
                f"{action} ({message}). Check KubernetesSandbox.kubeconfig / context, or renew the token."
            )
        if status == 403:
            return AdmissionError(f"Kubernetes refused to {action}: {message}")
        if status == 422 or status == 400:
            return AdmissionError(f"Kubernetes rejected the request to {action} as invalid: {message}")
        if status == 429 or status >= 500:
            return ClusterUnreachable(
                f"The Kubernetes API server at {self.host} failed to {action} ({status}: {message}). "
                "The kernel keeps running; run the cell again in a moment."
            )
        return SandboxStartError(f"Could not {action}: {message} (HTTP {status})")

    def _json(self, response: Any) -> dict[str, Any]:
        return json.loads(response.data)

    # -- generic create ------------------------------------------------------------------------

    def _api(self, name: str) -> Any:
        with self._lock:
            if name not in self._typed:
                self._typed[name] = getattr(client, name)(self.api_client)
            return self._typed[name]

    _CREATE = {
        "Namespace": ("CoreV1Api", "create_namespace", False),
        "RoleBinding": ("RbacAuthorizationV1Api", "create_namespaced_role_binding", True),
        "ResourceQuota": ("CoreV1Api", "create_namespaced_resource_quota", True),
        "LimitRange": ("CoreV1Api", "create_namespaced_limit_range", True),
        "NetworkPolicy": ("NetworkingV1Api", "create_namespaced_network_policy", True),
        "ConfigMap": ("CoreV1Api", "create_namespaced_config_map", True),
        "Lease": ("CoordinationV1Api", "create_namespaced_lease", True),
        "Pod": ("CoreV1Api", "create_namespaced_pod", True),
    }

    def create(self, obj: dict[str, Any], rbac_settle: float = 0.0) -> dict[str, Any]:
        """Create ``obj`` (a dict from :mod:`.manifests`); return what the server stored.

        ``rbac_settle``: seconds to keep retrying an RBAC "forbidden" — right after the kernel
        binds its sandbox role in a new namespace, the authorizer's cache may not have it yet.
        """
        kind = obj["kind"]
        meta = obj["metadata"]
        api_name, method, namespaced = self._CREATE[kind]
        where = f" in namespace {meta['namespace']}" if namespaced else ""
        action = f"create {kind} {meta['name']}{where}"
        fn = getattr(self._api(api_name), method)
        args = (meta["namespace"], obj) if namespaced else (obj,)
        deadline = time.monotonic() + rbac_settle
        while True:
            try:
                with self._calling(action):
                    return self._json(fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
            except AdmissionError as exc:
                cause = exc.__cause__
                if (
                    isinstance(cause, ApiException) and cause.status == 403
                    and _RBAC_FORBIDDEN.search(status_message(cause)) and time.monotonic() < deadline
                ):
                    time.sleep(0.05)
                    continue
                raise

    # -- identity ------------------------------------------------------------------------------

    def whoami(self) -> str:
        """The user name the API server knows this client as (SelfSubjectReview); '' if unknown."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            with self._calling("ask who the kernel is (SelfSubjectReview)"):
                review = self._json(
                    self._api("AuthenticationV1Api").create_self_subject_review(
                        body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                    )
                )
        except (AdmissionError, SandboxStartError) as exc:
            log.info("identity unknown: %s", exc)
            return ""
        return str(review.get("status", {}).get("userInfo", {}).get("username", ""))

    # -- namespaces ----------------------------------------------------------------------------

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        return self._read(f"read namespace {name}", self.core.read_namespace, name)

    def list_namespaces(self, selector: str) -> list[dict[str, Any]]:
        with self._calling(f"list namespaces ({selector})"):
            body = self._json(
                self.core.list_namespace(label_selector=selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
            )
        return list(body.get("items") or [])

    def delete_namespace(self, name: str) -> bool:
        """Ask for the namespace and everything in it to be deleted; ``False`` if it was already gone."""
        return self._delete(
            f"delete namespace {name}",
            self.core.delete_namespace,
            name,
            body={"propagationPolicy": "Background"},
        )

    # -- pods ----------------------------------------------------------------------------------

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(f"read pod {name} in namespace {namespace}", self.core.read_namespaced_pod, name, namespace)

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete the pod at once (grace period 0); ``False`` if it was already gone."""
        return self._delete(
            f"delete pod {name} in namespace {namespace}",
            self.core.delete_namespaced_pod,
            name,
            namespace,
            body={"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
        )

    def attach(self, namespace: str, pod: str, container: str) -> AttachStream:
        """Open an attach stream (stdin, stdout, stderr; no TTY) to a running container."""
        # stream() briefly swaps the ApiClient's transport for a websocket one: give it a
        # private ApiClient so requests on other threads (the heartbeat) are not affected.
        core = client.CoreV1Api(client.ApiClient(self.configuration))
        with self._calling(f"attach to pod {pod} in namespace {namespace}", unreachable=True):
            ws = k8s_stream(
                core.connect_get_namespaced_pod_attach,
                pod,
                namespace,
                container=container,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )
        ws._all = _Sink()  # otherwise every byte the agent ever sends is kept in memory
        return AttachStream(self, ws)

    # -- leases (heartbeat) --------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(
            f"read lease {name} in namespace {namespace}",
            self._api("CoordinationV1Api").read_namespaced_lease,
            name,
            namespace,
        )

    def renew_lease(self, namespace: str, name: str, renew_time: str) -> None:
        with self._calling(f"renew the heartbeat lease in namespace {namespace}"):
            self._api("CoordinationV1Api").patch_namespaced_lease(
                name,
                namespace,
                {"spec": {"renewTime": renew_time}},
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )

    # -- what %sandbox shows -------------------------------------------------------------------

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        with self._calling(f"list events in namespace {namespace}"):
            body = self._json(
                self.core.list_namespaced_event(namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
            )
        return list(body.get("items") or [])

    def read_resource_quota(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(f"read resource quota {name}", self.core.read_namespaced_resource_quota, name, namespace)

    def read_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(
            f"read network policy {name}",
            self._api("NetworkingV1Api").read_namespaced_network_policy,
            name,
            namespace,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _read(self, action: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        try:
            with self._calling(action):
                return self._json(fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
        except SandboxError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise

    def _delete(self, action: str, fn: Callable[..., Any], *args: Any, body: dict[str, Any]) -> bool:
        try:
            with self._calling(action):
                fn(*args, body=body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
                return True
        except SandboxError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return False
            raise


def _load_configuration(kubeconfig: str, context: str) -> client.Configuration:
    """Explicit kubeconfig → in-cluster service account → $KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ).exists()
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
                raise SandboxUnavailable(
                    "No Kubernetes cluster is configured: set c.KubernetesSandbox.kubeconfig (or "
                    "SANDBOX_KUBECONFIG / KUBECONFIG), or run the kernel in a pod with a service account."
                )
            config.load_kube_config(config_file=default, context=context or None, client_configuration=configuration)
    except SandboxError:
        raise
    except Exception as exc:  # config.ConfigException, YAML errors, missing files
        setting = "KubernetesSandbox.context" if context and "context" in str(exc).lower() else "KubernetesSandbox.kubeconfig"
        raise ConfigError(setting, f"could not load the Kubernetes configuration: {exc}") from exc
    return configuration
