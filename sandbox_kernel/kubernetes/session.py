"""The Kubernetes sandbox session: a locked-down namespace and one restricted pod per kernel.

What a cell sees:

- its own namespace ``sandbox-<8 hex>`` with Pod Security "restricted" enforced, a
  ResourceQuota, a LimitRange and a deny-all NetworkPolicy (no DNS, no API server, no other pod),
- one pod running the language's agent as uid 1000 with no capabilities, a read-only root
  file system, a memory-backed emptyDir (tmpfs) of ``scratch_size`` as HOME and working directory
  (a write past it fails with ENOSPC; its pages count against the memory limit), no service
  account token and only HOME, PATH and LANG in its environment,
- the pod's memory and CPU limits (an over-limit allocation is OOMKilled and reported).

How the kernel reaches it: only through the API server, with an *attach* stream to the pod's
stdin/stdout (never over pod networking, which the policy blocks). Attach does not replay what
a container wrote before the stream opened, so the container starts the agent only once the
deny-all NetworkPolicy is in force (network plugins program a new pod's rules a moment after it
starts) and the kernel's gate line has arrived on stdin (see :func:`.pod_command.agent_command`).
The namespace and its objects are created by :mod:`.provision`, maybe before the kernel process
has finished importing (:mod:`.early`; the session then takes them over); :mod:`.pod_status`
says why a pod does not start or why it ended.
If the websocket drops while the pod runs, the kernel attaches again and the agent repeats what
the kernel missed (see :mod:`.attach`), so a running cell loses no output.

What outlives a crash: the kernel renews a Lease in its namespace every ``heartbeat_interval``;
``sandbox-kernel gc`` deletes namespaces whose lease expired (see :mod:`.commands`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncGenerator, Callable, TypeVar

from ..config import Limits
from ..errors import ClusterUnreachable, OutOfMemory, SandboxError, SandboxLost
from ..languages import Language
from ..agent_session import AgentSession
from ..session import AgentChannel, Event, Stream
from . import claiming, early, egress, manifests, pod_command, pod_start, reports, study
from .api import AttachStream, KubernetesApi, micro_time
from .attach import AttachChannel
from .pod_status import end_reason, eviction_event, waiting_for
from .provision import PreparedSandbox, create_namespace_objects
from .settings import KubernetesSandbox, current_kernel_id
from ..workspace.transfer import copy_notebook_dir
from ..workspace.writeback_remote import RemoteWriteBack, remote_write_back

log = logging.getLogger("sandbox_kernel")

T = TypeVar("T")

POLL_INTERVAL = 0.1
"""Seconds between pod status reads after a pod's stream ended."""

CLOSE_MARGIN = 10.0
"""Seconds the kernel's shutdown waits for :meth:`KubernetesSandboxSession.close` beyond
``KubernetesSandbox.shutdown_deadline`` (its last API request may still be under way)."""


