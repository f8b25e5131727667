"""Which host files a local sandbox sees besides the system: the user's environment, read-only.

By default Sandbox (Python) runs the Python environment the kernel itself was installed into
(``LocalSandbox.python_environment = 'kernel'``), so a package ``pip install``-ed next to
JupyterLab imports in the sandbox, as with ipykernel. Its prefix (a venv's, a conda env's, a
pyenv version's) is shown read-only at the same path, with a venv's base interpreter's prefix
too; system prefixes (``/usr``) are mounted anyway. Only those directories come along: never a
home directory as a whole, never anything writable.

Those directories may be unreadable for the sandbox's own host uid: a kernel that runs as root
with pyenv or a venv under ``/root`` (mode 0700). bubblewrap resolves every bind source as the
sandbox's uid (also for ``--ro-bind-fd``: it canonicalises ``/proc/self/fd/N``), so a root
kernel *stages* them instead (:class:`MountPlan`): in a mount namespace of its own, made by
``unshare --mount`` before the uid drop, it puts a small tmpfs on :data:`VIEW_ROOT` and binds
each directory read-only onto a numbered entry there; the sandbox's uid can reach that entry,
and bubblewrap (or runsc) binds it at the original path. The staging mounts exist only in that
private namespace: nothing is mounted on the host, nothing is left behind, and nothing but the
named directories is reachable (``/root`` itself stays closed).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .settings import SANDBOX_PATH

SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
VIEW_ROOT = Path("/run/sandbox-kernel/view")


@dataclass(frozen=True)
class PythonEnvironment:
    """The Python a sandbox runs, and the host directories it needs."""

    kind: str
    """``kernel``, ``system`` or ``path``: which setting chose it."""
    prefix: str
    python: str
    """The interpreter to run, at its host path (also its path inside)."""
    mounts: tuple[str, ...]
    """Directories shown read-only at the same path (system directories left out)."""
    bin_dir: str | None
    """Put first on the sandbox's PATH (None: the system's, already on it)."""

    def describe(self) -> str:
        extra = [m for m in self.mounts if m != self.prefix]
        base = f" (base {', '.join(extra)})" if extra else ""
        return f"{self.python}, environment {self.prefix}{base} [{self.kind}], read-only"


def _is_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS)


def _prefix_of(executable: str) -> str:
    """``/x/bin/python3`` -> ``/x`` (the real file's, symlinks resolved)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(executable)))


def _venv_base(prefix: str) -> str | None:
    """The base interpreter's prefix of a venv (``home`` in its pyvenv.cfg), or None."""
    try:
        text = Path(prefix, "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and value.strip():
            return os.path.dirname(os.path.realpath(value.strip()))
    return None


def _kernel_home() -> str | None:
    home = os.path.expanduser("~")
    return os.path.realpath(home) if home and home != "~" else None


def _mounts(setting: str, paths: list[str]) -> tuple[str, ...]:
    """The distinct non-system directories of ``paths`` (nested ones dropped), checked."""
    home = _kernel_home()
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p}):
        if _is_system(path) or any(path.startswith(k + "/") for k in kept):
            continue
        if path == "/" or (home and (home == path or home.startswith(path + "/"))):
            raise ConfigError(
                setting,
                f"the environment {path} would show the whole of {path if path != '/' else 'the host'} "
                "(the kernel's home directory) in the sandbox; use an environment in a directory of "
                "its own (python3 -m venv DIR), or 'system'",
            )
        kept.append(path)
    return tuple(kept)


def python_environment(setting_value: str, setting: str = "LocalSandbox.python_environment") -> PythonEnvironment:
    """The environment ``LocalSandbox.python_environment`` names; ConfigError when unusable."""
    value = setting_value.strip() or "kernel"
    if value == "system":
        found = next(
            (str(Path(d, "python3")) for d in SANDBOX_PATH.split(":") if Path(d, "python3").exists()),
            "/usr/bin/python3",
        )
        return PythonEnvironment("system", "/usr", found, (), None)
    if value == "kernel":
        executable = sys.executable or "/usr/bin/python3"
        prefix = os.path.realpath(sys.prefix)
        # The directories resolved, the file not: a venv's bin/python is a link to its base.
        python = os.path.join(os.path.realpath(os.path.dirname(executable)), os.path.basename(executable))
        if not python.startswith(prefix + "/"):
            python = os.path.join(prefix, "bin", "python3")
        paths = [prefix, os.path.realpath(sys.base_prefix), _prefix_of(executable)]
        kind = "kernel"
    else:
        if not os.path.isabs(value):
            raise ConfigError(setting, f"{value!r} is neither 'kernel', 'system' nor an absolute path")
        prefix = os.path.realpath(value)
        python = os.path.join(prefix, "bin", "python3")
        if not os.path.exists(python):
            raise ConfigError(setting, f"{prefix} is not a Python environment: it has no bin/python3")
        paths = [prefix, _prefix_of(python)]
        kind = "path"
    base = _venv_base(prefix)
    if base:
        paths.append(base)
    mounts = _mounts(setting, paths)
    bin_dir = os.path.dirname(python)
    return PythonEnvironment(kind, prefix, python, mounts, None if _is_system(bin_dir) else bin_dir)


