"""Every error Sandbox Kernel raises, each with a message a notebook user can act on.

::

    SandboxError                      what happened, in the user's words
    ├── ConfigError                   a setting is invalid (names the setting)
    ├── SandboxUnavailable            the sandbox cannot be started here (says how to fix it)
    │   └── ClusterNotConfigured      no kubeconfig and no in-cluster service account
    ├── SandboxStartError             the sandbox started but failed before it was ready
    │   ├── AdmissionError            Kubernetes refused an object (quota, Pod Security, RBAC)
    │   └── Unschedulable             no node can run the sandbox pod (it may clear up)
    ├── ClusterUnreachable            the Kubernetes API server does not answer
    ├── SandboxLost                   the sandbox ended while in use (state is lost)
    │   ├── OutOfMemory               it went over its memory limit
    │   └── Evicted                   Kubernetes evicted its pod
    ├── ShellOutOfMemory              Bash's shell died at the memory limit (the sandbox lives on)
    ├── CellTimeout                   a cell ran past its time limit
    ├── WorkspaceError                a file was not moved between the notebook's directory and the sandbox
    └── ProtocolError                 the agent broke the framed protocol

Lower-level errors (``OSError``, ``kubernetes.client.ApiException``) are translated at one
boundary per backend with ``raise ... from exc``, so the kernel only ever sees this tree. An
error the Kubernetes API server answered keeps its :class:`ApiStatus` (HTTP status, ``reason``,
``message``, as lightkube's ``ApiError`` keeps the ``Status``): code branches on those fields,
never on message text. Every error has a one-line :attr:`SandboxError.hint`, what to do next,
which the kernel shows on a line of its own under the message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiStatus:
    """What the Kubernetes API server answered to a failed request (its ``Status`` object)."""

    code: int
    """The HTTP status, e.g. 403, 404, 409, 422."""
    reason: str
    """``Status.reason``, a machine-readable word: ``Forbidden``, ``NotFound``, ``AlreadyExists``,
    ``Conflict``, ``Invalid``, ``Unauthorized``, ... (``""`` when the server sent none)."""
    message: str
    """``Status.message``, the server's own explanation."""


# The settings behind the two limits a user meets first, as a notebook and a pipeline set them
# (magics.py rewords the first sentence of each for %%sandbox cells).
TIMEOUT_HINT = (
    "Use %timeout SECONDS to allow longer cells in this kernel, or set c.Sandbox.timeout "
    "(environment variable SANDBOX_TIMEOUT; 0 = no limit) for every kernel."
)
MEMORY_HINT = (
    "Use less memory, or raise the limit: c.Sandbox.memory_limit (environment variable SANDBOX_MEMORY_LIMIT, e.g. 1Gi)."
)


class SandboxError(Exception):
    """Base class: ``str(err)`` is a complete sentence shown to the user, :attr:`hint` the next step."""

    ename = "SandboxError"
    hint = "See the kernel's log for details; restarting the kernel starts a new sandbox."
    """One line on what to do next (a class default, or given when raised)."""
    api_status: ApiStatus | None
    """What the Kubernetes API server answered, when the error is its refusal; else ``None``."""

    def __init__(self, message: str = "", *, hint: str | None = None, api_status: ApiStatus | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        self.api_status = api_status


class ConfigError(SandboxError, ValueError):
    """A setting has an invalid value."""

    ename = "ConfigError"
    hint = "Fix the setting in sandbox_kernel_config.py (or on the kernel's command line) and restart the kernel."

    def __init__(self, setting: str, message: str, *, hint: str | None = None) -> None:
        self.setting = setting
        super().__init__(f"Invalid setting {setting}: {message}", hint=hint)


class SandboxUnavailable(SandboxError):
    """The host cannot provide the isolation the backend needs."""

    ename = "SandboxUnavailable"
    hint = "Fix what the message names on this host or cluster, or choose another backend (SandboxKernel.backend)."


class ClusterNotConfigured(SandboxUnavailable):
    """The Kubernetes backend was chosen but no cluster is configured."""

    hint = "Set c.KubernetesSandbox.kubeconfig (or SANDBOX_KUBECONFIG), or use the local backend."


class SandboxStartError(SandboxError):
    """The sandbox could not be started or did not become ready."""

    ename = "SandboxStartError"
    hint = "Run the cell again to try a new start; %sandbox events shows what the cluster reported."


class AdmissionError(SandboxStartError):
    """The Kubernetes API server refused an object; the message carries its reason."""

    ename = "AdmissionError"
    hint = "RBAC, a quota or an admission policy refused it (the message says which): ask the cluster's administrator."


class Unschedulable(SandboxStartError):
    """No node can run the sandbox pod: the scheduler says why (it may be waiting for a node)."""

    hint = "Check KubernetesSandbox.node_selector and tolerations, and Sandbox.memory_request and cpu_request."


class ClusterUnreachable(SandboxError):
    """The Kubernetes API server could not be reached."""

    ename = "ClusterUnreachable"
    hint = "Check that the cluster answers (kubectl cluster-info), then run the cell again."


class SandboxLost(SandboxError):
    """The sandbox ended while the kernel was using it; its state is gone."""

    ename = "SandboxLost"
    hint = "Run the cell again: it runs in a new sandbox, so re-run the cells it depends on first."


class OutOfMemory(SandboxLost):
    """The sandbox went over its memory limit and was killed."""

    ename = "OutOfMemory"
    hint = "Re-run the earlier cells with smaller data, or raise Sandbox.memory_limit and restart the kernel."

    def __init__(self, limit: str) -> None:
        self.limit = limit
        super().__init__(
            f"The sandbox ran out of memory (limit {limit}) and was restarted; "
            f"variables from earlier cells are gone. {MEMORY_HINT}"
        )


class ShellOutOfMemory(SandboxError):
    """Bash's shell died at the sandbox's memory limit and the agent started a new one; the
    sandbox itself carries on (its files stay). Under gVisor the host's OOM killer does not kill
    the shell but a process of gVisor's that serves it, and the shell exits with status 1; the
    backend tells it by the sandbox's OOM count."""

    ename = "OutOfMemory"
    hint = OutOfMemory.hint

    def __init__(self, limit: str) -> None:
        self.limit = limit
        super().__init__(
            f"The shell ran out of memory (limit {limit}); a new shell was started in the last working "
            f"directory, and variables, functions and aliases are lost. {MEMORY_HINT}"
        )


class Evicted(SandboxLost):
    """Kubernetes evicted the sandbox pod (for instance its scratch volume filled up)."""

    ename = "Evicted"
    hint = "Re-run the cells you need in the new pod; %sandbox events shows why it was evicted."


class CellTimeout(SandboxError):
    """A cell ran longer than the per-cell time limit."""

    ename = "CellTimeout"
    hint = "Split long work into shorter cells, or allow more time as the message says."

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"The cell was stopped after {seconds:g} s (the time limit). {TIMEOUT_HINT}")


class ProtocolError(SandboxError):
    """The agent sent bytes that break the framed protocol."""

    ename = "ProtocolError"
    hint = "The sandbox was replaced: run the cell again (if this recurs, report it with the kernel's log)."


class WorkspaceError(SandboxError):
    """A file was not moved between the notebook's directory and the sandbox (a refused name, a
    symlink, a limit); the message names the file and the reason."""

    ename = "WorkspaceError"
    hint = "Name a regular file inside the notebook's directory; see Sandbox.workspace and workspace_limit."
