"""The local sandbox: the agent runs under bubblewrap, in Linux namespaces and cgroups.

What a cell sees:

- its own PID namespace (host processes are invisible; when the kernel dies, bubblewrap's
  ``--die-with-parent`` ends the namespace and every process in it),
- its own network namespace with only a loopback interface (not even the host's 127.0.0.1),
- a read-only view of the system directories (``/usr``, ``/etc``, …) and nothing of the host's
  home directories; a private tmpfs of ``scratch_size`` as ``HOME`` and ``/tmp`` (it vanishes
  with the sandbox, so nothing is left on the host); the notebook's directory as working
  directory at ``/workspace`` (``Sandbox.workspace``: read-only, a read-write copy, or hidden;
  workspace.py),
- a non-root uid: when the kernel runs as root, each sandbox gets a host uid of its own from
  ``uid_range`` (:mod:`.uids`), mapped to uid 1000 (``sandbox`` in the sandbox's own
  ``/etc/passwd`` and ``/etc/group``), so even an escape lands as an unprivileged user that
  shares no per-uid state (key quotas, inotify instances, signals) with other sandboxes,
- a read-only ``/`` (writes outside HOME and /tmp fail with "Read-only file system"),
- a seccomp filter (:mod:`.seccomp_policy`: no namespaces, keyrings, io_uring, userfaultfd, bpf,
  mounts, ptrace, TIOCSTI, …) and no further user namespaces (bubblewrap's ``--disable-userns``),
- a scrubbed environment (``PATH``, ``HOME``, ``LANG``: no host tokens); no host path, pid or
  cgroup name in the sandbox's ``/proc`` (bubblewrap's options come through ``--args FD``, the
  agent is a copy, not a bind mount of the installation),
- memory, CPU and process limits enforced by a cgroup of its own.

With ``LocalSandbox.runtime = 'gvisor'`` the agent runs under gVisor's ``runsc`` instead, with
the same view (:mod:`.gvisor`): cells' system calls then reach gVisor's own kernel, not the host's.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import shlex
import signal
import time
from typing import Any, AsyncGenerator

from ..agent_session import AgentSession
from ..config import Limits
from ..egress import host as egress
from ..errors import OutOfMemory, SandboxError, SandboxLost, SandboxStartError, ShellOutOfMemory
from ..languages import Language
from ..session import AgentChannel, ErrorOutput, Event, Stream
from ..usage import CellUsage, Usage
from ..workspace.transfer import copy_notebook_dir
from ..workspace.writeback_remote import RemoteWriteBack, remote_write_back
from . import agent_code, bwrap, cgroups, environment, gvisor, isolation, report, uids
from .bwrap import AGENT_DIR, GROUP, PASSWD, SANDBOX_HOME, WORKSPACE, WorkspaceMount
from .command import SandboxCommand
from .environment import SYSTEM_DIRS
from .settings import SANDBOX_PATH, LocalSandbox
from .usage import SandboxUsage
from .workspace import LocalWorkspace

__all__ = [
    "LocalSandbox",
    "LocalSandboxSession",
    "SANDBOX_HOME",
    "SANDBOX_PATH",
    "AGENT_DIR",
    "SYSTEM_DIRS",
    "PASSWD",
    "GROUP",
]

log = logging.getLogger("sandbox_kernel")


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
SHELL_EXITED = "the shell exited; state was reset"
"""The Bash agent's error when its shell died during a cell (bash_agent.sh, ``__sk_finish``): at the
memory limit under gVisor, where the shell exits instead of being OOM-killed (:class:`ShellOutOfMemory`)."""


class LocalSandboxSession(SandboxCommand, AgentSession):
    """A session whose sandbox is a bubblewrap process tree on this machine.

    Its command line and view are :class:`~.command.SandboxCommand`'s; this class starts the
    sandbox, reads why one ended, and adds the local hints to a cell's errors."""

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
        self._lease: uids.UidLease | None = None
        self._seccomp: bool | None = None  # whether the sandbox has the filter (None: not started yet)
        self._usage = SandboxUsage(limits)  # usage.py
        self._started_at = time.monotonic()
        self._gvisor = self.settings.runtime == "gvisor"  # gVisor hook (local/gvisor.py)
        self._bundle: gvisor.GVisorBundle | None = None
        self._isolated, self._limited = isolation.check_host(self.settings, limits, self._gvisor)
        # Egress hook (sandbox_kernel/egress): None unless Sandbox.allow_hosts is set.
        self.egress = egress.controller_for(limits.allow_hosts, self.settings) if self._isolated else None
        # The user's environment (environment.py): checked now, so a bad setting fails the start.
        self._python = environment.python_environment(self.settings.python_environment)
        self._node_modules = environment.node_modules(list(self.settings.node_modules))
        self._read_only = self._read_only_paths()
        # The notebook's directory (Sandbox.workspace, workspace.py), and its read-write copy.
        self.workspace = LocalWorkspace(
            limits, self._gvisor and self._isolated, other_uid=self._isolated and os.geteuid() == 0
        )
        self._workspace_mount: WorkspaceMount | None = None
        self._write_back: RemoteWriteBack | None = None  # read-write under gVisor: through the agent

    # -- AgentSession hooks ----------------------------------------------------------------------

    async def _spawn(self) -> AgentChannel:
        loop = asyncio.get_running_loop()
        fds: dict[str, int] = {}
        cgroup = None
        try:
            if self._isolated and self._gvisor:
                self._seccomp = True  # the same table, applied inside gVisor (runsc --oci-seccomp)
            elif self._isolated:
                blob = await loop.run_in_executor(None, isolation.seccomp_filter, self.settings)
                await loop.run_in_executor(None, bwrap.disables_userns, self._bwrap_path())
                self._seccomp = blob is not None
                if blob is not None:
                    fds["seccomp"] = bwrap.memfd("seccomp", blob)
                fds["passwd"] = bwrap.memfd("passwd", PASSWD.encode())
                fds["group"] = bwrap.memfd("group", GROUP.encode())
                agent = self.language.agent_path()  # the Python agent as bytecode when it can (agent_code.py)
                fds["agent"] = bwrap.memfd(
                    "agent", agent_code.for_sandbox(agent, self._interpreter(), f"{AGENT_DIR}/{agent.name}")
                )
            if self._isolated:
                if os.geteuid() == 0 and self.settings.run_as_uid is None:
                    first, last = uids.parse_range(self.settings.uid_range)
                    try:
                        self._lease = await loop.run_in_executor(None, uids.allocate, first, last)
                    except OSError as exc:
                        raise SandboxStartError(f"No host uid is free for the sandbox: {exc}") from exc
                self._workspace_mount = await loop.run_in_executor(None, self.workspace.prepare, self._host_uid())
                if self.egress is not None:  # egress hook: this sandbox's proxy
                    fds["relay"] = bwrap.memfd("relay", self.egress.relay_source())
                    await self.egress.start(self._host_uid())
            env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
            name = f"k{os.getpid()}-{next(_sandbox_numbers)}"
            gvisor.sweep_stale()  # runsc state of SIGKILLed kernels (either runtime's kernels sweep)
            if self._limited:
                cgroups.sweep_stale()
                cgroup = cgroups.SandboxCgroup(name)
                try:
                    cgroup.create(self.limits, **(gvisor.OVERHEAD if self._gvisor else {}))
                except OSError as exc:
                    raise SandboxStartError(f"Could not set up the sandbox's cgroup: {exc}") from exc
                self._oom_baseline = cgroup.oom_kills()
            if self._isolated and self._gvisor:
                self._bundle = gvisor.GVisorBundle(name)
                await loop.run_in_executor(None, self._create_bundle)
            names = {name: str(fd) for name, fd in fds.items()}
            self._argv = self.command(cgroup, names)
            if self._gvisor and self._isolated:
                argv = self._argv
            elif self._isolated:
                plan = self._mount_plan()
                options = self._bwrap_options(names, bool(self._seccomp), plan)
                fds["args"] = bwrap.memfd("args", b"".join(o.encode() + b"\0" for o in options))
                argv = self._wrap([self._bwrap_path(), "--args", str(fds["args"]), "--", *self._inner()], cgroup, plan)
            else:
                argv = self._argv
            log.debug("starting sandbox: %s", shlex.join(self._argv))
            # gVisor hook: the protocol on sockets, which gVisor's /proc cannot reopen (gvisor.py)
            sockets = gvisor.StdioSockets() if self._gvisor and self._isolated else None
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=sockets.stdin.fileno() if sockets else asyncio.subprocess.PIPE,
                    stdout=sockets.stdout.fileno() if sockets else asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env if self._isolated else {**env, "HOME": os.environ.get("HOME", "/tmp")},
                    cwd="/",
                    start_new_session=True,
                    limit=1 << 20,
                    pass_fds=tuple(fds.values()),
                )
            except OSError as exc:
                if sockets:
                    sockets.close()
                raise SandboxStartError(f"Could not start the sandbox ({argv[0]}): {exc}") from exc
        except BaseException:
            if cgroup is not None:
                cgroup.destroy()
            if self.egress is not None:  # egress hook
                self.egress.stop()
            self._destroy_bundle()
            self._release_uid()
            raise
        finally:
            for fd in fds.values():
                os.close(fd)
        self._cgroup = cgroup
        self._started_at = time.monotonic()  # usage: CPU percent since the start
        self._stderr_tail.clear()
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc))
        self._event("sandbox started" + (f" as host uid {self._host_uid()}" if self._host_uid() is not None else ""))
        if sockets:
            return await sockets.channel()
        return PipeChannel(self._proc)

    async def _after_ready(self) -> None:
        """Read-write under gVisor: the notebook's directory copied in through the agent protocol,
        as into a Kubernetes pod, and its baseline listing for the write-back (workspace/)."""
        if not self.workspace.through_agent:
            return
        event, notice = await copy_notebook_dir(self, self.limits, WORKSPACE)
        if event:
            self._event(event)
        self._write_back, unlisted = await remote_write_back(self, self.limits)
        self.workspace.add_notice(notice, unlisted)

    def _create_bundle(self) -> None:
        assert self._bundle is not None
        agent = self.language.agent_path()
        self._bundle.create(
            agent_name=agent.name,
            agent=agent.read_bytes(),
            args=self._inner(),
            env=self._sandbox_env(),
            home=SANDBOX_HOME,
            agent_dir=AGENT_DIR,
            system_dirs=SYSTEM_DIRS,
            read_only_paths=[(m.source, m.path) for m in self._mount_plan().mounts],
            passwd=PASSWD,
            group=GROUP,
            limits=self.limits,
            owner=self._host_uid(),
            cwd=self.workspace.cwd,
            own_dirs=(WORKSPACE,) if self.workspace.through_agent else (),
        )

    def _destroy_bundle(self) -> None:
        bundle, self._bundle = self._bundle, None
        if bundle is not None:
            bundle.destroy()

    def _release_uid(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Log the agent's stderr. User code can write to it too (it is the agent's, and under
        gVisor any process's fds open through /proc): lines are cut at 1000 characters, and a
        line longer than the stream's buffer is no error."""
        assert proc.stderr is not None
        partial = b""
        while True:
            chunk = await proc.stderr.read(1 << 16)
            lines = (partial + chunk).split(b"\n")
            partial = b"" if not chunk else lines.pop()[:4096]
            for line in lines:
                if line.strip():
                    text = line[:4000].decode("utf-8", "replace").rstrip()[:1000]
                    self._stderr_tail.append(text)
                    log.debug("sandbox: %s", text)
            if not chunk:
                return

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
        if self.egress is not None:  # egress hook
            await asyncio.get_running_loop().run_in_executor(None, self.egress.stop)
        if self._bundle is not None:  # gVisor hook: runsc's state and the bundle
            await asyncio.get_running_loop().run_in_executor(None, self._destroy_bundle)
        # Only now that no process of the sandbox is left may another sandbox get its uid.
        self._release_uid()
        if self._closed:
            self.workspace.close()  # the read-write copy (its changes were written back after each cell)

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
        if self._bundle is not None and not detail:
            detail = self._bundle.log_tail()
        self._event(f"sandbox stopped (exit status {code})")
        if code == 125 or (detail and ("bwrap" in detail or "runsc" in detail or "creating container" in detail)):
            return SandboxStartError(f"The sandbox could not start: {detail or f'exit status {code}'}")
        return SandboxLost(
            f"The sandbox stopped unexpectedly (exit status {code}){': ' + detail if detail else ''}. "
            "A new one was started; variables from earlier cells are gone."
        )

    def _event(self, text: str) -> None:
        self._events.append((time.time(), text))
        del self._events[:-50]

    # -- usage (usage.py) -----------------------------------------------------------------------

    async def usage(self) -> Usage | None:
        return self._usage.now(self._cgroup, self._proc is not None, time.monotonic() - self._started_at)

    def cell_usage_start(self) -> None:
        self._usage.cell_start(self._cgroup)

    def cell_usage_end(self, wall: float) -> CellUsage:
        return self._usage.cell_end(self._cgroup, wall)

    async def execute(self, code: str, *args: Any, **kwargs: Any) -> AsyncGenerator[Event, None]:
        """A cell, with a hint added to ``ModuleNotFoundError``: which Python the sandbox runs.
        (The arguments after ``code`` are passed on as they are: see SandboxSession.execute.)"""
        notice = self.workspace.take_notice()
        if notice:
            yield Stream("stderr", f"[sandbox] {notice}\n")
        cell = super().execute(code, *args, **kwargs)
        cgroup = self._cgroup
        oom_kills = cgroup.oom_kills() if cgroup is not None else 0
        try:
            async for event in cell:
                if (
                    isinstance(event, ErrorOutput)
                    and event.evalue == SHELL_EXITED
                    and cgroup is not None
                    and cgroup is self._cgroup
                    and cgroup.oom_kills() > oom_kills
                ):
                    event = ErrorOutput.from_exception(ShellOutOfMemory(self.limits.memory))
                elif (
                    isinstance(event, ErrorOutput)
                    and event.ename == "ModuleNotFoundError"
                    and self.language.name == "python"
                ):
                    hint = environment.import_hint(self._python, self._interpreter(), event.evalue)
                    event = ErrorOutput(event.ename, event.evalue, [*event.traceback, hint])
                elif isinstance(event, ErrorOutput) and (ro_hint := self.workspace.hint(event.evalue)):
                    event = ErrorOutput(event.ename, event.evalue, [*event.traceback, ro_hint])
                yield event
        finally:
            await cell.aclose()
        # Read-write workspace: the files the cell changed, written back (workspace/staging.py;
        # under gVisor workspace/writeback_remote.py).
        if self._write_back is not None and self._channel is not None:
            lines = await self._write_back.after_cell()
        else:
            lines = await asyncio.get_running_loop().run_in_executor(None, self.workspace.write_back)
        for line in lines:
            yield Stream("stderr", f"[sandbox] {line}\n")

    # -- %sandbox -------------------------------------------------------------------------------

    def environment_description(self) -> str:
        if self.language.name == "node" and self._node_modules:
            return f"{self._interpreter()}, node_modules {', '.join(self._node_modules)}, read-only"
        if self.language.name != "python" and self._python.bin_dir is None:
            return f"{self._interpreter()}"
        return (
            self._python.describe()
            if self.language.name == "python"
            else f"{self._interpreter()}; PATH has {self._python.bin_dir}"
        )

    def workspace_description(self) -> str:
        return self.workspace.describe()

    def report(self, topic: str) -> str:
        return report.report(self, topic)
