"""Settings of the sandbox controller (traitlets, like every other setting; see the README's table).

The pods' own settings (images, tolerations, quota, limit range, seccomp, node selector, …) are
the ``KubernetesSandbox.*`` ones, read by the controller instead of the kernels in claims mode.
"""

from __future__ import annotations

import os
import socket
import uuid

from traitlets import Dict, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from ..config import setting_bytes, setting_cpu
from ..errors import ConfigError


def _pool_from_env() -> dict[str, int]:
    """``SANDBOX_CONTROLLER_POOL="python=3,node=1"`` → ``{'python': 3, 'node': 1}``."""
    raw = os.environ.get("SANDBOX_CONTROLLER_POOL", "").strip()
    pool: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, count = item.partition("=")
        try:
            pool[name.strip()] = int(count)
        except ValueError:
            raise ConfigError(
                "SandboxController.pool", f"SANDBOX_CONTROLLER_POOL item {item!r} is not language=count"
            ) from None
    return pool


class SandboxController(Configurable):
    """Settings of ``sandbox-kernel controller``."""

    max_cpu = Unicode(
        "1",
        help="Most cpu a SandboxClaim may ask for (the operator's bound; keep it equal to "
        "the CRD's rule in k8s/crd/sandboxclaims.yaml).",
    ).tag(config=True)
    max_memory = Unicode(
        "1Gi", help="Most memory a SandboxClaim may ask for (the operator's bound; keep it equal to the CRD's rule)."
    ).tag(config=True)
    max_scratch = Unicode(
        "256Mi",
        help="Largest scratch volume a SandboxClaim may ask for (the operator's bound; "
        "keep it equal to the CRD's rule).",
    ).tag(config=True)

    extra_images = List(
        Unicode(),
        help="Images a SandboxClaim may name besides KubernetesSandbox.images (one per language, "
        "also the image of a claim that names none).",
    ).tag(config=True)

    allow_hosts = List(
        Unicode(),
        help="Controlled egress for claimed sandboxes (k8s/EGRESS.md): the hosts a SandboxClaim's spec.egress "
        "may ask for, as Sandbox.allow_hosts names them (pypi.org, *.pythonhosted.org, host:port). Empty (the "
        "default): a claim that asks for egress is refused, every claimed sandbox is deny-all. Needs the "
        "egress proxy (k8s/egress/) and KubernetesSandbox.egress_proxy.",
    ).tag(config=True)

    pool = Dict(
        key_trait=Unicode(),
        value_trait=Int(),
        help="Warm pool: how many ready sandboxes to keep per language, e.g. --SandboxController.pool=python=3, each with the "
        "language's KubernetesSandbox image and the Sandbox.* limits of this process (a claim asking for "
        "exactly that gets one at once; any other claim, or an empty pool, gets a new sandbox). "
        "Env: SANDBOX_CONTROLLER_POOL=python=3,node=1.",
    ).tag(config=True)

    @default("pool")
    def _pool_default(self) -> dict[str, int]:
        return _pool_from_env()

    pool_lifetime = Int(
        3600,
        help="Seconds a pooled sandbox may wait for a claim; older ones are deleted and replaced "
        "(their pod's lifetime, KubernetesSandbox.pod_lifetime, keeps running from its start).",
    ).tag(config=True)

    pool_resync = Float(
        10.0, help="Seconds between full checks of the pool (a taken sandbox is replaced at once)."
    ).tag(config=True)

    sweep_interval = Float(
        30.0,
        help="Seconds between sweeps for sandboxes whose claim is gone (missed while the controller was "
        "down) and direct-mode sandboxes whose heartbeat Lease expired (what `sandbox-kernel gc` does).",
    ).tag(config=True)

    reclaim_grace = Float(
        60.0,
        help="Seconds past a direct-mode sandbox's heartbeat expiry before the controller's sweep deletes "
        "it (the gc CronJob it replaces ran every 5 minutes; `sandbox-kernel gc` run by hand acts at once).",
    ).tag(config=True)

    heartbeat_check = Float(2.0, help="Seconds between checks of each claim's heartbeat.").tag(config=True)

    lease_name = Unicode("sandbox-kernel-controller", help="Leader-election Lease: only its holder acts.").tag(
        config=True
    )
    lease_namespace = Unicode("sandbox-kernel-system", help="Namespace of the leader-election Lease.").tag(config=True)
    lease_duration = Int(15, help="Seconds a leader's Lease lasts without renewal; a standby takes over after it.").tag(
        config=True
    )
    renew_deadline = Int(
        10, help="Seconds the leader keeps trying to renew before it gives up leading (and exits)."
    ).tag(config=True)
    retry_period = Float(2.0, help="Seconds between leader-election attempts and renewals.").tag(config=True)

    identity = Unicode(
        help="This replica's name in the Lease (default: host name, process id and a random suffix)."
    ).tag(config=True)

    @default("identity")
    def _identity_default(self) -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    workers = Int(32, help="Threads for the controller's blocking API calls (claims are served concurrently).").tag(
        config=True
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first bad setting."""
        setting_cpu("SandboxController.max_cpu", self.max_cpu)
        setting_bytes("SandboxController.max_memory", self.max_memory)
        setting_bytes("SandboxController.max_scratch", self.max_scratch)
        from ..languages import LANGUAGES

        for language, count in self.pool.items():
            if language not in LANGUAGES:
                raise ConfigError("SandboxController.pool", f"{language!r} is not one of {', '.join(LANGUAGES)}")
            if not 0 <= count <= 50:
                raise ConfigError("SandboxController.pool", f"{language}: {count} is not 0 to 50")
        if self.pool_lifetime < 60:
            raise ConfigError("SandboxController.pool_lifetime", "must be at least 60 seconds")
        # The official client's leader election checks these (and would sys.exit on them).
        if not (1 <= self.retry_period and 1.2 * self.retry_period < self.renew_deadline < self.lease_duration):
            raise ConfigError(
                "SandboxController.renew_deadline",
                "need 1 <= retry_period, 1.2 * retry_period < renew_deadline < lease_duration",
            )
        for name in ("pool_resync", "sweep_interval", "heartbeat_check"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SandboxController.{name}", "must be more than 0 seconds")
        from ..egress.policy import PolicyError, parse_entry

        for host in self.allow_hosts:
            try:
                parse_entry(host)
            except PolicyError as exc:
                raise ConfigError("SandboxController.allow_hosts", str(exc)) from None
        if self.workers < 2:
            raise ConfigError("SandboxController.workers", "must be at least 2")
