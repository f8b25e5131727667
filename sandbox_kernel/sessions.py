"""The one place a sandbox session is built: backend choice, settings, and the backend's session.

The kernel, ``sandbox-kernel`` (cli.py) and the ``%%sandbox`` magics all come here, so the
environment wins over configuration the same way everywhere, and none of them needs to import
ipykernel to get a session.
"""

from __future__ import annotations

import os
import re
from typing import Any

from traitlets import TraitError

from .config import Sandbox
from .errors import ConfigError
from .languages import get_language
from .session import SandboxSession

BACKENDS = ("local", "kubernetes")
BACKEND_ENV = "SANDBOX_KERNEL_BACKEND"
"""Environment variable that chooses the backend; it wins over ``c.SandboxKernel.backend``."""


def chosen_backend(configured: str | None = None) -> str:
    """The backend to use: ``$SANDBOX_KERNEL_BACKEND``, else ``configured``, else 'local'."""
    return os.environ.get(BACKEND_ENV) or configured or "local"


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
