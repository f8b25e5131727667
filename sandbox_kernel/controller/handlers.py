"""What the controller does for SandboxClaims, as kopf handlers (see the package's docstring).

kopf watches claims in every namespace (list + watch, resumed after a dropped stream), calls
one handler at a time per claim, retries a handler that raised :class:`kopf.TemporaryError`
with backoff, and keeps its finalizer on each claim so that a claim deleted while the
controller was away is still handled when it is back:

    claim created / resumed   → check it, take a pooled sandbox or make one, grant the claim's
                                user the claimant role there, status Ready (or Refused / Failed)
    claim deleted             → delete its sandbox namespace (only the one its uid names)
    every heartbeat_check s   → a claim whose heartbeat is older than spec.heartbeatSeconds is deleted
                                (a loop of the controller's own, beside kopf's handlers)
    every sweep_interval s    → sandboxes whose claim is gone are deleted; direct-mode sandboxes
                                whose heartbeat Lease expired are deleted (the gc CronJob's job)
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf

from ..errors import ClusterUnreachable, SandboxError
from ..kubernetes import claims, commands, manifests
from ..kubernetes.api import KubernetesApi, micro_time, parse_time
from ..kubernetes.settings import KubernetesSandbox
from . import egress, sandboxes
from .pool import Pool
from .settings import SandboxController

log = logging.getLogger("sandbox_kernel.controller")

FINALIZER = f"{claims.GROUP}/controller"
KOPF_PREFIX = f"controller.{claims.GROUP}"
ORPHAN_GRACE = 60.0
"""Seconds a sandbox whose claim cannot be found is left alone (its claim may just be being made)."""


class Controller:
    """The controller's state, shared by its handlers."""

    def __init__(self, base: KubernetesSandbox, bounds: SandboxController) -> None:
        self.base = base
        self.bounds = bounds
        self.api = KubernetesApi(base.kubeconfig, base.context, connections=bounds.workers)
        self.creator = self.api.whoami() or "unknown"
        self.executor = ThreadPoolExecutor(bounds.workers, thread_name_prefix="controller")
        self.pool = Pool(self.api, base, bounds, self.creator, self.executor)
        self.egress_lists = egress.RunningLists()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- claims ----------------------------------------------------------------------------------

    async def serve(self, body: Any, namespace: str, name: str, uid: str) -> None:
        """Give the claim a sandbox (its create and resume handler)."""
        status = dict(body.get("status") or {})
        if status.get("phase") in (claims.PHASE_READY, claims.PHASE_REFUSED, claims.PHASE_FAILED):
            if status.get("phase") != claims.PHASE_READY or await self.run(
                self.api.read_namespace, status.get("namespace", "")
            ):
                return  # resumed after a restart: already served
        try:
            spec = claims.parse_spec(dict(body.get("spec") or {}))
            if spec.user != (body.get("spec") or {}).get("user"):
                raise claims.ClaimInvalid("spec.user is not valid")
            plan = sandboxes.plan(spec, self.base, self.bounds)
        except claims.ClaimInvalid as exc:
            await self._status(namespace, name, phase=claims.PHASE_REFUSED, message=f"refused: {exc}")
            log.info("refused claim %s/%s: %s", namespace, name, exc)
            return
        claim = sandboxes.ClaimRef(namespace, name, uid, spec)
        if status.get("namespace"):  # a start cut short (the controller restarted): begin again, cleanly
            await self.run(sandboxes.delete_for_claim, self.api, status["namespace"], uid, self.base.namespace_prefix)
        sandbox: str | None = None
        try:
            # A pooled sandbox has no egress (its pod reads no proxy variables): one is made for the claim.
            sandbox = None if spec.egress else await self.run(self.pool.take, plan.pool_key, claim)
            from_pool = sandbox is not None
            if sandbox is None:
                why = (
                    "a claim with egress gets a sandbox of its own"
                    if spec.egress
                    else self.pool.why_cold(plan.pool_key, spec.language)
                )
                await self._status(
                    namespace, name, phase=claims.PHASE_PENDING, message=f"{why}; creating a new sandbox"
                )
                sandbox = await self.run(sandboxes.make, self.api, plan, spec, self.creator, claim)
                await self._status(
                    namespace,
                    name,
                    phase=claims.PHASE_PENDING,
                    namespace_=sandbox,
                    pod=sandboxes.POD_NAME,
                    fromPool=False,
                    message=f"{why}; starting the sandbox pod",
                )

                def progress(text: str) -> None:  # in wait_running's thread, so in order before the status below
                    self._progress(namespace, name, f"{why}; {text}")

                problem = await self.run(sandboxes.wait_running, self.api, sandbox, plan, progress)
                if problem:
                    await self._status(namespace, name, phase=claims.PHASE_FAILED, message=problem)
                    return
            proxy = ""
            if spec.egress is not None:
                proxy = await self.run(egress.connect, self.api, sandbox, sandboxes.POD_NAME, self.base.egress_proxy)
            await self.run(sandboxes.grant, self.api, sandbox, spec.user)
        except ClusterUnreachable as exc:
            raise kopf.TemporaryError(str(exc), delay=1) from exc
        except SandboxError as exc:  # refused by admission, quota, ...: say so on the claim, do not retry
            # The sandbox, if any, stays recorded: deleting the claim deletes it.
            await self._status(namespace, name, phase=claims.PHASE_FAILED, namespace_=sandbox, message=str(exc))
            log.warning("claim %s/%s failed: %s", namespace, name, exc)
            return
        await self._status(
            namespace,
            name,
            phase=claims.PHASE_READY,
            namespace_=sandbox,
            pod=sandboxes.POD_NAME,
            fromPool=from_pool,
            message="",
            readyAt=micro_time(),
            **({"egressProxy": proxy} if proxy else {}),
        )
        log.info("claim %s/%s: sandbox %s ready%s", namespace, name, sandbox, " (from the pool)" if from_pool else "")

    async def _status(self, namespace: str, name: str, namespace_: str | None = None, **fields: Any) -> None:
        if namespace_ is not None:
            fields["namespace"] = namespace_
        try:
            await self.run(self.api.patch_claim_status, namespace, name, fields)
        except SandboxError as exc:
            raise kopf.TemporaryError(f"could not record the claim's status: {exc}", delay=1) from exc

    def _progress(self, namespace: str, name: str, message: str) -> None:
        """What a cold start waits for, on the claim's status (the kernel shows it); blocking, never raises."""
        try:
            self.api.patch_claim_status(namespace, name, {"message": message})
        except SandboxError as exc:
            log.info("could not record the progress of claim %s/%s: %s", namespace, name, exc)

    async def release(self, body: Any, uid: str) -> None:
        """The claim is being deleted: delete its sandbox (kopf then removes the finalizer)."""
        sandbox = (body.get("status") or {}).get("namespace")
        if not sandbox:
            return
        try:
            await self.run(sandboxes.delete_for_claim, self.api, sandbox, uid, self.base.namespace_prefix)
        except SandboxError as exc:
            raise kopf.TemporaryError(f"could not delete sandbox {sandbox}: {exc}", delay=2) from exc
        log.info("claim %s deleted: sandbox %s deleted", uid, sandbox)

    # -- sweeps ----------------------------------------------------------------------------------

    async def heartbeats_forever(self) -> None:
        # A loop of our own, not a kopf timer per claim: kopf runs an object's timer only between its
        # other handlers and backs a failed one off for a minute, so a claim could outlive its heartbeat.
        while True:
            try:
                await self.run(self.reclaim_silent_claims)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure; say it and go on
                log.exception("heartbeat check failed")
            await asyncio.sleep(self.bounds.heartbeat_check)

    def reclaim_silent_claims(self) -> None:
        """Delete each claim whose kernel stopped renewing its heartbeat (its sandbox goes with it)."""
        now = datetime.now(timezone.utc)
        for claim in self.api.list_claims():
            ttl = heartbeat_expired(claim, now)
            if ttl is None:
                continue
            meta = claim["metadata"]
            log.info(
                "claim %s/%s: heartbeat older than %d s; deleting it", meta.get("namespace"), meta.get("name"), ttl
            )
            self.api.delete_claim(str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid") or ""))

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.run(self.sweep)
            except SandboxError as exc:
                log.warning("sweep failed: %s", exc)
            await asyncio.sleep(self.bounds.sweep_interval)

    def sweep(self) -> None:
        """Delete sandboxes whose claim is gone, and direct-mode sandboxes whose heartbeat expired."""
        uids = {str(c.get("metadata", {}).get("uid")) for c in self.api.list_claims()}
        now = datetime.now(timezone.utc)
        for ns in self.api.list_namespaces(manifests.SELECTOR):
            meta = ns["metadata"]
            name = meta["name"]
            if meta.get("deletionTimestamp") or not name.startswith(self.base.namespace_prefix):
                continue
            labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
            created = parse_time(meta.get("creationTimestamp")) or now
            if sandboxes.is_controllers(ns, self.base.namespace_prefix):
                if labels.get(claims.LABEL_STATE) != "bound" or (now - created).total_seconds() < ORPHAN_GRACE:
                    continue  # pooled (the pool keeps those), or too new to judge
                if annotations.get(claims.ANNOTATION_CLAIM_UID) not in uids:
                    log.info(
                        "sandbox %s: its claim %s is gone; deleting it", name, annotations.get(claims.ANNOTATION_CLAIM)
                    )
                    self.api.delete_namespace(name)
                continue
            # A direct-mode sandbox (a kernel made it): the gc CronJob's rule, heartbeat Lease expiry.
            try:
                lease = self.api.read_lease(name, manifests.LEASE_NAME)
            except SandboxError:
                continue
            delete, why = commands.verdict(
                ns, lease, now - timedelta(seconds=self.bounds.reclaim_grace), self.base.heartbeat_ttl
            )
            if delete:
                log.info("direct-mode sandbox %s: %s; deleting it", name, why)
                self.api.delete_namespace(name)

    # -- kopf wiring -----------------------------------------------------------------------------

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        resource = (claims.GROUP, claims.VERSION, claims.PLURAL)

        @kopf.on.startup(registry=registry)
        async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.persistence.finalizer = FINALIZER
            # kopf's own bookkeeping on each claim, under a prefix of its own (not the kernel's heartbeat).
            settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
            settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
            settings.posting.enabled = False
            settings.scanning.disabled = True
            settings.watching.server_timeout = 270
            settings.watching.client_timeout = 300
            settings.networking.request_timeout = 30
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self.pool.run()),
                loop.create_task(self.sweep_forever()),
                loop.create_task(self.heartbeats_forever()),
            ]

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            for task in self._tasks:
                task.cancel()

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return connection_info(self.api)

        @kopf.on.resume(*resource, registry=registry)
        @kopf.on.create(*resource, registry=registry)
        async def claim_created(body: Any, namespace: str | None, name: str, uid: str, **_: Any) -> None:
            await self.serve(body, namespace or "", name, uid)

        @kopf.on.event(*resource, registry=registry)
        async def claim_changed(body: Any, **_: Any) -> None:
            # Every change (the kernel's heartbeat too): cheap unless the egress lists changed.
            try:
                await self.run(self.egress_lists.apply, self.api, dict(body))
            except SandboxError as exc:  # the next event (a heartbeat at the latest) tries again
                log.warning("could not apply a claim's egress lists: %s", exc)

        @kopf.on.delete(*resource, registry=registry)
        async def claim_deleted(body: Any, uid: str, **_: Any) -> None:
            await self.release(body, uid)

        return registry


def heartbeat_expired(claim: dict[str, Any], now: datetime) -> int | None:
    """The claim's ``spec.heartbeatSeconds`` if its heartbeat (or, before the first, its creation) is older; else None."""
    meta = claim.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    ttl = (claim.get("spec") or {}).get("heartbeatSeconds", 60)
    ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else 60
    beat = None
    for stamp in ((meta.get("annotations") or {}).get(claims.ANNOTATION_HEARTBEAT), meta.get("creationTimestamp")):
        try:
            beat = parse_time(str(stamp)) if stamp else None
        except ValueError:
            beat = None
        if beat is not None:
            break
    if beat is not None and now - beat <= timedelta(seconds=ttl):
        return None
    return ttl


def connection_info(api: KubernetesApi) -> kopf.ConnectionInfo:
    """kopf's credentials, from the same kubeconfig / in-cluster identity as our own client."""
    cfg = api.configuration
    # get_api_key_with_prefix runs the client's refresh hook (the in-cluster token is rotated).
    auth = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
    )
