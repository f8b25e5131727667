"""What the Kubernetes API server's answers mean, as the project's errors (standard library only).

The one place an answer becomes a :class:`~sandbox_kernel.errors.SandboxError`, for both clients:
:mod:`.api` (the kubernetes client's transport, used for everything) and :mod:`.early_client` (a
few requests over ``http.client`` while the kernel process starts, before the kubernetes client
is imported). An answer is kept whole on the error as :class:`~sandbox_kernel.errors.ApiStatus`
(``err.api_status``: HTTP status, ``Status.reason``, ``Status.message``), so callers branch on
``code`` and ``reason``::

    403 (RBAC, Pod Security, quota)  →  AdmissionError("… refused to create pod: <message>")
    422 / 400 (invalid object)       →  AdmissionError("… rejected …: <message>")
    401                              →  SandboxUnavailable (credentials)
    429 / 5xx, no answer at all      →  ClusterUnreachable
    anything else (404 NotFound, 409 AlreadyExists / Conflict, ...)
                                     →  SandboxStartError

:func:`settle` retries the refusals that pass by themselves in a namespace made a moment ago.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Callable, TypeVar

from ..errors import AdmissionError, ApiStatus, ClusterUnreachable, SandboxError, SandboxStartError, SandboxUnavailable

T = TypeVar("T")

_TRANSIENT_FORBIDDEN = re.compile(
    r"cannot \w+ resource|error looking up service account|serviceaccount \"default\" not found"
)
"""403s that clear up by themselves in a namespace created a moment ago: the kernel's RoleBinding
not yet in the authorizer's cache, or the namespace's default ServiceAccount (which the
ServiceAccount admission plugin looks up for every pod) not yet created by its controller."""

_ACCOUNT_PENDING = re.compile(r"error looking up service account|serviceaccount \"default\" not found")
"""The 403 of a pod whose namespace has no default ServiceAccount yet. Usually that takes
milliseconds; while the controller manager catches up (after an API server restart, say) it
takes seconds, so pods may wait longer for it (``account_settle``)."""

_PARAMS_PENDING = re.compile(r"no params found for policy binding")
"""The 422 of a pod created a moment after its namespace's deny-all NetworkPolicy, ResourceQuota
or LimitRange: the admission policies of k8s/rbac/admission-policy.yaml read those objects from
the API server's cache, which can trail the create that just returned by a few milliseconds."""


def micro_time(when: datetime | None = None) -> str:
    """A Kubernetes MicroTime (``2025-01-01T00:00:00.000000Z``)."""
    when = when or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def status_of(code: int, body: bytes | str | None, phrase: str) -> ApiStatus:
    """The API server's answer: the HTTP status and, from the ``Status`` body, its reason and message
    (``phrase``, the HTTP reason phrase, when the body is not a Status, e.g. from a proxy in between)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    reason, message = "", ""
    if body:
        try:
            status = json.loads(body)
            if isinstance(status, dict):
                reason = str(status.get("reason") or "")
                message = str(status.get("message") or "")
            else:
                message = str(body)[:500]
        except ValueError:
            message = str(body)[:500]
    return ApiStatus(int(code or 0), reason, message or phrase or f"HTTP {code}")


def unreachable(host: str, action: str, exc: BaseException | str) -> ClusterUnreachable:
    return ClusterUnreachable(
        f"The Kubernetes API server at {host} could not be reached to {action} ({exc}). "
        "The kernel keeps running; run the cell again once the cluster is back."
    )


def translate(host: str, action: str, answer: ApiStatus) -> SandboxError:
    """The error for the API server's ``answer`` to a request that was to ``action``."""
    status, message = answer.code, answer.message
    if status == 0:
        return unreachable(host, action, message)
    if status == 401:
        return SandboxUnavailable(
            f"The Kubernetes API server at {host} rejected the kernel's credentials while trying to "
            f"{action} ({message}). Check KubernetesSandbox.kubeconfig / context, or renew the token.",
            hint="Renew the token or certificate of the kubeconfig in use, then run a cell again.",
            api_status=answer,
        )
    if status == 403:
        return AdmissionError(f"Kubernetes refused to {action}: {message}", api_status=answer)
    if status == 422 or status == 400:
        return AdmissionError(
            f"Kubernetes rejected the request to {action} as invalid: {message}",
            hint="A KubernetesSandbox setting made an object this cluster rejects: check the field the message names.",
            api_status=answer,
        )
    if status == 429 or status >= 500:
        return ClusterUnreachable(
            f"The Kubernetes API server at {host} failed to {action} ({status}: {message}). "
            "The kernel keeps running; run the cell again in a moment.",
            hint="The API server is busy or restarting: run the cell again in a moment.",
            api_status=answer,
        )
    hint = "Another client changed the same object meanwhile: run the cell again." if status == 409 else None
    return SandboxStartError(f"Could not {action}: {message} (HTTP {status})", hint=hint, api_status=answer)


def settle(post: Callable[[], T], rbac_settle: float = 0.0, account_settle: float = 0.0) -> T:
    """``post()`` (a create), again while it is refused only because its namespace is brand new.

    ``rbac_settle``: seconds to keep retrying a "forbidden" that only means the namespace is
    brand new (see :data:`_TRANSIENT_FORBIDDEN`), or a 422 of admission params not yet cached
    (:data:`_PARAMS_PENDING`); ``account_settle``: seconds to wait for the namespace's default
    ServiceAccount in particular (:data:`_ACCOUNT_PENDING`).
    """
    started = time.monotonic()
    retries = 0
    while True:
        try:
            return post()
        except AdmissionError as exc:
            # Status has no field that tells these passing refusals from lasting ones: only
            # the server's message does, so this boundary (and nothing above it) reads it.
            answer = exc.api_status
            waited = time.monotonic() - started
            # The caches catch up in milliseconds, and this is on every start's path: retry
            # after 10, 20, 40 ms, then every 50 ms, and every 250 ms after a second.
            pause = min(0.01 * 2**retries, 0.05) if waited < 1 else 0.25
            retries += 1
            if answer is not None and answer.code == 422 and _PARAMS_PENDING.search(answer.message):
                if waited < rbac_settle:
                    time.sleep(pause)
                    continue
            if answer is not None and answer.code == 403:
                message = answer.message
                wait = max(rbac_settle, account_settle) if _ACCOUNT_PENDING.search(message) else rbac_settle
                if _TRANSIENT_FORBIDDEN.search(message) and waited < wait:
                    time.sleep(pause)
                    continue
            raise


def is_not_found(exc: SandboxError) -> bool:
    """Whether the API server answered that the object does not exist (404)."""
    return exc.api_status is not None and exc.api_status.code == 404


def is_already_exists(exc: SandboxError) -> bool:
    """Whether the API server refused a create because the name is taken (409 AlreadyExists)."""
    return exc.api_status is not None and exc.api_status.code == 409 and exc.api_status.reason == "AlreadyExists"


PATHS = {
    "Namespace": "/api/v1/namespaces",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
    "ResourceQuota": "/api/v1/namespaces/{namespace}/resourcequotas",
    "LimitRange": "/api/v1/namespaces/{namespace}/limitranges",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
    "Pod": "/api/v1/namespaces/{namespace}/pods",
    "SandboxClaim": "/apis/sandbox-kernel.dev/v1alpha1/namespaces/{namespace}/sandboxclaims",
}
"""Where each kind of object :mod:`.manifests` builds is created (POST)."""

WHOAMI_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
WHOAMI_BODY = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
WHOAMI_ACTION = "ask who the kernel is (SelfSubjectReview)"
