"""What isolation this host gives a local sandbox, decided before it starts.

:func:`check_host` looks for bubblewrap (or gVisor's ``runsc``) and user namespaces and sets up
the parent cgroups; :func:`seccomp_filter` compiles the seccomp table. Each raises an error that
says what to install, unless the user opted out (``LocalSandbox.require_isolation``,
``require_limits``): then the sandbox runs with less, and ``%sandbox status`` says so.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..config import Limits
from ..errors import SandboxStartError, SandboxUnavailable
from . import cgroups, gvisor, seccomp_policy
from .settings import LocalSandbox

log = logging.getLogger("sandbox_kernel")


def check_host(settings: LocalSandbox, limits: Limits, use_gvisor: bool) -> tuple[bool, bool]:
    """Whether the sandbox can be isolated and whether its limits can be enforced here (setting up
    the parent cgroups on the way); raise when the user has not opted out of what is missing."""
    isolated = True
    why = None
    if use_gvisor:
        why = gvisor.unavailable_reason(settings.runsc)
        if why:  # asked for by name: never fall back to less isolation
            raise SandboxUnavailable(
                f"The local sandbox cannot use gVisor here: {why}, or set c.LocalSandbox.runtime = 'bubblewrap'."
            )
        if limits.allow_hosts:
            raise SandboxUnavailable(
                "Sandbox.allow_hosts (egress) is not available with LocalSandbox.runtime = 'gvisor' yet: gVisor's sandbox has no network."
            )
    elif shutil.which(settings.bwrap) is None:
        why = (
            f"bubblewrap ('{settings.bwrap}') is not installed. Install it (Debian/Ubuntu: apt-get install bubblewrap)"
        )
    elif (
        Path("/proc/sys/user/max_user_namespaces").exists()
        and Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0"
    ):
        why = "user namespaces are disabled (sysctl user.max_user_namespaces=0). Enable them"
    if why:
        if settings.require_isolation:
            raise SandboxUnavailable(
                f"The local sandbox cannot isolate cells here: {why}, or set "
                "c.LocalSandbox.require_isolation = False to run cells without isolation."
            )
        isolated = False
    reason = cgroups.set_up_parent_groups()
    if reason:
        if settings.require_limits:
            raise SandboxUnavailable(
                f"The local sandbox cannot enforce memory, CPU and process limits: {reason}. "
                "Set c.LocalSandbox.require_limits = False to run without limits."
            )
        return isolated, False
    return isolated, True


def seccomp_filter(settings: LocalSandbox) -> bytes | None:
    """The compiled seccomp filter (:mod:`.seccomp_policy`); None (with a warning) only when the user opted out of isolation."""
    try:
        return seccomp_policy.compile_bpf(settings.seccomp_python)
    except seccomp_policy.SeccompUnavailable as exc:
        if settings.require_isolation:
            raise SandboxStartError(
                f"The local sandbox cannot build its seccomp filter: {exc}. Install the package "
                "python3-seccomp, or set c.LocalSandbox.require_isolation = False to run without it."
            ) from exc
        log.warning("running the sandbox WITHOUT a seccomp filter: %s", exc)
        return None
