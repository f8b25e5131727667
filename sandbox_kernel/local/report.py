"""``%sandbox status | quota | policy | events | manifests`` for a local sandbox, as plain text."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from typing import Any, Protocol

from ..config import Limits
from ..egress.host import EgressController
from ..languages import Language
from ..quantity import format_bytes
from . import cgroups, gvisor, seccomp_policy, uids
from .settings import LocalSandbox


class LocalSandboxSession(Protocol):
    """What the report reads of a local session (backend.py's; a protocol, so no import cycle)."""

    limits: Limits
    language: Language
    settings: LocalSandbox
    timeout: float
    egress: EgressController | None
    _isolated: bool
    _gvisor: bool
    _cgroup: cgroups.SandboxCgroup | None
    _seccomp: bool | None
    _proc: asyncio.subprocess.Process | None
    _lease: uids.UidLease | None
    _events: list[tuple[float, str]]
    _argv: list[str]

    @property
    def language_info(self) -> dict[str, Any]: ...
    def _host_uid(self) -> int | None: ...
    def environment_description(self) -> str: ...
    def workspace_description(self) -> str: ...
    def command(self, cgroup: cgroups.SandboxCgroup | None) -> list[str]: ...


def runtime_description(session: LocalSandboxSession) -> str:
    if not session._isolated:
        return "none (NOT isolated)"
    if session._gvisor:
        text, _ = gvisor.version(gvisor.runsc_path(session.settings.runsc))
        return f"gVisor ({text}, platform {session.settings.gvisor_platform}, network none)"
    return "bubblewrap (Linux namespaces, host kernel)"


def report(session: LocalSandboxSession, topic: str) -> str:
    limits = session.limits
    cg = session._cgroup
    if topic == "status":
        usage = cg.usage() if cg else {}
        uid = session._host_uid()
        seccomp = {True: f"filter on ({len(seccomp_policy.syscalls())} system calls)", False: "OFF", None: "-"}[
            session._seccomp
        ]
        rows = [
            (
                "backend",
                ("local (gVisor)" if session._gvisor else "local (bubblewrap)")
                if session._isolated
                else "local, NOT isolated",
            ),
            ("runtime", runtime_description(session)),
            ("language", f"{session.language.name} {session.language_info.get('version', '')}".strip()),
            ("environment", session.environment_description()),
            ("workspace", session.workspace_description()),
            ("process", str(session._proc.pid) if session._proc else "not running"),
            ("user", f"uid 1000 in the sandbox (host uid {uid})" if uid is not None else "uid 1000 in the sandbox"),
            (
                "seccomp",
                (seccomp + (" inside gVisor" if session._gvisor and session._seccomp else ""))
                if session._isolated
                else "OFF",
            ),
            ("memory", f"{format_bytes(usage['memory']) if 'memory' in usage else '?'} used of {limits.memory}"),
            ("processes", f"{usage.get('pids', '?')} of {limits.pids}"),
            ("cpu", limits.cpu),
            ("cell timeout", f"{session.timeout:g} s"),
            ("cgroup", ", ".join(str(p) for p in cg.paths) if cg else "none (limits not enforced)"),
        ]
        return table(rows)
    if topic == "quota":
        usage = cg.usage() if cg else {}
        rows = [
            ("RESOURCE", "USED / LIMIT"),
            ("memory", f"{format_bytes(usage.get('memory', 0))} / {limits.memory}"),
            ("cpu", f"- / {limits.cpu}"),
            ("processes", f"{usage.get('pids', 0)} / {limits.pids}"),
            ("scratch", f"- / {limits.scratch}"),
            ("output per cell", f"- / {format_bytes(limits.output_bytes)}"),
        ]
        return table(rows)
    if topic == "policy":
        return _policy(session)
    if topic == "events":
        return (
            "\n".join(time.strftime("%H:%M:%S", time.localtime(t)) + "  " + text for t, text in session._events)
            or "no events"
        )
    if topic == "manifests":
        return shlex.join(session._argv) if session._argv else shlex.join(session.command(None))
    raise ValueError(topic)


def _policy(session: LocalSandboxSession) -> str:
    limits = session.limits
    settings = session.settings
    if os.geteuid() != 0:
        uid = "the kernel's own host uid"
    elif settings.run_as_uid is not None:
        uid = f"host uid {settings.run_as_uid} (LocalSandbox.run_as_uid)"
    else:
        uid = f"a host uid of its own from {settings.uid_range}" + (
            f", now {session._lease.uid}" if session._lease else ""
        )
    text = (
        f"runtime: {runtime_description(session)}\n"
        "network: own network namespace with loopback only (no route to the host or the internet)\n"
        "processes: own PID namespace; host processes are invisible\n"
        "files: / and the system directories read-only; HOME and /tmp are a private tmpfs "
        f"of {limits.scratch}, deleted with the sandbox; the environment "
        f"({session.environment_description()}) and read_only_paths read-only; "
        f"workspace: {session.workspace_description()}\n"
        f"user: uid 1000 ('sandbox'; {uid}), no capabilities, no new privileges, "
        "no new user namespaces\n"
        "environment variables: PATH, HOME, USER, LANG, TMPDIR (and NODE_PATH) only"
    )
    if session.egress is not None:  # egress hook
        text += "\n" + session.egress.policy_line()
    if not session._isolated:
        return text + "\nseccomp: none (the sandbox is NOT isolated)"
    if session._seccomp is False:
        return text + "\nseccomp: OFF (libseccomp's Python bindings are missing: install python3-seccomp)"
    if session._gvisor:
        text += "\n" + gvisor.POLICY
    return text + "\n" + seccomp_policy.summary()


def table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
