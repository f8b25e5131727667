"""The local sandbox: the agent runs under bubblewrap, in Linux namespaces and cgroups.

What a cell sees:

- its own PID namespace (host processes are invisible; when the kernel dies, bubblewrap's
  ``--die-with-parent`` ends the namespace and every process in it),
- its own network namespace with only a loopback interface (not even the host's 127.0.0.1),
- a read-only view of the system directories (``/usr``, ``/etc``, …) and nothing of the host's
  home directories; a private tmpfs of ``scratch_size`` as working directory, ``HOME`` and
  ``/tmp`` (it vanishes with the sandbox, so nothing is left on the host),
- a non-root uid: when the kernel runs as root, bubblewrap is started as ``nobody`` and maps it
  to uid 1000 inside, so even a sandbox escape lands as an unprivileged user,
- a scrubbed environment (``PATH``, ``HOME``, ``LANG``: no host tokens),
- memory, CPU and process limits enforced by a cgroup of its own.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Int, List, Unicode
from traitlets.config import Configurable

from ..config import Limits
from ..errors import OutOfMemory, SandboxError, SandboxLost, SandboxStartError, SandboxUnavailable
from ..languages import Language
from ..quantity import format_bytes
from ..session import AgentChannel, AgentSession
from . import cgroups

log = logging.getLogger("sandbox_kernel")

SANDBOX_HOME = "/home/sandbox"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
AGENT_DIR = "/opt/sandbox-agent"
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class LocalSandbox(Configurable):
    """Settings of the local (bubblewrap) backend."""

    bwrap = Unicode("bwrap", help="The bubblewrap program (Debian package 'bubblewrap').").tag(config=True)

    run_as_uid = Int(
        65534,
        help="Host uid the sandbox runs as when the kernel runs as root (default: nobody). "
        "Inside the sandbox it appears as uid 1000.",
    ).tag(config=True)

    interpreters = List(
        Unicode(),
        help="Override the program that runs an agent, as 'language=/path' items "
        "(e.g. 'python=/usr/bin/python3.12'). By default python3, node and bash are looked up "
        "on " + SANDBOX_PATH + ".",
    ).tag(config=True)

    read_only_paths = List(
        Unicode(),
        help="Extra host paths made visible read-only inside the sandbox, at the same place "
        "(e.g. a data set directory).",
    ).tag(config=True)

    require_limits = Bool(
        True,
        help="Refuse to start when memory, CPU and process limits cannot be enforced (no usable "
        "cgroups, e.g. when not running as root). Set False to run without limits.",
    ).tag(config=True)

    require_isolation = Bool(
        True,
        help="Refuse to start when bubblewrap or user namespaces are unavailable. Set False to run "
        "cells WITHOUT any isolation (only for trusted code).",
    ).tag(config=True)


class PipeChannel(AgentChannel):
    """The agent's stdin/stdout pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def read(self) -> bytes:
        assert self.proc.stdout is not None
        return await self.proc.stdout.read(1 << 16)

    async def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()


_sandbox_numbers = itertools.count(1)


