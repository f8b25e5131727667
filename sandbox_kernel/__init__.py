"""Sandbox Kernel: Jupyter kernels whose cells run in an isolated sandbox.

Python, Node.js and Bash cells run in a local bubblewrap sandbox (the default) or in a
locked-down Kubernetes namespace per kernel. See README.md for the settings.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:  # pragma: no cover - thin shim, tested through IPython
    """``%load_ext sandbox_kernel`` in an ordinary IPython kernel: adds ``%%sandbox`` cells."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:  # pragma: no cover
    from .magics import unload_ipython_extension as unload

    unload(ipython)
