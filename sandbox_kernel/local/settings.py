"""Settings of the local backend (``c.LocalSandbox.*``)."""

from __future__ import annotations

import os
from typing import Any, cast

from traitlets import Bool, Enum, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from . import gvisor, uids

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class LocalSandbox(Configurable):
    """Settings of the local (bubblewrap) backend."""

    bwrap = Unicode("bwrap", help="The bubblewrap program (Debian package 'bubblewrap').").tag(config=True)

    runtime = Enum(
        ["bubblewrap", "gvisor"],
        "bubblewrap",
        help="What runs the agent: 'bubblewrap' (namespaces and a seccomp filter; system calls reach "
        "the host kernel) or 'gvisor' (gVisor's runsc: system calls reach gVisor's own user-space "
        "kernel; slower to start and to make system calls). The same limits, files, network and uid apply.",
    ).tag(config=True)

    runsc = Unicode(
        "runsc", help="gVisor's runsc program (Debian package 'runsc', 2023 or later), for runtime 'gvisor'."
    ).tag(config=True)

    gvisor_platform = Enum(
        list(gvisor.PLATFORMS),
        "systrap",
        help="How gVisor intercepts system calls (runsc --platform): 'systrap' (fastest without "
        "hardware virtualization), 'ptrace', or 'kvm' (needs a usable /dev/kvm).",
    ).tag(config=True)

    run_as_uid = Int(
        None,
        allow_none=True,
        help="Host uid every sandbox runs as when the kernel runs as root. Unset (the default), "
        "each sandbox gets a uid of its own from uid_range. Inside the sandbox it appears as uid 1000.",
    ).tag(config=True)

    uid_range = Unicode(
        "1879048192-1879113727",
        help="Host uids ('FIRST-LAST') given out one per sandbox when the kernel runs as root "
        "(0x70000000-0x7000FFFF: above systemd-nspawn's container range, below its foreign range). "
        "uids with a passwd or group entry, in /etc/subuid or /etc/subgid, or used by any "
        "process are skipped; leases are flocks under /run/sandbox-kernel/uids.",
    ).tag(config=True)

    seccomp_python = Unicode(
        "/usr/bin/python3",
        help="Python that compiles the seccomp filter with libseccomp's bindings (Debian package "
        "'python3-seccomp') when the kernel's own interpreter cannot import seccomp.",
    ).tag(config=True)

    @validate("uid_range")
    def _check_uid_range(self, proposal: Any) -> str:
        try:
            uids.parse_range(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from None
        return cast("str", proposal["value"])

    interpreters = List(
        Unicode(),
        help="Override the program that runs an agent, as 'language=/path' items "
        "(e.g. 'python=/usr/bin/python3.12'). By default python3, node and bash are looked up "
        "on " + SANDBOX_PATH + ".",
    ).tag(config=True)

    read_only_paths = List(
        Unicode(),
        help="Extra host paths made visible read-only inside the sandbox, at the same place "
        "(e.g. a data set directory), also when only the kernel's user may read them (a root "
        "kernel's /root). A path the sandbox's own mounts would hide (/tmp itself, /proc, /dev, "
        "its HOME, /workspace) is refused with an error.",
    ).tag(config=True)

    python_environment = Unicode(
        help="The Python environment the sandbox runs (Sandbox (Python)'s interpreter, and the "
        "first directory on every sandbox's PATH): 'kernel' (the default: the environment this "
        "kernel was installed into, venv, conda, pyenv or the system's, so what you pip install "
        "next to JupyterLab imports in the sandbox), 'system' (" + SANDBOX_PATH + "'s python3 "
        "and the system's packages), or the directory of an environment (a venv or conda "
        "prefix). It is visible read-only at the same path. Env: SANDBOX_PYTHON_ENVIRONMENT.",
    ).tag(config=True)

    @default("python_environment")
    def _python_environment_default(self) -> str:
        return os.environ.get("SANDBOX_PYTHON_ENVIRONMENT", "kernel")

    node_modules = List(
        Unicode(),
        help="node_modules directories Sandbox (Node.js) finds packages in (its NODE_PATH), "
        "visible read-only at the same path, e.g. ['/opt/project/node_modules']. Empty (the "
        "default): the system's global modules only.",
    ).tag(config=True)

    require_limits = Bool(
        True,
        help="Refuse to start when memory, CPU and process limits cannot be enforced (no usable "
        "cgroups, e.g. when not running as root). Set False to run without limits.",
    ).tag(config=True)

    require_isolation = Bool(
        True,
        help="Refuse to start when bubblewrap or user namespaces are unavailable. Set False to run "
        "cells WITHOUT any isolation (only for trusted code).",
    ).tag(config=True)
