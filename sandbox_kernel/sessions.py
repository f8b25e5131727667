"""The one place a sandbox session is built: backend choice, settings, and the backend's session.

The kernel, ``sandbox-kernel`` (cli.py) and the ``%%sandbox`` magics all come here, so the same
configuration gives the same sandbox everywhere, and none of them needs to import ipykernel to
get a session. (The Kubernetes early start, which runs before any of them, takes the backend
choice from ``config.py``, where it is defined, so that it need not import this module.)

Where a setting's value comes from, first match wins:

- **The backend** (``SandboxKernel.backend``, :func:`chosen_backend`): the environment
  (``$SANDBOX_KERNEL_BACKEND``), then the command line (``--SandboxKernel.backend=...``), then a
  config file (``c.SandboxKernel.backend`` in ``sandbox_kernel_config.py``, or the IPython
  profile for the magics), then ``'local'``. The environment wins even over the command line
  because every installed kernelspec names its backend there (``sandbox-kernel install``): the
  environment is how one redirects an installed kernel, as the end-to-end tests and benchmarks do.
- **Every other setting** (``Sandbox.*``, ``LocalSandbox.*``, ``KubernetesSandbox.*``, ...): the
  command line, then a config file, then the environment variable its help names (read when
  nothing set the setting), then the default.

The kernel passes the traitlets config its application merged (command line over config files);
the magics pass ``sandbox_kernel_config.py`` with the shell's own config on top (no command line).
"""

from __future__ import annotations

import re
from typing import Any

from traitlets import TraitError

from .config import BACKEND_ENV, BACKENDS, DEFAULT_BACKEND, Sandbox, chosen_backend
from .errors import ConfigError
from .languages import get_language
from .session import SandboxSession

__all__ = ["BACKENDS", "BACKEND_ENV", "DEFAULT_BACKEND", "chosen_backend", "make_session", "sandbox_settings"]


def sandbox_settings(config: Any = None, parent: Any = None) -> Sandbox:
    """The ``Sandbox`` settings; a value of the wrong kind is a ConfigError naming the setting."""
    try:
        return Sandbox(config=config, parent=parent)
    except TraitError as exc:
        match = re.search(r"The '(\w+)' trait", str(exc))
        raise ConfigError(f"Sandbox.{match.group(1) if match else '?'}", str(exc)) from None


def make_session(backend: str, language: str, config: Any = None, parent: Any = None) -> SandboxSession:
    """Build (but do not start) a session; raise ConfigError for bad settings."""
    if backend not in BACKENDS:
        raise ConfigError("SandboxKernel.backend", f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    lang = get_language(language)
    limits = sandbox_settings(config, parent).limits()
    if backend == "local":
        from .local.backend import LocalSandbox, LocalSandboxSession

        return LocalSandboxSession(lang, limits, LocalSandbox(config=config, parent=parent))
    from .kubernetes.session import KubernetesSandboxSession
    from .kubernetes.settings import KubernetesSandbox

    return KubernetesSandboxSession(lang, limits, KubernetesSandbox(config=config, parent=parent))
