"""The warm pool: ready sandboxes, made before any claim, each handed to exactly one claim.

A pooled sandbox is a whole sandbox (namespace, quota, limit range, deny-all policy, agent
ConfigMap, and the agent pod started, past its policy guard and waiting for the kernel's gate
line), labelled ``sandbox-kernel/pool=<key>`` and ``sandbox-kernel/state=ready``. The key
(:meth:`..kubernetes.claims.ClaimSpec.pool_key`) covers everything that shapes the pod: language,
image, limits, seccomp profile. A claim with the same key takes one by a single namespace PATCH
that carries the ``resourceVersion`` it was listed at (:func:`.sandboxes.bind`): of two
controllers, or two claims, racing for it, the API server lets exactly one write through and
answers 409 to the other, who tries the next one or makes a new sandbox. A taken sandbox is never
returned to the pool (its user's state stays in it until it is deleted with the claim).
Sandboxes older than ``SandboxController.pool_lifetime``, or whose pod ended, are deleted and
replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, cast

from ..config import Sandbox
from ..errors import SandboxError
from ..kubernetes import claims, manifests
from ..kubernetes.api import Conflict, KubernetesApi, parse_time
from ..kubernetes.pod_status import container_running
from ..kubernetes.settings import KubernetesSandbox
from . import sandboxes
from .settings import SandboxController

log = logging.getLogger("sandbox_kernel.controller")


@dataclass(frozen=True)
class Target:
    """One pool: how many sandboxes of which kind."""

    language: str
    count: int
    spec: claims.ClaimSpec
    plan: sandboxes.Plan


def targets(base: KubernetesSandbox, bounds: SandboxController, creator: str) -> list[Target]:
    """The pools to keep: per language in ``SandboxController.pool``, with this process's Sandbox.* limits."""
    limits = Sandbox(config=base.config)
    found = []
    for language, count in sorted(bounds.pool.items()):
        if count <= 0:
            continue
        spec = claims.ClaimSpec(
            language=language,
            user=creator,
            cpu=limits.cpu_limit,
            memory=limits.memory_limit,
            cpu_request=limits.cpu_request,
            memory_request=limits.memory_request,
            scratch=limits.scratch_size,
            seccomp_profile=base.seccomp_profile,
        )
        found.append(Target(language, count, spec, sandboxes.plan(spec, base, bounds)))
    return found


def _selector(key: str, state: str = "") -> str:
    parts = [manifests.SELECTOR, f"{claims.LABEL_MADE_BY}={claims.MADE_BY_CONTROLLER}", f"{claims.LABEL_POOL}={key}"]
    if state:
        parts.append(f"{claims.LABEL_STATE}={state}")
    return ",".join(parts)


