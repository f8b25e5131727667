"""File names that cross the sandbox boundary: checked before anything touches the host.

A name is a relative POSIX path inside the notebook's directory. Everything else is refused
with a sentence saying why: absolute paths, ``..``, empty or ``.`` components, control
characters (a newline in a name would forge lines of a listing), names that are not UTF-8,
over-long names. Some names are refused for write-back even when well formed
(:func:`protected`): the notebooks themselves, hidden files and directories (``.git`` hooks,
``.ipynb_checkpoints``, ``.envrc``, editor settings: things the host runs or trusts), and the
configuration files Jupyter and IPython load from their working directory.
"""

from __future__ import annotations

import os
import re

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 32

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONFIG = re.compile(r"^(jupyter|ipython|sandbox_kernel|jupyter_\w+|ipython_\w+)_config\.(py|json)$")


class NameError_(ValueError):
    """A name that may not cross the boundary; ``str()`` says why, naming it."""


def shown(name: str | bytes) -> str:
    """A name as it can be quoted in a message (control characters and bad bytes escaped)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return repr(name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))[:300]


def split(name: str | bytes) -> tuple[str, ...]:
    """The components of a relative name; :class:`NameError_` when it is not one."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise NameError_(f"{shown(name)} is not valid UTF-8") from None
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise NameError_(f"{shown(name)} is not valid UTF-8") from None
    if not name:
        raise NameError_("an empty file name")
    if _CONTROL.search(name):
        raise NameError_(f"{shown(name)} has a control character (a newline, a tab, …) in its name")
    if name.startswith("/"):
        raise NameError_(f"{shown(name)} is an absolute path; name a file inside the notebook's directory")
    if len(encoded) > MAX_PATH_BYTES:
        raise NameError_(f"{shown(name[:60])}… is longer than {MAX_PATH_BYTES} bytes")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts:
        raise NameError_(f"{shown(name)} names the directory itself, not a file in it")
    if ".." in parts:
        raise NameError_(f"{shown(name)} goes up with '..'; name a file inside the notebook's directory")
    if len(parts) > MAX_DEPTH:
        raise NameError_(f"{shown(name)} is nested deeper than {MAX_DEPTH} directories")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise NameError_(f"{shown(part[:60])}… is longer than {MAX_NAME_BYTES} bytes")
    return parts


def protected(parts: tuple[str, ...]) -> str | None:
    """Why the sandbox may not write ``parts`` back onto the host, or None when it may."""
    last = parts[-1]
    if last.lower().endswith(".ipynb"):
        return "it is a notebook: the sandbox never replaces or adds notebooks (save it under another name)"
    hidden = next((p for p in parts if p.startswith(".")), None)
    if hidden is not None:
        return f"{shown(hidden)} is hidden: the sandbox never writes hidden files or directories (.git, .ipynb_checkpoints, …)"
    if _CONFIG.match(last.lower()):
        return "Jupyter and IPython load files of that name from their working directory as configuration"
    return None


def join(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


SYSTEM_DIRS = (
    "/usr",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
)


def directory_refusal(path: str) -> str | None:
    """Why the directory ``path`` is never shown to, copied into or uploaded from a sandbox
    (``/``, a system directory, the kernel's home directory or one above it), or None."""
    real = os.path.realpath(path)
    home = os.path.realpath(os.path.expanduser("~"))
    if real == "/" or any(real == d or real.startswith(d + "/") for d in SYSTEM_DIRS):
        return f"the notebook's directory {real} is a system directory"
    if home not in ("", "/") and (real == home or home.startswith(real.rstrip("/") + "/")):
        return (
            f"the notebook's directory {real} is the kernel's home directory{'' if real == home else ' or above it'} "
            "(it holds ~/.ssh and other secrets)"
        )
    return None
