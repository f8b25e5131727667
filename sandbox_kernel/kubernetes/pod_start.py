"""Waiting for a new sandbox pod to run (blocking), for the kernel's session, its early start and the
controller alike; and attaching to a running pod again when its stream ended (:func:`reattach`).

The pod's status is read every :data:`START_POLL_INTERVAL`; what the start waits for is told as
it goes (``progress``: the line a waiting cell shows, the claim's status message); a pod that
will never run (an image that cannot be pulled, a container that cannot be created) fails at
once, and one no node can run fails after ``KubernetesSandbox.unschedulable_timeout`` (a node
may be freed or added meanwhile). The kubelet says that it pulls an image only in events, which
are read once a second after the first second.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from ..config import Limits
from ..errors import SandboxError, SandboxStartError, Unschedulable
from .manifests import CONTAINER_NAME
from .pod_status import container_running, end_reason, start_problem, waiting_for
from .settings import KubernetesSandbox

if TYPE_CHECKING:
    from .api import AttachStream, KubernetesApi

log = logging.getLogger("sandbox_kernel")

START_POLL_INTERVAL = 0.05
"""Seconds between pod status reads while a pod starts. A read costs the API server ~3 ms; the
agent cannot start before the pod's IP reaches the network plugin (with the same status update
that shows the container running), so a ≤ 50 ms lag in seeing it is off the start's critical path
(benchmarks/README.md, "Cold start")."""

EVENTS_AFTER = 1.0
"""Seconds into a start after which its namespace's events are read too (at most once a second)."""


def wait_running(
    api: KubernetesApi,
    namespace: str,
    name: str,
    image: str,
    limits: Limits,
    settings: KubernetesSandbox,
    progress: Callable[[str], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    patient: bool = True,
) -> dict[str, Any]:
    """Wait until the pod's container runs; return the pod, or raise a SandboxError saying why not.

    ``progress`` is called with :func:`.pod_status.waiting_for` whenever that changes; ``stop``
    (checked between reads) ends the wait early with a SandboxStartError. Not ``patient``: an
    unschedulable pod fails at once (the early start leaves waiting for a node to the session).
    """
    began = time.monotonic()
    deadline = began + settings.start_timeout
    unschedulable_since: float | None = None
    events: list[dict[str, Any]] = []
    events_read = 0.0
    said = ""
    while True:
        pod = api.read_pod(namespace, name)
        if pod is None:
            raise SandboxStartError(f"The sandbox pod {name} disappeared while starting (namespace {namespace}).")
        if container_running(pod):
            return pod
        now = time.monotonic()
        if progress is not None:
            if now - began > EVENTS_AFTER and now - events_read > 1.0 and pod.get("spec", {}).get("nodeName"):
                events_read = now
                try:
                    events = api.list_events(namespace)
                except SandboxError:
                    events = []
            text = waiting_for(pod, events, image)
            if text != said:
                said = text
                progress(text)
        problem = start_problem(pod, image)
        if isinstance(problem, Unschedulable):
            unschedulable_since = unschedulable_since or now
            if now - unschedulable_since > settings.unschedulable_timeout or not patient:
                raise problem
        elif problem is not None:
            raise problem
        else:
            unschedulable_since = None
        ended = end_reason(pod, limits, settings.pod_lifetime)
        if ended is not None:
            raise SandboxStartError(f"The sandbox pod ended while starting: {ended}")
        if now > deadline:
            phase = pod.get("status", {}).get("phase", "unknown")
            raise SandboxStartError(
                f"The sandbox pod {name} was not running after {settings.start_timeout:g} s "
                f"(phase {phase}). See %sandbox events, or raise KubernetesSandbox.start_timeout."
            )
        if stop():
            raise SandboxStartError("The wait for the sandbox pod was given up.")
        time.sleep(START_POLL_INTERVAL)


def reattach(
    api: KubernetesApi, namespace: str, name: str, timeout: float, closed: Callable[[], bool]
) -> AttachStream | None:
    """A new attach stream to the pod's container if it still runs (the old one ended); ``None`` if not.

    Keeps trying for ``timeout`` seconds (``KubernetesSandbox.reconnect_timeout``) while the API
    server is away or refuses for a moment (a restart, a busy kubelet); gives up at once if the pod
    is gone or ended, or once the session is ``closed``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.2  # also lets the kubelet report a container that has just ended
    while not closed() and time.monotonic() < deadline:
        time.sleep(delay)
        try:
            pod = api.read_pod(namespace, name)
            if not container_running(pod):
                log.info("not re-attaching: pod %s/%s is no longer running", namespace, name)
                return None
            return api.attach(namespace, name, CONTAINER_NAME)
        except SandboxError as exc:
            log.info("re-attaching to pod %s/%s failed, retrying: %s", namespace, name, exc)
            delay = min(delay * 2, 2.0)
    if not closed():
        log.info("gave up re-attaching to pod %s/%s after %g s", namespace, name, timeout)
    return None
