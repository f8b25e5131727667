"""One line of advice when a cell failed because its sandbox has no network, by design.

Without it, ``urllib.request.urlopen(...)`` in a sandbox ends in a 40-line traceback about
DNS, and ``pip install`` in a Bash cell in retries about name resolution: nothing says that
the sandbox was never meant to reach the network. The kernel recognizes such a failure from
the cell's error (its name, value and last traceback lines) and the end of its stderr, and
adds this module's one line to the error, only when the sandbox has no allowed egress.

What the sandbox printed is only matched against fixed patterns here (bounded in size), never
repeated in the hint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from . import errors

# What resolvers and connects say when there is no network: glibc's getaddrinfo (Python's
# socket.gaierror, pip/requests' NameResolutionError), curl, wget, Node's error codes, and
# connects refused or unroutable (a deny-all NetworkPolicy rejects or drops them).
_NO_NETWORK = re.compile(
    r"temporary failure in name resolution|name or service not known|no address associated with hostname"
    r"|could not resolve host|unable to resolve host address|failed to resolve|nameresolutionerror"
    r"|network is unreachable|no route to host|connection refused"
    r"|\b(?:gaierror|ENOTFOUND|EAI_AGAIN|ENETUNREACH|EHOSTUNREACH|ECONNREFUSED)\b",
    re.IGNORECASE,
)
_NAMES = {"gaierror", "ConnectionRefusedError", "NameResolutionError"}


def _own_errors(cls: type[errors.SandboxError]) -> set[str]:
    return {cls.ename}.union(*(_own_errors(sub) for sub in cls.__subclasses__()))


_OWN_ERRORS = _own_errors(errors.SandboxError) | {"SandboxKernelError"}
_MAX_TEXT = 4096  # characters of each text looked at
_MAX_LINES = 20  # traceback lines looked at, from the end


def network_hint(ename: str, evalue: str, traceback: Iterable[str], stderr_tail: str, backend: str) -> str | None:
    """The hint for a failed cell whose sandbox has no network, or None if the error does not
    look like a refused network access."""
    if ename in _OWN_ERRORS:  # the kernel's own (e.g. ClusterUnreachable), not the cell's
        return None
    lines = list(traceback)[-_MAX_LINES:]
    texts = [evalue[:_MAX_TEXT], stderr_tail[-_MAX_TEXT:], *(line[:_MAX_TEXT] for line in lines)]
    if ename not in _NAMES and not any(_NO_NETWORK.search(text) for text in texts):
        return None
    if backend == "kubernetes":
        why = "its namespace's NetworkPolicy denies all egress, DNS included"
    else:
        why = "it has only its own loopback; c.Sandbox.allow_hosts lets an operator allow hosts through a proxy"
    return (
        "[sandbox] This sandbox has no network access by design: names do not resolve and connections "
        f"to other hosts fail ({why})."
    )
