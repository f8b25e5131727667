"""Settings shared by every backend, and their validation.

Every setting is a traitlets trait with help text, set in ``sandbox_kernel_config.py`` (any
Jupyter config directory) as ``c.Sandbox.memory_limit = "512Mi"``, or through the environment
variable named in its help. The names are the same for the local sandbox and Kubernetes
wherever they mean the same thing. :meth:`Sandbox.limits` validates them all at once and turns
the first bad value into a :class:`~sandbox_kernel.errors.ConfigError` that names the setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from traitlets import Enum, Float, Int, List, Unicode, default
from traitlets.config import Configurable

from .egress.policy import PolicyError, parse_entry
from .errors import ConfigError
from .quantity import QuantityError, format_bytes, parse_bytes, parse_cpu


@dataclass(frozen=True)
class Limits:
    """Validated limits in force for one sandbox."""

    memory: str
    memory_bytes: int
    cpu: str
    cpu_cores: float
    memory_request: str
    cpu_request: str
    pids: int
    timeout: float
    output_bytes: int
    scratch: str
    scratch_bytes: int
    interrupt_grace: float
    output_rate: int = 1000
    allow_hosts: tuple[str, ...] = ()
    ipython: str = "auto"
    workspace: str = "read-only"
    workspace_bytes: int = 256 * 2**20
    workspace_files: int = 10000

    def summary(self) -> str:
        """One line for banners and ``%sandbox status``."""
        return (
            f"memory {self.memory}, cpu {self.cpu}, processes {self.pids}, "
            f"{self.timeout:g} s per cell, output {format_bytes(self.output_bytes)} per cell, "
            f"scratch {self.scratch}"
        )


WORKSPACE_MODES = ("read-only", "read-write", "hidden")
"""The values of ``Sandbox.workspace``."""

BACKENDS = ("local", "kubernetes")
"""The backends a session can be built for (``SandboxKernel.backend``)."""
DEFAULT_BACKEND = "local"
"""The backend when nothing chooses one."""
BACKEND_ENV = "SANDBOX_KERNEL_BACKEND"
"""Environment variable that chooses the backend; it wins over ``SandboxKernel.backend``, even
on the command line (see :mod:`sandbox_kernel.sessions` for why)."""


def chosen_backend(configured: str | None = None) -> str:
    """The backend to use: ``$SANDBOX_KERNEL_BACKEND``, else ``configured`` (the merged command
    line and config file), else :data:`DEFAULT_BACKEND`. Not validated: :func:`~sandbox_kernel.sessions.make_session`
    reports an unknown one where the user sees it."""
    return os.environ.get(BACKEND_ENV) or configured or DEFAULT_BACKEND


def _env(name: str, fallback: str) -> str:
    return os.environ.get(name, fallback)


class Sandbox(Configurable):
    """Limits that apply to every sandbox, whatever the backend."""

    memory_limit = Unicode(
        help="Memory a sandbox may use, as a Kubernetes quantity (e.g. 256Mi, 1Gi). Going over "
        "it kills the sandbox with an 'out of memory' error. Env: SANDBOX_MEMORY_LIMIT.",
    ).tag(config=True)

    @default("memory_limit")
    def _memory_limit_default(self) -> str:
        return _env("SANDBOX_MEMORY_LIMIT", "256Mi")

    cpu_limit = Unicode(
        help="CPU a sandbox may use, in cores or millicores (e.g. 500m, 1): locally a share of each second "
        "(a shorter burst, such as a plot, runs at full speed), on Kubernetes the pod's limits.cpu. Env: SANDBOX_CPU_LIMIT.",
    ).tag(config=True)

    @default("cpu_limit")
    def _cpu_limit_default(self) -> str:
        return _env("SANDBOX_CPU_LIMIT", "500m")

    memory_request = Unicode(
        "64Mi",
        help="Memory reserved for the sandbox (Kubernetes requests.memory; the local sandbox ignores it).",
    ).tag(config=True)

    cpu_request = Unicode(
        "100m",
        help="CPU reserved for the sandbox (Kubernetes requests.cpu; the local sandbox ignores it).",
    ).tag(config=True)

    pids_limit = Int(
        128,
        help="Most processes and threads the sandbox may run at once, so a fork bomb is contained "
        "(local sandbox: pids cgroup; Kubernetes: the node's podPidsLimit applies).",
    ).tag(config=True)

    timeout = Float(
        help="Seconds a cell may run before it is stopped and reported as a timeout "
        "(0 = no limit). The %timeout magic changes it for the running kernel. Env: SANDBOX_TIMEOUT.",
    ).tag(config=True)

    @default("timeout")
    def _timeout_default(self) -> float:
        raw = _env("SANDBOX_TIMEOUT", "30")
        try:
            return float(raw)
        except ValueError:
            raise ConfigError("SANDBOX_TIMEOUT", f"{raw!r} is not a number of seconds") from None

    output_limit = Unicode(
        "4Mi",
        help="Most output one cell may send to the notebook (stdout, stderr and display data together; output between cells is kept up to the same amount); the rest is dropped with a notice. A byte quantity, e.g. 4Mi.",
    ).tag(config=True)

    output_rate = Int(
        1000,
        help="Most display messages a sandbox may send per second (0 = no limit); the rest are dropped with a notice.",
    ).tag(config=True)

    scratch_size = Unicode(
        "64Mi",
        help="Size of the sandbox's writable scratch directory (its HOME and working directory): "
        "a tmpfs locally, an emptyDir sizeLimit on Kubernetes.",
    ).tag(config=True)

    interrupt_grace = Float(
        2.0,
        help="Seconds to wait for a cell to stop after an interrupt before the sandbox is replaced.",
    ).tag(config=True)

    active_content = Enum(
        ["block", "allow"],
        default_value="block",
        help="What happens to output that could run code in the browser (scripts, event handlers, "
        "application/javascript): 'block' (the default) sanitizes HTML, SVG and Markdown and drops "
        "script and unknown MIME types with a notice; 'allow' publishes the sandbox's output as it "
        "is, which gives its code the notebook user's session: only for code you trust.",
    ).tag(config=True)

    allow_hosts = List(
        Unicode(),
        help="Hosts a sandbox may reach, through the egress proxy: names ('pypi.org'), wildcards "
        "('*.pythonhosted.org': names below it) and optional ports ('example.org:8443'; default 443 "
        "and 80). Empty (the default): no network at all. %sandbox allow/deny/network narrow and "
        "show it for a running sandbox (both backends; on Kubernetes in direct mode, through the shared proxy of k8s/egress/).",
    ).tag(config=True)

    ipython = Enum(
        ["auto", "on", "off"],
        default_value="auto",
        help="Whether Python cells run through IPython's interactive shell in the sandbox (magics such as "
        "%timeit and %%writefile, !cmd, obj?, _ and Out, IPython.display, IPython's tracebacks): 'auto' (the "
        "default) when the sandbox's Python can import IPython, 'on' to require it (every cell fails with the "
        "reason when it cannot), 'off' for the plain standard-library agent, which still shows plots inline. "
        "%timeout and %sandbox stay the kernel's either way.",
    ).tag(config=True)

    workspace = Enum(
        list(WORKSPACE_MODES),
        help="What the sandbox sees of the notebook's directory (the kernel's working directory), which is "
        "the sandbox's working directory: 'read-only' (the default: open('data.csv') works, nothing is "
        "written), 'read-write' (files a cell writes appear next to the notebook: the sandbox works in a "
        "copy and the kernel writes changed files back after each cell, never notebooks, hidden files, "
        "symlinks or anything outside the directory), or 'hidden' (an empty private directory). Local "
        "sandbox: at /workspace; Kubernetes: copied into the pod's working directory at start (read-write: "
        "files the cells create or change there are written back after each cell). "
        "Env: SANDBOX_WORKSPACE.",
    ).tag(config=True)

    @default("workspace")
    def _workspace_default(self) -> str:
        raw = _env("SANDBOX_WORKSPACE", "read-only")
        if raw not in WORKSPACE_MODES:
            raise ConfigError("SANDBOX_WORKSPACE", f"{raw!r} is not one of {', '.join(WORKSPACE_MODES)}")
        return raw

    workspace_limit = Unicode(
        help="Most bytes of the notebook's directory copied into a sandbox (Kubernetes, and the local "
        "sandbox's read-write copy), moved by one %sandbox upload/download, or written back after one cell; "
        "files past it are left out with a notice. Env: SANDBOX_WORKSPACE_LIMIT.",
    ).tag(config=True)

    @default("workspace_limit")
    def _workspace_limit_default(self) -> str:
        return _env("SANDBOX_WORKSPACE_LIMIT", "256Mi")

    workspace_files = Int(
        10000,
        help="Most files of the notebook's directory copied into a sandbox, or written back after one cell.",
    ).tag(config=True)

    def limits(self) -> Limits:
        """Validate every setting; raise :class:`ConfigError` naming the first bad one."""
        memory_bytes = setting_bytes("Sandbox.memory_limit", self.memory_limit)
        if memory_bytes < 16 * 2**20:
            raise ConfigError("Sandbox.memory_limit", f"{self.memory_limit!r} is too small; use at least 16Mi")
        cpu_cores = setting_cpu("Sandbox.cpu_limit", self.cpu_limit)
        if cpu_cores <= 0:
            raise ConfigError("Sandbox.cpu_limit", "must be more than 0")
        request_bytes = setting_bytes("Sandbox.memory_request", self.memory_request)
        if request_bytes > memory_bytes:
            raise ConfigError(
                "Sandbox.memory_request", f"{self.memory_request} is above memory_limit {self.memory_limit}"
            )
        if setting_cpu("Sandbox.cpu_request", self.cpu_request) > cpu_cores:
            raise ConfigError("Sandbox.cpu_request", f"{self.cpu_request} is above cpu_limit {self.cpu_limit}")
        if self.pids_limit < 8:
            raise ConfigError("Sandbox.pids_limit", f"{self.pids_limit} is too small; use at least 8")
        if self.timeout < 0:
            raise ConfigError("Sandbox.timeout", f"{self.timeout:g} is negative; use seconds, or 0 for no limit")
        if self.interrupt_grace <= 0:
            raise ConfigError("Sandbox.interrupt_grace", "must be more than 0 seconds")
        for host in self.allow_hosts:
            try:
                parse_entry(host)
            except PolicyError as exc:
                raise ConfigError("Sandbox.allow_hosts", str(exc)) from None
        return Limits(
            memory=self.memory_limit,
            memory_bytes=memory_bytes,
            cpu=self.cpu_limit,
            cpu_cores=cpu_cores,
            memory_request=self.memory_request,
            cpu_request=self.cpu_request,
            pids=self.pids_limit,
            timeout=self.timeout,
            output_bytes=setting_bytes("Sandbox.output_limit", self.output_limit),
            scratch=self.scratch_size,
            scratch_bytes=setting_bytes("Sandbox.scratch_size", self.scratch_size),
            interrupt_grace=self.interrupt_grace,
            output_rate=max(0, self.output_rate),
            allow_hosts=tuple(self.allow_hosts),
            ipython=self.ipython,
            workspace=self.workspace,
            workspace_bytes=setting_bytes("Sandbox.workspace_limit", self.workspace_limit),
            workspace_files=max(1, self.workspace_files),
        )


def setting_bytes(setting: str, value: str) -> int:
    """Parse a byte quantity; a malformed one is a ConfigError naming ``setting``."""
    try:
        return parse_bytes(value)
    except QuantityError as exc:
        raise ConfigError(setting, str(exc)) from None


def setting_cpu(setting: str, value: str) -> float:
    """Parse a CPU quantity; a malformed one is a ConfigError naming ``setting``."""
    try:
        return parse_cpu(value)
    except QuantityError as exc:
        raise ConfigError(setting, str(exc)) from None


def check_timeout(text: str) -> float:
    """Parse the argument of ``%timeout``; raise ConfigError for nonsense."""
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError("%timeout", f"{text!r} is not a number of seconds") from None
    if seconds < 0:
        raise ConfigError("%timeout", "seconds must be 0 (no limit) or more")
    return seconds
