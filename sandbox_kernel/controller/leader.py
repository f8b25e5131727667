"""``sandbox-kernel controller``: leader election, then kopf, until leadership or the process ends.

Leader election is the official client's (``kubernetes.leaderelection``, a coordination.k8s.io
Lease updated with its resourceVersion, so two candidates cannot both win the same term): the
process waits as a follower until it holds the Lease ``SandboxController.lease_name``, then runs
the kopf operator in its main thread. If the leader cannot renew within ``renew_deadline`` it
stops serving and the process exits with status 1 (the Deployment starts it again, as a
follower): a controller that might no longer be the leader never goes on acting.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

from ..errors import SandboxError

log = logging.getLogger("sandbox_kernel.controller")


def run(argv: list[str] | None = None) -> int:
    """The CLI entry point: settings from ``--SandboxController.*=…`` / ``--KubernetesSandbox.*=…``."""
    from traitlets.config import Config
    from traitlets.config.loader import KVArgParseConfigLoader

    from ..kubernetes.settings import KubernetesSandbox
    from .settings import SandboxController

    config: Config = KVArgParseConfigLoader(list(argv or []), aliases={}, flags={}).load_config() if argv else Config()
    base = KubernetesSandbox(config=config)
    bounds = SandboxController(config=config)
    bounds.validate()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kopf", "leaderelection"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return lead(base, bounds)


def lead(base: Any, bounds: Any) -> int:
    from kubernetes import client
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    from ..kubernetes.api import KubernetesApi

    # The election's own client (typed CoordinationV1Api) uses the default configuration: ours.
    client.Configuration.set_default(KubernetesApi(base.kubeconfig, base.context).configuration)
    leading, lost = threading.Event(), threading.Event()
    lock = LeaseLock(bounds.lease_name, bounds.lease_namespace, bounds.identity)
    election = electionconfig.Config(
        lock,
        bounds.lease_duration,
        bounds.renew_deadline,
        bounds.retry_period,
        onstarted_leading=leading.set,
        onstopped_leading=lost.set,
    )
    threading.Thread(target=leaderelection.LeaderElection(election).run, name="leader-election", daemon=True).start()
    log.info("controller %s: waiting to lead (Lease %s/%s)", bounds.identity, bounds.lease_namespace, bounds.lease_name)
    while not leading.wait(timeout=1.0):
        if lost.is_set():
            return 1
    log.info("controller %s: leading", bounds.identity)
    return serve(base, bounds, lost)


def serve(base: Any, bounds: Any, stop: threading.Event) -> int:
    """Run the kopf operator until ``stop`` is set (leadership lost) or a signal ends it."""
    import kopf

    from .handlers import Controller

    try:
        controller = Controller(base, bounds)
    except SandboxError as exc:
        log.error("cannot start: %s", exc)
        return 1

    async def operate() -> None:
        # kopf's stop flag as an asyncio.Event set from a daemon thread: given the threading.Event
        # itself, kopf would wait on it in the default executor, and asyncio.run would then hang
        # at exit (SIGTERM) waiting for that thread.
        loop, flag = asyncio.get_running_loop(), asyncio.Event()
        threading.Thread(target=lambda: stop.wait() and loop.call_soon_threadsafe(flag.set), daemon=True).start()
        await kopf.operator(registry=controller.registry(), standalone=True, clusterwide=True, stop_flag=flag)

    asyncio.run(operate())
    if stop.is_set():
        log.error("controller %s: lost the lease; exiting so that only the leader acts", bounds.identity)
        return 1
    release(bounds)
    return 0


def release(bounds: Any) -> None:
    """Stopped cleanly (SIGTERM): give the Lease up at once, so a standby need not wait out its duration.

    Only if this process still holds it, and only at the version read (an update with the
    ``resourceVersion``), so a Lease another replica has taken meanwhile is left alone.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CoordinationV1Api()
    try:
        lease = api.read_namespaced_lease(bounds.lease_name, bounds.lease_namespace)
        if lease.spec is None or lease.spec.holder_identity != bounds.identity:
            return
        lease.spec.holder_identity = None
        api.replace_namespaced_lease(bounds.lease_name, bounds.lease_namespace, lease)
        log.info("controller %s: released the lease", bounds.identity)
    except ApiException as exc:
        log.warning("could not release the lease: %s", exc.reason)
