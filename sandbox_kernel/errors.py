"""Every error Sandbox Kernel raises, each with a message a notebook user can act on.

::

    SandboxError                      what happened, in the user's words
    ├── ConfigError                   a setting is invalid (names the setting)
    ├── SandboxUnavailable            the sandbox cannot be started here (says how to fix it)
    ├── SandboxStartError             the sandbox started but failed before it was ready
    │   └── AdmissionError            Kubernetes refused an object (quota, Pod Security, RBAC)
    ├── ClusterUnreachable            the Kubernetes API server does not answer
    ├── SandboxLost                   the sandbox ended while in use (state is lost)
    │   ├── OutOfMemory               it went over its memory limit
    │   └── Evicted                   Kubernetes evicted its pod
    ├── CellTimeout                   a cell ran past its time limit
    └── ProtocolError                 the agent broke the framed protocol

Lower-level errors (``OSError``, ``kubernetes.client.ApiException``) are translated at one
boundary per backend with ``raise ... from exc``, so the kernel only ever sees this tree.
"""

from __future__ import annotations


# The settings behind the two limits a user meets first, as a notebook and a pipeline set them
# (magics.py rewords the first sentence of each for %%sandbox cells).
TIMEOUT_HINT = (
    "Use %timeout SECONDS to allow longer cells in this kernel, or set c.Sandbox.timeout "
    "(environment variable SANDBOX_TIMEOUT; 0 = no limit) for every kernel."
)
MEMORY_HINT = (
    "Use less memory, or raise the limit: c.Sandbox.memory_limit "
    "(environment variable SANDBOX_MEMORY_LIMIT, e.g. 1Gi)."
)


class SandboxError(Exception):
    """Base class: ``str(err)`` is a complete sentence shown to the user."""

    ename = "SandboxError"


class ConfigError(SandboxError, ValueError):
    """A setting has an invalid value."""

    ename = "ConfigError"

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"Invalid setting {setting}: {message}")


class SandboxUnavailable(SandboxError):
    """The host cannot provide the isolation the backend needs."""

    ename = "SandboxUnavailable"


class SandboxStartError(SandboxError):
    """The sandbox could not be started or did not become ready."""

    ename = "SandboxStartError"


class AdmissionError(SandboxStartError):
    """The Kubernetes API server refused an object; the message carries its reason."""

    ename = "AdmissionError"


class ClusterUnreachable(SandboxError):
    """The Kubernetes API server could not be reached."""

    ename = "ClusterUnreachable"


class SandboxLost(SandboxError):
    """The sandbox ended while the kernel was using it; its state is gone."""

    ename = "SandboxLost"


class OutOfMemory(SandboxLost):
    """The sandbox went over its memory limit and was killed."""

    ename = "OutOfMemory"

    def __init__(self, limit: str) -> None:
        self.limit = limit
        super().__init__(
            f"The sandbox ran out of memory (limit {limit}) and was restarted; "
            f"variables from earlier cells are gone. {MEMORY_HINT}"
        )


class Evicted(SandboxLost):
    """Kubernetes evicted the sandbox pod (for instance its scratch volume filled up)."""

    ename = "Evicted"


class CellTimeout(SandboxError):
    """A cell ran longer than the per-cell time limit."""

    ename = "CellTimeout"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"The cell was stopped after {seconds:g} s (the time limit). {TIMEOUT_HINT}")


class ProtocolError(SandboxError):
    """The agent sent bytes that break the framed protocol."""

    ename = "ProtocolError"