def interpreter_mounts(interpreter: str, setting: str = "LocalSandbox.interpreters") -> tuple[str, ...]:
    """What an interpreter given in ``LocalSandbox.interpreters`` needs besides the system:
    its own prefix (``/opt/node/bin/node`` -> ``/opt/node``) and a venv's base."""
    if _is_system(interpreter):
        return ()
    prefix = _prefix_of(interpreter)
    paths = [prefix, os.path.dirname(os.path.dirname(os.path.abspath(interpreter)))]
    base = _venv_base(os.path.dirname(os.path.dirname(os.path.abspath(interpreter))))
    if base:
        paths.append(base)
    return _mounts(setting, paths)


def node_modules(paths: list[str], setting: str = "LocalSandbox.node_modules") -> tuple[str, ...]:
    """The configured node_modules directories, checked (they must exist)."""
    for path in paths:
        if not os.path.isabs(path):
            raise ConfigError(setting, f"{path!r} is not an absolute path")
        if not os.path.isdir(path):
            raise ConfigError(setting, f"{path} is not a directory")
    return _mounts(setting, list(paths))


def check_not_hidden(setting: str, path: str, reserved: dict[str, str]) -> None:
    """Refuse a read-only path that a mount of the sandbox's own would hide or be hidden by.

    ``reserved`` maps the sandbox's own mount points (``/proc``, HOME, the workspace, …) to what
    they are. A path inside one of them, or one that contains one of them, is an error: bound
    before, it would be covered; bound after, it would cover the sandbox's own. ``/tmp`` is
    the exception that is allowed *below* it: such paths are bound after the sandbox's /tmp.
    """
    if not os.path.isabs(path):
        raise ConfigError(setting, f"{path!r} is not an absolute path")
    norm = os.path.normpath(path)
    for point, what in reserved.items():
        inside = norm == point or norm.startswith(point.rstrip("/") + "/")
        contains = point.startswith(norm.rstrip("/") + "/") or norm == "/"
        if point == "/tmp" and inside and norm != "/tmp":
            continue
        if inside or contains:
            raise ConfigError(
                setting,
                f"{path} cannot be shown in the sandbox: it {'is inside' if inside else 'contains'} "
                f"{point} ({what}), which the sandbox mounts itself; use a path elsewhere",
            )


@dataclass(frozen=True)
class Mount:
    """One host path shown read-only in the sandbox at ``path``, bound from ``source``."""

    path: str
    source: str
    is_dir: bool
    host: str = ""
    """The host path, when it is not ``path`` (the notebook's directory, shown at /workspace)."""


class MountPlan:
    """How the read-only host paths reach the sandbox (see the module's docstring); ``at`` adds
    host paths shown elsewhere, as ``{inside: host}`` (the read-only workspace)."""

    def __init__(self, paths: list[str], staged: bool, at: dict[str, str] | None = None) -> None:
        self.staged = staged
        seen: set[str] = set()
        self.mounts: list[Mount] = []
        for path, host in [*((p, p) for p in paths), *(at or {}).items()]:
            if path in seen:
                continue
            seen.add(path)
            source = f"{VIEW_ROOT}/{len(self.mounts)}" if staged else host
            self.mounts.append(
                Mount(path, source, os.path.isdir(host) or not os.path.exists(host), host if host != path else "")
            )

    def check_sources(self) -> None:
        """Raise a :class:`~sandbox_kernel.errors.SandboxStartError`-worthy OSError early when a
        path is missing (bubblewrap's own message names /run paths when staged)."""
        for mount in self.mounts:
            if not os.path.exists(mount.host or mount.path):
                raise FileNotFoundError(f"{mount.host or mount.path} does not exist")

    def script(self) -> str:
        """Shell commands (run as root in a private mount namespace) that make the staged views;
        every failure exits 125, which the backend reports as a start error."""
        if not self.staged or not self.mounts:
            return ""
        root = shlex.quote(str(VIEW_ROOT))
        lines = [f"mount -t tmpfs -o mode=0711,size=64k,nosuid,nodev,noexec sandbox-view {root} || exit 125"]
        for mount in self.mounts:
            target = shlex.quote(mount.source)
            lines.append((f"mkdir {target}" if mount.is_dir else f": > {target}") + " || exit 125")
            lines.append(f"mount --bind -- {shlex.quote(mount.host or mount.path)} {target} || exit 125")
            lines.append(f"mount -o remount,bind,ro,nosuid,nodev -- {target} || exit 125")
        return "; ".join(lines) + "; "

    def wrapper(self) -> list[str]:
        """The command prefix that gives the rest a mount namespace of its own (root only)."""
        if not self.staged or not self.mounts:
            return []
        VIEW_ROOT.mkdir(parents=True, exist_ok=True, mode=0o711)
        return ["unshare", "--mount", "--propagation", "private", "--"]

    def bwrap_options(self) -> list[str]:
        argv: list[str] = []
        for mount in self.mounts:
            argv += ["--ro-bind", mount.source, mount.path]
        return argv


def import_hint(env: PythonEnvironment, python: str, evalue: str) -> str:
    """The line added to a ModuleNotFoundError: which Python the sandbox runs, and how to add
    a package (on the host: the environment is read-only in the sandbox, which has no network)."""
    module = evalue.split("'")[1].split(".")[0] if evalue.count("'") >= 2 else "PACKAGE"
    where = (
        f"environment {env.prefix} ({env.kind})"
        if python == env.python
        else "its own interpreter (LocalSandbox.interpreters)"
    )
    return (
        f"[sandbox] This sandbox runs {python}, {where}, read-only. To add a package, install it "
        f"into that environment on the host, e.g. {python} -m pip install {module}, then run the "
        "cell again; or choose another environment with "
        "c.LocalSandbox.python_environment."
    )