class LocalSandboxSession(AgentSession):
    """A session whose sandbox is a bubblewrap process tree on this machine."""

    backend = "local"
    start_timeout = 30.0

    def __init__(self, language: Language, limits: Limits, settings: LocalSandbox | None = None) -> None:
        super().__init__(language, limits)
        self.settings = settings or LocalSandbox()
        self._proc: asyncio.subprocess.Process | None = None
        self._cgroup: cgroups.SandboxCgroup | None = None
        self._oom_baseline = 0
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task: asyncio.Task[None] | None = None
        self._argv: list[str] = []
        self._events: list[tuple[float, str]] = []
        self._isolated, self._limited = self._check_host()

    # -- host checks ----------------------------------------------------------------------------

    def _check_host(self) -> tuple[bool, bool]:
        """Decide what isolation this host gives; raise when the user has not opted out of it."""
        isolated = True
        why = None
        if shutil.which(self.settings.bwrap) is None:
            why = (
                f"bubblewrap ('{self.settings.bwrap}') is not installed. Install it (Debian/Ubuntu: "
                "apt-get install bubblewrap)"
            )
        elif Path("/proc/sys/user/max_user_namespaces").exists() and Path(
            "/proc/sys/user/max_user_namespaces"
        ).read_text().strip() == "0":
            why = "user namespaces are disabled (sysctl user.max_user_namespaces=0). Enable them"
        if why:
            if self.settings.require_isolation:
                raise SandboxUnavailable(
                    f"The local sandbox cannot isolate cells here: {why}, or set "
                    "c.LocalSandbox.require_isolation = False to run cells without isolation."
                )
            isolated = False
        reason = cgroups.unavailable_reason()
        if reason:
            if self.settings.require_limits:
                raise SandboxUnavailable(
                    f"The local sandbox cannot enforce memory, CPU and process limits: {reason}. "
                    "Set c.LocalSandbox.require_limits = False to run without limits."
                )
            return isolated, False
        return isolated, True

    def _interpreter(self) -> str:
        for item in self.settings.interpreters:
            name, _, path = item.partition("=")
            if name == self.language.name and path:
                return path
        found = shutil.which(self.language.interpreter, path=SANDBOX_PATH)
        if not found:
            raise SandboxUnavailable(
                f"{self.language.interpreter} was not found on {SANDBOX_PATH}; install it or set "
                f"c.LocalSandbox.interpreters = ['{self.language.name}=/path/to/{self.language.interpreter}']."
            )
        return found

    # -- command line ---------------------------------------------------------------------------

    def command(self, cgroup: cgroups.SandboxCgroup | None) -> list[str]:
        """The exact command that starts the sandbox (shown by ``%sandbox manifests``)."""
        interpreter = self._interpreter()
        agent = self.language.agent_path()
        inner = [interpreter, f"{AGENT_DIR}/{agent.name}"] if self._isolated else [interpreter, str(agent)]
        if not self._isolated:
            return inner
        argv = [shutil.which(self.settings.bwrap) or self.settings.bwrap]
        for path in SYSTEM_DIRS:
            p = Path(path)
            if p.is_symlink():
                argv += ["--symlink", os.readlink(p), path]
            elif p.is_dir():
                argv += ["--ro-bind", path, path]
        for extra in self.settings.read_only_paths:
            argv += ["--ro-bind", extra, extra]
        argv += [
            "--ro-bind", str(agent), f"{AGENT_DIR}/{agent.name}",
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(self.limits.scratch_bytes), "--tmpfs", SANDBOX_HOME,
            "--size", str(self.limits.scratch_bytes), "--tmpfs", "/tmp",
            "--chdir", SANDBOX_HOME,
            "--unshare-all",  # user, pid, net (loopback only), ipc, uts, cgroup
            "--uid", "1000", "--gid", "1000",
            "--hostname", "sandbox",
            "--die-with-parent",  # the kernel's death (even SIGKILL) ends the whole sandbox
            "--new-session",  # no controlling terminal to inject keystrokes into
            "--cap-drop", "ALL",
            "--clearenv",
            "--setenv", "PATH", SANDBOX_PATH,
            "--setenv", "HOME", SANDBOX_HOME,
            "--setenv", "USER", "sandbox",
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "TMPDIR", "/tmp",
            "--",
        ]
        argv += inner
        if os.geteuid() == 0:
            # Never run user code as root on the host: drop to an unprivileged uid, and let
            # bubblewrap's user namespace make that uid look like 1000 inside.
            uid = str(self.settings.run_as_uid)
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"] + argv
        if cgroup is not None:
            # Join the cgroup before anything else runs, so no byte is ever allocated outside it.
            join = 'for f in $SANDBOX_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; exec "$@"'
            argv = ["/bin/sh", "-c", join, "sandbox-start"] + argv
        return argv

    # -- AgentSession hooks ----------------------------------------------------------------------

    async def _spawn(self) -> AgentChannel:
        cgroup = None
        env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
        if self._limited:
            cgroups.sweep_stale()
            cgroup = cgroups.SandboxCgroup(f"k{os.getpid()}-{next(_sandbox_numbers)}")
            try:
                cgroup.create(self.limits)
            except OSError as exc:
                cgroup.destroy()
                raise SandboxStartError(f"Could not set up the sandbox's cgroup: {exc}") from exc
            env["SANDBOX_CGROUP_PROCS"] = " ".join(cgroup.procs_files())
            self._oom_baseline = cgroup.oom_kills()
        self._cgroup = cgroup
        self._argv = self.command(cgroup)
        log.debug("starting sandbox: %s", shlex.join(self._argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env if self._isolated else {**env, "HOME": os.environ.get("HOME", "/tmp")},
                cwd="/",
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            if cgroup:
                cgroup.destroy()
            raise SandboxStartError(f"Could not start the sandbox ({self._argv[0]}): {exc}") from exc
        self._stderr_tail.clear()
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc))
        self._event("sandbox started")
        return PipeChannel(self._proc)

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(text)
            log.debug("sandbox: %s", text)

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                log.warning("sandbox process %s did not exit", proc.pid)
        if self._stderr_task:
            self._stderr_task.cancel()
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            await asyncio.get_running_loop().run_in_executor(None, cgroup.destroy)

    async def _lost_reason(self) -> SandboxError:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = await asyncio.wait_for(proc.wait(), 2)
            except asyncio.TimeoutError:
                pass
        if self._cgroup is not None and self._cgroup.oom_kills() > self._oom_baseline:
            self._event(f"out of memory (limit {self.limits.memory})")
            return OutOfMemory(self.limits.memory)
        detail = "; ".join(list(self._stderr_tail)[-3:])
        self._event(f"sandbox stopped (exit status {code})")
        if code == 125 or (detail and "bwrap" in detail):
            return SandboxStartError(f"The sandbox could not start: {detail or f'exit status {code}'}")
        return SandboxLost(
            f"The sandbox stopped unexpectedly (exit status {code}){': ' + detail if detail else ''}. "
            "A new one was started; variables from earlier cells are gone."
        )

    def _event(self, text: str) -> None:
        self._events.append((time.time(), text))
        del self._events[:-50]

    # -- %sandbox -------------------------------------------------------------------------------

    def report(self, topic: str) -> str:
        limits = self.limits
        if topic == "status":
            usage = self._cgroup.usage() if self._cgroup else {}
            rows = [
                ("backend", "local (bubblewrap)" if self._isolated else "local, NOT isolated"),
                ("language", f"{self.language.name} {self.language_info.get('version', '')}".strip()),
                ("process", str(self._proc.pid) if self._proc else "not running"),
                ("user", f"uid 1000 in the sandbox (host uid {self.settings.run_as_uid})" if os.geteuid() == 0 else "uid 1000 in the sandbox"),
                ("memory", f"{format_bytes(usage['memory']) if 'memory' in usage else '?'} used of {limits.memory}"),
                ("processes", f"{usage.get('pids', '?')} of {limits.pids}"),
                ("cpu", limits.cpu),
                ("cell timeout", f"{self.timeout:g} s"),
                ("cgroup", ", ".join(str(p) for p in self._cgroup.paths) if self._cgroup else "none (limits not enforced)"),
            ]
            return _table(rows)
        if topic == "quota":
            usage = self._cgroup.usage() if self._cgroup else {}
            rows = [
                ("RESOURCE", "USED / LIMIT"),
                ("memory", f"{format_bytes(usage.get('memory', 0))} / {limits.memory}"),
                ("cpu", f"- / {limits.cpu}"),
                ("processes", f"{usage.get('pids', 0)} / {limits.pids}"),
                ("scratch", f"- / {limits.scratch}"),
                ("output per cell", f"- / {format_bytes(limits.output_bytes)}"),
            ]
            return _table(rows)
        if topic == "policy":
            return (
                "network: own network namespace with loopback only (no route to the host or the internet)\n"
                "processes: own PID namespace; host processes are invisible\n"
                "files: system directories read-only; HOME and /tmp are a private tmpfs "
                f"of {limits.scratch}, deleted with the sandbox\n"
                "user: uid 1000, no capabilities, no new privileges\n"
                "environment: PATH, HOME, USER, LANG, TMPDIR only"
            )
        if topic == "events":
            return "\n".join(time.strftime("%H:%M:%S", time.localtime(t)) + "  " + text for t, text in self._events) or "no events"
        if topic == "manifests":
            return shlex.join(self._argv) if self._argv else shlex.join(self.command(None))
        raise ValueError(topic)


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