class Pool:
    """Keeps the pools of :func:`targets` full; :meth:`take` hands one sandbox to one claim."""

    def __init__(
        self, api: KubernetesApi, base: KubernetesSandbox, bounds: SandboxController, creator: str, executor: Executor
    ) -> None:
        self.api = api
        self.base = base
        self.bounds = bounds
        self.creator = creator
        self.executor = executor
        self.targets = targets(base, bounds, creator)
        self.keys = {t.plan.pool_key for t in self.targets}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._making: dict[str, int] = {}
        self._mine: set[str] = set()
        self.made = 0
        self.taken = 0

    # -- taking one (blocking, from a claim handler's thread) --------------------------------------

    def take(self, key: str, claim: sandboxes.ClaimRef) -> str | None:
        """Bind a ready pooled sandbox of ``key`` to ``claim``; its namespace, or None (no match, empty, all taken)."""
        if key not in self.keys:
            return None
        try:
            ready = self.api.list_namespaces(_selector(key, "ready"))
        except SandboxError as exc:
            log.warning("could not list the pool: %s", exc)
            return None
        ready.sort(key=lambda ns: str(ns["metadata"].get("creationTimestamp", "")))
        for namespace in ready:
            if namespace["metadata"].get("deletionTimestamp"):
                continue
            if not sandboxes.bind(self.api, namespace, claim):
                continue  # someone else's now: try the next
            name = namespace["metadata"]["name"]
            self._refill()
            pod = self.api.read_pod(name, sandboxes.POD_NAME)
            if not container_running(pod):  # ended while it waited: never hand out a dead sandbox
                log.warning("pooled sandbox %s had no running pod; deleting it", name)
                self.api.delete_namespace(name)
                continue
            self.taken += 1
            return cast("str | None", name)
        return None

    def why_cold(self, key: str, language: str) -> str:
        """Why a claim of pool ``key`` got no pooled sandbox (after :meth:`take` found none), in words."""
        if key not in self.keys:
            return f"no warm pool keeps {language} sandboxes of this kind (image, limits)"
        return f"the warm pool has no ready {language} sandbox left (all taken; it is being refilled)"

    def _refill(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- keeping it full ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: refill at once after a take, and check everything every ``pool_resync`` s."""
        if not self.targets:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                await self.reconcile()
            except SandboxError as exc:
                log.warning("pool check failed: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.bounds.pool_resync)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def reconcile(self) -> None:
        loop = asyncio.get_running_loop()
        for target in self.targets:
            key = target.plan.pool_key
            items = await loop.run_in_executor(self.executor, self.api.list_namespaces, _selector(key))
            live = 0
            for namespace in items:
                meta = namespace["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                if self._stale(namespace) or await loop.run_in_executor(self.executor, self._dead, namespace):
                    # Only at the version listed: one a claim has just taken is not pulled from under it.
                    try:
                        await loop.run_in_executor(
                            self.executor,
                            self.api.delete_namespace,
                            meta["name"],
                            str(meta.get("resourceVersion") or ""),
                        )
                        log.info("recycled pooled sandbox %s", meta["name"])
                    except Conflict:
                        pass
                    continue
                if meta["name"] not in self._mine:
                    live += 1
            # In-flight makes count once (a namespace one of them made is in _mine, or not yet
            # listed; one made but not yet recorded is counted twice: a pool is at worst refilled
            # one check later, never overfilled).
            missing = target.count - live - self._making.get(key, 0)
            for _ in range(max(0, missing)):
                self._making[key] = self._making.get(key, 0) + 1
                loop.create_task(self._make(target))

    def _stale(self, namespace: dict[str, Any]) -> bool:
        meta = namespace["metadata"]
        created = parse_time(meta.get("creationTimestamp"))
        if created is not None and time.time() - created.timestamp() > self.bounds.pool_lifetime:
            return True
        state = (meta.get("labels") or {}).get(claims.LABEL_STATE)
        if (
            state == "warming"
            and created is not None
            and time.time() - created.timestamp() > self.base.start_timeout + 30
        ):
            return True  # never came up (or its maker died): replace it
        return False

    def _dead(self, namespace: dict[str, Any]) -> bool:
        """A ready pooled sandbox whose pod no longer runs (its lifetime, an eviction, a node lost)."""
        meta = namespace["metadata"]
        if (meta.get("labels") or {}).get(claims.LABEL_STATE) != "ready":
            return False
        return not container_running(self.api.read_pod(meta["name"], sandboxes.POD_NAME))

    async def _make(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        key = target.plan.pool_key
        name = ""
        try:
            name = await loop.run_in_executor(
                self.executor, sandboxes.make, self.api, target.plan, target.spec, self.creator, None
            )
            self._mine.add(name)
            problem = await loop.run_in_executor(self.executor, sandboxes.wait_running, self.api, name, target.plan)
            if problem:
                log.warning("pooled sandbox %s did not start: %s; deleting it", name, problem)
                await loop.run_in_executor(self.executor, self.api.delete_namespace, name)
                return
            # Ready only if still warming: a PATCH with the resourceVersion read now, so a sandbox
            # deleted or changed meanwhile is not marked.
            current = await loop.run_in_executor(self.executor, self.api.read_namespace, name)
            if current is None or (current["metadata"].get("labels") or {}).get(claims.LABEL_STATE) != "warming":
                return
            await loop.run_in_executor(
                self.executor,
                lambda: self.api.patch_namespace(
                    name, {claims.LABEL_STATE: "ready"}, {}, str(current["metadata"].get("resourceVersion") or "")
                ),
            )
            self.made += 1
            log.info("pooled sandbox %s ready (%s, pool %s)", name, target.language, key)
        except SandboxError as exc:
            log.warning("could not make a pooled %s sandbox: %s", target.language, exc)
        finally:
            self._making[key] -= 1
            self._mine.discard(name)