class KubernetesSandboxSession(study.ClusterQuestions, AgentSession):
    """A session whose sandbox is a pod in a namespace of its own."""

    backend = "kubernetes"
    start_timeout = 30.0  # for the agent's ready frame, once the pod runs and is attached

    def __init__(
        self,
        language: Language,
        limits: Limits,
        settings: KubernetesSandbox | None = None,
        kernel_id: str | None = None,
    ) -> None:
        super().__init__(language, limits)
        self.settings = settings or KubernetesSandbox()
        self.settings.validate(limits)
        self.kernel_id = kernel_id or current_kernel_id()
        self._api: KubernetesApi | None = None
        self._ident: manifests.SandboxIdentity | None = None
        self._applied: list[dict[str, Any]] = []
        self._pod_name: str | None = None
        self._pods_created = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._attach: AttachChannel | None = None
        self._last_pod: str | None = None
        self._stale_pods: set[str] = set()  # pods whose deletion failed (API server away): retried
        self._events: list[tuple[float, str]] = []
        self._claim: claiming.Claimed | None = None  # claims mode: the claim the sandbox came with
        # The egress hook (k8s/EGRESS.md): None without an allow list.
        self.egress = egress.KubernetesEgress.for_session(limits, self.settings)
        self._write_back: RemoteWriteBack | None = None  # Sandbox.workspace = 'read-write'

    @property
    def namespace(self) -> str | None:
        """The sandbox namespace, once created."""
        return self._ident.namespace if self._ident else None

    @property
    def pod_name(self) -> str | None:
        return self._pod_name

    # -- helpers ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking API call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _connect(self) -> KubernetesApi:
        if self._api is None:
            self._api = KubernetesApi(self.settings.kubeconfig, self.settings.context)
        return self._api

    def _set_progress(self, text: str) -> None:
        self.start_progress = text  # a str assignment: safe from the executor's thread

    def _event(self, text: str, when: float | None = None) -> None:
        self._events.append((time.time() if when is None else when, text))
        del self._events[:-50]
        log.info("%s", text)

    # -- creating the sandbox -----------------------------------------------------------------------

    def _create_namespace_objects(self) -> None:
        """Namespace, RoleBinding, quota, limit range, policies, config map, lease (blocking)."""
        spec = self.egress.new_namespace() if self.egress is not None else None
        ident, applied = create_namespace_objects(
            self._connect(), self.settings, self.language, self.limits, self.kernel_id, spec
        )
        self._ident = ident
        self._applied = applied
        self._event(f"namespace {ident.namespace} created for kernel {self.kernel_id} (owner {ident.owner})")

    async def _claim_early(self) -> PreparedSandbox | None:
        """The sandbox :mod:`.early` began creating while the kernel process imported, if it fits.

        It fits only if every object it created is exactly what this session would have
        created (same cluster, kernel, language, limits and settings): the early start guessed
        the configuration before ipykernel loaded it. Anything else is deleted and the session
        starts its own sandbox, so a wrong guess costs time, never a weaker sandbox.
        """
        prepared = await early.take_over(self._set_progress, "creating the sandbox namespace, its policies and its pod")
        if prepared is None:
            return None
        if isinstance(prepared, claiming.PreparedClaim):  # the early start was in claims mode, the session is not
            await self._run(prepared.discard)
            return None
        spec = self.egress.adopt(prepared.egress_token) if self.egress is not None else None  # no token: no match
        if prepared.fits(self.settings, self.language, self.limits, self.kernel_id, spec):
            return prepared
        log.info(
            "the early sandbox %s does not match the kernel's configuration; deleting it", prepared.ident.namespace
        )
        await self._run(prepared.discard)
        return None

    async def _spawn(self) -> AgentChannel:
        try:
            return await self._spawn_pod()
        except ClusterUnreachable:
            if self._ident is None:
                self._api = None  # reload the kubeconfig next time: it may have been fixed or renewed
            raise

    async def _spawn_pod(self) -> AgentChannel:
        if self.settings.mode == "claims":
            return await self._spawn_claimed()
        prepared = await self._claim_early() if self._ident is None else None
        if prepared is not None and isinstance(prepared.api, KubernetesApi):
            self._api = prepared.api  # else the early start's own client: the session makes its own
        api = await self._run(self._connect)
        if self._ident is not None:
            ns = await self._run(api.read_namespace, self._ident.namespace)
            if ns is None or ns.get("metadata", {}).get("deletionTimestamp"):
                self._event(f"namespace {self._ident.namespace} is gone; creating a new one")
                self._stop_heartbeat()
                self._ident = None
        if self._ident is not None:
            # A pod we could not delete (say the API server was away) would hold quota: retry now.
            for stale in sorted(self._stale_pods):
                await self._run(api.delete_pod, self._ident.namespace, stale)
                self._stale_pods.discard(stale)
        if prepared is not None:
            self._stale_pods.clear()
            self._ident = prepared.ident
            self._applied = prepared.applied
            self._pods_created = 1
            name = prepared.pod_name
            spec = self.settings.pod_spec(self.language, self.limits, name)
            self._event(
                f"namespace {prepared.ident.namespace} created for kernel {self.kernel_id} "
                f"(owner {prepared.ident.owner}) while the kernel process started",
                prepared.created_at,
            )
            self._event(f"pod {name} created (image {spec.image})", prepared.created_at)
            self._pod_name = name
            self._start_heartbeat()
        else:
            if self._ident is None:
                self._stale_pods.clear()
                self.start_progress = "creating the sandbox namespace, its quota and its deny-all NetworkPolicy"
                await self._run(self._create_namespace_objects)
                self._pods_created = 0
                self._start_heartbeat()
            assert self._ident is not None
            self._pods_created += 1
            name = f"sandbox-{self._pods_created}"
            spec = self.settings.pod_spec(self.language, self.limits, name)
            body = manifests.pod(self._ident, spec)
            self.start_progress = "creating the sandbox pod"
            await self._run(api.create, body, rbac_settle=5.0, account_settle=self.settings.start_timeout)
            self._pod_name = name
            self._applied = [o for o in self._applied if o["kind"] != "Pod"] + [body]
            self._event(f"pod {name} created (image {spec.image})")
        ident = self._ident
        assert ident is not None
        if prepared is not None and prepared.stream is not None:  # the early start saw it run and attached
            self._event(f"pod {name} running (seen by the early start)")
            return self._open(ident, name, prepared.stream, gate=False)
        try:
            pod_ip = await self._wait_running(api, ident.namespace, name, spec.image)
            if self.egress is not None:  # egress hook: the proxy's address, and the pod's, before the gate
                await self._run(self.egress.attach_to, api, ident.namespace, pod_ip)
            stream = await self._run(api.attach, ident.namespace, name, manifests.CONTAINER_NAME)
        except BaseException:
            self._pod_name = None
            try:
                await self._run(api.delete_pod, ident.namespace, name)
            except SandboxError as exc:
                # It may still hold quota: the next start deletes it first, close() at the latest.
                self._stale_pods.add(name)
                log.warning("could not delete pod %s/%s, retried later: %s", ident.namespace, name, exc)
            raise
        return self._open(ident, name, stream)

    def _open(
        self, ident: manifests.SandboxIdentity, name: str, stream: AttachStream, gate: bool = True
    ) -> AgentChannel:
        """The agent channel over a fresh attach stream; the gate line lets the agent start
        (already sent when the early start attached, ``gate=False``)."""
        loop = asyncio.get_running_loop()
        channel = AttachChannel(loop, stream, functools.partial(self._reattach, ident.namespace, name))
        self._attach = channel
        if gate:
            channel.open_gate(pod_command.gate_line(self.egress.gate_variables() if self.egress is not None else ()))
        self._event(f"attached to pod {name}; agent starting" if gate else f"took over the early attach to pod {name}")
        return channel

    # -- claims mode ------------------------------------------------------------------------------

    async def _take_early_claim(self) -> claiming.PreparedClaim | None:
        """The claim :mod:`.early` made while the kernel process imported, if it asks for what this session would."""
        prepared = await early.take_over(self._set_progress, "claiming a sandbox")
        if prepared is None:
            return None
        if not isinstance(prepared, claiming.PreparedClaim):
            await self._run(prepared.api.delete_namespace, prepared.ident.namespace)
            return None
        if prepared.fits(self.settings, self.language, self.limits, self.kernel_id):
            self._api = prepared.api
            return prepared
        log.info("the early claim %s does not match the kernel's configuration; deleting it", prepared.claimed.name)
        await self._run(prepared.discard)
        return None

    async def _spawn_claimed(self) -> AgentChannel:
        """Claims mode: a SandboxClaim per sandbox; a lost sandbox is given back and a new one claimed."""
        prepared = await self._take_early_claim() if self._claim is None and self._ident is None else None
        claimed = prepared.claimed if prepared else None
        api = await self._run(self._connect)
        if self._claim is not None:  # the sandbox ended (out of memory, say): a new claim, a new sandbox
            old, self._claim = self._claim, None
            self._stop_heartbeat()
            self._ident = None
            await self._run(claiming.release, api, old.namespace, old.name)
            self._event(f"SandboxClaim {old.name} deleted (its sandbox {old.status.namespace} ended)")
        if claimed is None:
            ask = self.egress.claim_egress() if self.egress is not None else None  # egress: the credential's hash
            args = (api, self.settings, self.language, self.limits, self.kernel_id, self._set_progress, ask)
            claimed = await self._run(claiming.acquire, *args)
        self._claim = claimed
        status = claimed.status
        if self.egress is not None:  # egress hook: the proxy's address from the claim, the lists on it
            await self._run(self.egress.attach_to_claim, api, (claimed.namespace, claimed.name), status)
        self._ident = manifests.SandboxIdentity(
            namespace=status.namespace,
            kernel_id=self.kernel_id,
            language=self.language.name,
            owner=claimed.owner,
            user=claimed.user,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self._applied = []
        origin = "from the warm pool" if status.from_pool else "made for it"
        self._event(
            f"SandboxClaim {claimed.namespace}/{claimed.name} ready after {claimed.seconds * 1000:.0f} ms: "
            f"sandbox {status.namespace} ({origin}), pod {status.pod}"
        )
        self._start_heartbeat()
        self._pod_name = status.pod
        if prepared is not None and prepared.stream is not None:
            return self._open(self._ident, status.pod, prepared.stream, gate=False)
        self.start_progress = f"attaching to the sandbox pod {status.namespace}/{status.pod}"
        try:
            stream = await self._run(claiming.attach, api, status.namespace, status.pod)
        except BaseException:
            self._pod_name = None
            raise
        return self._open(self._ident, status.pod, stream)

    async def _wait_running(self, api: KubernetesApi, namespace: str, name: str, image: str) -> str:  # the pod's IP
        try:
            pod = await self._run(
                pod_start.wait_running,
                api,
                namespace,
                name,
                image,
                self.limits,
                self.settings,
                self._set_progress,
                lambda: self._closed,
            )
        except SandboxError as exc:
            self._event(str(exc))
            raise
        self._event(f"pod {name} running on node {pod.get('spec', {}).get('nodeName', '?')}")
        self.start_progress = waiting_for(pod)
        return str(pod.get("status", {}).get("podIP") or "")

    def _reattach(self, namespace: str, name: str) -> AttachStream | None:
        """Called by the reader thread when the stream ended: attach again if the container still runs."""
        return pod_start.reattach(
            self._connect(), namespace, name, self.settings.reconnect_timeout, lambda: self._closed
        )

    # -- heartbeat ----------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._stop_heartbeat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            ident, api = self._ident, self._api
            if ident is None or api is None:
                return
            try:
                if self._claim is not None:
                    await self._run(claiming.renew, api, self._claim.namespace, self._claim.name)
                else:
                    await self._run(api.renew_lease, ident.namespace, manifests.LEASE_NAME, micro_time())
            except SandboxError as exc:
                log.warning("heartbeat not renewed: %s", exc)

    # -- AgentSession hooks -------------------------------------------------------------------------

    async def _kill(self) -> None:
        name, self._pod_name = self._pod_name, None
        self._attach = None
        if name is None or self._ident is None or self._api is None:
            return
        if self._closed:
            self._last_pod = name  # close() deletes it together with the namespace
            return
        if self._claim is not None:
            return  # claims mode: the next _spawn gives the claim (and its sandbox) back, then claims anew
        try:
            await self._run(self._api.delete_pod, self._ident.namespace, name)
        except SandboxError:
            self._stale_pods.add(name)
            raise
        self._event(f"pod {name} deleted")

    async def _lost_reason(self) -> SandboxError:
        ident, name, api = self._ident, self._pod_name, self._api
        if ident is None or name is None or api is None:
            return SandboxLost("The sandbox stopped unexpectedly.")
        try:
            reason = None
            seen: float | None = None
            for _ in range(70):  # the kubelet may need a moment to report how the container ended
                pod = await self._run(api.read_pod, ident.namespace, name)
                reason = end_reason(pod, self.limits, self.settings.pod_lifetime)
                if reason is not None:
                    # The container's end may be reported before the pod's (an eviction or the
                    # deadline first stops the container): wait for the pod to settle, briefly.
                    settled = pod is None or pod.get("status", {}).get("phase") in ("Failed", "Succeeded")
                    seen = seen or time.monotonic()
                    if settled or isinstance(reason, OutOfMemory) or time.monotonic() - seen > 3.0:
                        break
                await asyncio.sleep(POLL_INTERVAL)
            if reason is not None and type(reason) is SandboxLost:
                # A kubelet eviction whose container exited cleanly on SIGTERM can leave the pod
                # "Succeeded" with no reason: its Evicted event still says what happened.
                evicted = eviction_event(await self._run(api.list_events, ident.namespace), name)
                if evicted is not None:
                    reason = evicted
        except SandboxError as exc:
            self._event(f"pod {name}: {exc}")
            return exc
        if reason is None:
            reason = SandboxLost(
                "The connection to the sandbox pod was lost while it was still running and could not be "
                "re-established. A new sandbox pod is started; variables from earlier cells are gone."
            )
        self._event(f"pod {name}: {reason}")
        return reason

    @property
    def close_timeout(self) -> float:
        # close() waits up to shutdown_deadline for the namespace to go; allow one slow request more.
        return self.settings.shutdown_deadline + CLOSE_MARGIN

    async def close(self) -> None:
        deadline = time.monotonic() + self.settings.shutdown_deadline
        await super().close()
        self._stop_heartbeat()
        if self._claim is not None and self._api is not None:
            claim, self._claim, self._ident = self._claim, None, None
            await self._run(claiming.release, self._api, claim.namespace, claim.name)
            if await self._run(
                claiming.wait_gone, self._api, claim.namespace, claim.name, max(0.0, deadline - time.monotonic())
            ):
                self._event(f"SandboxClaim {claim.name} and its sandbox {claim.status.namespace} deleted")
            else:
                log.warning(
                    "SandboxClaim %s/%s still exists %g s after deletion was requested; the controller "
                    "deletes its sandbox once it gets to it",
                    claim.namespace,
                    claim.name,
                    self.settings.shutdown_deadline,
                )
            return
        ident, self._ident = self._ident, None
        if ident is None or self._api is None:
            return
        api = self._api
        try:
            # Deleting the pod at once first (grace 0) spares the namespace controller waiting
            # for its graceful termination; the namespace then goes in a few seconds.
            for name in sorted(self._stale_pods | ({self._last_pod} if self._last_pod else set())):
                await self._run(api.delete_pod, ident.namespace, name)
            await self._run(api.delete_namespace, ident.namespace)
            while time.monotonic() < deadline:
                if await self._run(api.read_namespace, ident.namespace) is None:
                    self._event(f"namespace {ident.namespace} deleted")
                    self._last_pod = None
                    return
                await asyncio.sleep(0.25)
            log.warning(
                "namespace %s still exists %g s after deletion was requested (KubernetesSandbox.shutdown_deadline); "
                "Kubernetes keeps deleting it",
                ident.namespace,
                self.settings.shutdown_deadline,
            )
        except SandboxError as exc:
            log.warning("could not delete namespace %s: %s; `sandbox-kernel gc` will reclaim it", ident.namespace, exc)

    async def _after_ready(self) -> None:
        """The notebook's directory (Sandbox.workspace), copied into the pod's working directory:
        the pod cannot see the kernel's disk (workspace/transfer.py)."""
        event, notice = await copy_notebook_dir(self, self.limits, pod_command.SANDBOX_HOME)
        if event:
            self._event(event)
        self._write_back, unlisted = await remote_write_back(self, self.limits)  # read-write mode only
        for line in (notice, unlisted):
            if line:
                self._notice = f"{self._notice}\n{line}" if self._notice else line

    async def execute(self, code: str, *args: Any, **kwargs: Any) -> AsyncGenerator[Event, None]:
        """A cell; in read-write mode then the files it wrote in the pod, written back to the
        notebook's directory (workspace/writeback_remote.py). (Arguments as SandboxSession.execute.)"""
        cell = super().execute(code, *args, **kwargs)
        try:
            async for event in cell:
                yield event
        finally:
            await cell.aclose()
        write_back = self._write_back
        if write_back is not None and self._channel is not None:
            for line in await write_back.after_cell():
                yield Stream("stderr", f"[sandbox] {line}\n")

    # -- %sandbox -----------------------------------------------------------------------------------

    def report(self, topic: str) -> str:
        if topic not in reports.TOPICS:
            raise ValueError(topic)
        ident = self._ident
        if ident is None or self._api is None:
            return "No sandbox namespace exists yet (the sandbox has not started, or it was deleted)."
        facts = reports.SandboxFacts(
            ident=ident,
            pod_name=self._pod_name,
            settings=self.settings,
            limits=self.limits,
            language=f"{self.language.name} {self.language_info.get('version', '')}".strip(),
            image=self.settings.image(self.language),
            cell_timeout=self.timeout,
            stream=reports.stream_health(self._attach),
            kernel_events=tuple(self._events),
            applied=tuple(self._applied),
            claim=f"{self._claim.namespace}/{self._claim.name}" if self._claim else "",
            egress_line=self.egress.policy_line() if self.egress is not None else "",
            from_pool=bool(self._claim and self._claim.status.from_pool),
        )
        try:
            return reports.report(topic, self._api, facts)
        except SandboxError as exc:
            return f"Could not ask Kubernetes: {exc}"
