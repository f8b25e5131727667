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
import shutil
import signal
import time
from pathlib import Path
from typing import Any, AsyncGenerator

from ..config import Limits
from ..egress import host as egress
from ..errors import ConfigError, OutOfMemory, SandboxError, SandboxLost, SandboxStartError, SandboxUnavailable
from ..languages import Language
from ..agent_session import AgentSession
from ..session import AgentChannel, ErrorOutput, Event, Stream
from ..usage import CellUsage, Usage
from . import agent_code, bwrap, cgroups, environment, gvisor, report, seccomp_policy, uids
from .bwrap import AGENT_DIR, GROUP, PASSWD, SANDBOX_HOME, WORKSPACE, View, WorkspaceMount
from .workspace import LocalWorkspace
from .environment import SYSTEM_DIRS
from .settings import SANDBOX_PATH, LocalSandbox

__all__ = ["LocalSandbox", "LocalSandboxSession", "SANDBOX_HOME", "SANDBOX_PATH", "AGENT_DIR", "SYSTEM_DIRS", "PASSWD", "GROUP"]

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
        self._lease: uids.UidLease | None = None
        self._seccomp: bool | None = None  # whether the sandbox has the filter (None: not started yet)
        self._meter: tuple[cgroups.SandboxCgroup, cgroups.CellMeter] | None = None  # usage
        self._cell_start: tuple[cgroups.SandboxCgroup, float | None] | None = None
        self._started_at = time.monotonic()
        self._gvisor = self.settings.runtime == "gvisor"  # gVisor hook (local/gvisor.py)
        self._bundle: gvisor.GVisorBundle | None = None
        self._isolated, self._limited = self._check_host()
        # Egress hook (sandbox_kernel/egress): None unless Sandbox.allow_hosts is set.
        self.egress = egress.controller_for(limits.allow_hosts, self.settings) if self._isolated else None
        # The user's environment (environment.py): checked now, so a bad setting fails the start.
        self._python = environment.python_environment(self.settings.python_environment)
        self._node_modules = environment.node_modules(list(self.settings.node_modules))
        self._read_only = self._read_only_paths()
        # The notebook's directory (Sandbox.workspace, workspace.py), and its read-write copy.
        self.workspace = LocalWorkspace(limits, self._gvisor and self._isolated,
                                        other_uid=self._isolated and os.geteuid() == 0)
        self._workspace_mount: WorkspaceMount | None = None

    # -- host checks ----------------------------------------------------------------------------

    def _check_host(self) -> tuple[bool, bool]:
        """Decide what isolation this host gives (setting up the parent cgroups on the way); raise when
        the user has not opted out of it."""
        isolated = True
        why = None
        if self._gvisor:
            why = gvisor.unavailable_reason(self.settings.runsc)
            if why:  # asked for by name: never fall back to less isolation
                raise SandboxUnavailable(f"The local sandbox cannot use gVisor here: {why}, or set c.LocalSandbox.runtime = 'bubblewrap'.")
            if self.limits.allow_hosts:
                raise SandboxUnavailable("Sandbox.allow_hosts (egress) is not available with LocalSandbox.runtime = 'gvisor' yet: gVisor's sandbox has no network.")
        elif shutil.which(self.settings.bwrap) is None:
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
        reason = cgroups.set_up_parent_groups()
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
        if self.language.name == "python":
            return self._python.python
        found = shutil.which(self.language.interpreter, path=SANDBOX_PATH)
        if not found:
            raise SandboxUnavailable(
                f"{self.language.interpreter} was not found on {SANDBOX_PATH}; install it or set "
                f"c.LocalSandbox.interpreters = ['{self.language.name}=/path/to/{self.language.interpreter}']."
            )
        return found

    def _read_only_paths(self) -> list[str]:
        """Every host path shown read-only at its own place: the environment, the interpreter's
        prefix when LocalSandbox.interpreters names one outside the system, node_modules and
        read_only_paths; each checked against the sandbox's own mounts."""
        paths: list[tuple[str, str]] = [("LocalSandbox.python_environment", m) for m in self._python.mounts]
        for item in self.settings.interpreters:
            name, _, path = item.partition("=")
            if name == self.language.name and path:
                if not os.path.isabs(path):
                    raise ConfigError("LocalSandbox.interpreters", f"{path!r} is not an absolute path")
                paths += [("LocalSandbox.interpreters", m) for m in environment.interpreter_mounts(path)]
        if self.language.name == "node":
            paths += [("LocalSandbox.node_modules", m) for m in self._node_modules]
        paths += [("LocalSandbox.read_only_paths", p) for p in self.settings.read_only_paths]
        for setting, path in paths:
            environment.check_not_hidden(setting, path, bwrap.RESERVED)
        return list(dict.fromkeys(p for _, p in paths))

    @property
    def visible_paths(self) -> list[str]:
        """The host paths this sandbox shows read-only on purpose (for ``%sandbox selftest``)."""
        return list(self._read_only)

    def _sandbox_env(self) -> dict[str, str]:
        """The agent's whole environment."""
        path = SANDBOX_PATH if self._python.bin_dir is None else f"{self._python.bin_dir}:{SANDBOX_PATH}"
        env = {"PATH": path, "HOME": SANDBOX_HOME, "USER": "sandbox", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        if self.language.name == "node" and self._node_modules:
            env["NODE_PATH"] = ":".join(self._node_modules)
        return env

    def _mount_plan(self) -> environment.MountPlan:
        # As root, the sandbox's uid may not reach the paths (a 0700 /root): stage them.
        source = self.workspace.read_only_source
        return environment.MountPlan(self._read_only, staged=self._isolated and os.geteuid() == 0,
                                     at={WORKSPACE: source} if source else None)

    def _view(self, plan: environment.MountPlan, relay_fd: str = "<relay fd>") -> View:
        return View(
            scratch_bytes=self.limits.scratch_bytes,
            env=tuple(self._sandbox_env().items()),
            mounts=plan,
            workspace=self._workspace_mount,
            cwd=self.workspace.cwd,
            agent_name=self.language.agent_path().name,
            extra=tuple(self.egress.bwrap_mounts(relay_fd)) if self.egress is not None else (),
            extra_env=tuple(self.egress.bwrap_env()) if self.egress is not None else (),
        )

    # -- command line ---------------------------------------------------------------------------

    def _host_uid(self) -> int | None:
        """The host uid the sandbox runs as, when the kernel is root (explicit run_as_uid wins)."""
        if os.geteuid() != 0:
            return None
        if self.settings.run_as_uid is not None:
            return self.settings.run_as_uid
        return self._lease.uid if self._lease else None

    def _bwrap_path(self) -> str:
        return shutil.which(self.settings.bwrap) or self.settings.bwrap

    def _inner(self) -> list[str]:
        interpreter = self._interpreter()
        agent = self.language.agent_path()
        if not self._isolated:
            return [interpreter, str(agent)]
        argv = [interpreter, f"{AGENT_DIR}/{agent.name}"]
        if self.egress is not None:  # egress hook: the relay listens, then execs the agent
            argv = self.egress.inner(SANDBOX_PATH, argv)
        return bwrap.reaped(argv)

    def _wrap(self, argv: list[str], cgroup: cgroups.SandboxCgroup | None, plan: environment.MountPlan) -> list[str]:
        """Prefix the bubblewrap command with the uid drop, the cgroup join and, as root, the
        private mount namespace that stages the read-only paths (environment.py)."""
        uid = self._host_uid()
        if uid is not None:
            # Never run user code as root on the host: drop to an unprivileged uid, and let
            # bubblewrap's user namespace make that uid look like 1000 inside.
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"] + argv
        if cgroup is not None:
            # Join the cgroup before anything else runs, so no byte is ever allocated outside it.
            # The paths are in this script, not the environment: bubblewrap gets the environment
            # this process was given (it was the sandbox's readable PID 1 before --as-pid-1).
            procs = " ".join(shlex.quote(f) for f in cgroup.procs_files())
            script = f'for f in {procs}; do echo $$ > "$f" || exit 125; done; '
        else:
            script = ""
        script += plan.script()
        if script:
            argv = [*plan.wrapper(), "/bin/sh", "-c", script + 'exec "$@"', "sandbox-start"] + argv
        return argv

    def command(self, cgroup: cgroups.SandboxCgroup | None, fds: dict[str, str] | None = None, seccomp: bool | None = None) -> list[str]:
        """The exact command that starts the sandbox (shown by ``%sandbox manifests``).

        The kernel passes bubblewrap's options through ``--args FD`` (see :meth:`_spawn`), so that
        no host path is on any command line; this is the same command
        with them spelled out. ``fds`` are the descriptor numbers of the copied files."""
        inner = self._inner()
        if not self._isolated:
            return inner
        plan = self._mount_plan()
        if self._gvisor:
            bundle = self._bundle or gvisor.GVisorBundle("<sandbox>")
            return self._wrap(bundle.command(self.settings.runsc, self.settings.gvisor_platform, rootless=True), cgroup, plan)
        fds = fds or {name: f"<{name} fd>" for name in ("seccomp", "passwd", "group", "agent")}
        argv = [self._bwrap_path(), *self._bwrap_options(fds, self._seccomp is not False if seccomp is None else seccomp, plan), "--", *inner]
        return self._wrap(argv, cgroup, plan)

    def _bwrap_options(self, fds: dict[str, str], seccomp: bool, plan: environment.MountPlan) -> list[str]:
        view = self._view(plan, fds.get("relay", "<relay fd>"))
        return bwrap.options(view, fds, seccomp, bwrap.disables_userns(self._bwrap_path()))

    # -- AgentSession hooks ----------------------------------------------------------------------

    def _seccomp_filter(self) -> bytes | None:
        """The compiled filter; None (with a warning) only when the user opted out of isolation."""
        try:
            return seccomp_policy.compile_bpf(self.settings.seccomp_python)
        except seccomp_policy.SeccompUnavailable as exc:
            if self.settings.require_isolation:
                raise SandboxStartError(
                    f"The local sandbox cannot build its seccomp filter: {exc}. Install the package "
                    "python3-seccomp, or set c.LocalSandbox.require_isolation = False to run without it."
                ) from exc
            log.warning("running the sandbox WITHOUT a seccomp filter: %s", exc)
            return None

    async def _spawn(self) -> AgentChannel:
        loop = asyncio.get_running_loop()
        fds: dict[str, int] = {}
        cgroup = None
        try:
            if self._isolated and self._gvisor:
                self._seccomp = True  # the same table, applied inside gVisor (runsc --oci-seccomp)
            elif self._isolated:
                blob = await loop.run_in_executor(None, self._seccomp_filter)
                await loop.run_in_executor(None, bwrap.disables_userns, self._bwrap_path())
                self._seccomp = blob is not None
                if blob is not None:
                    fds["seccomp"] = bwrap.memfd("seccomp", blob)
                fds["passwd"] = bwrap.memfd("passwd", PASSWD.encode())
                fds["group"] = bwrap.memfd("group", GROUP.encode())
                agent = self.language.agent_path()  # the Python agent as bytecode when it can (agent_code.py)
                fds["agent"] = bwrap.memfd("agent", agent_code.for_sandbox(agent, self._interpreter(), f"{AGENT_DIR}/{agent.name}"))
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

    # -- usage (sandbox_kernel/usage.py) ----------------------------------------------------------

    async def usage(self) -> Usage | None:
        cgroup = self._cgroup
        if cgroup is None:
            if self._proc is None:
                return None
            return Usage(memory_limit=None, source="none", reason="no cgroup: limits are not enforced, usage is not measured")
        meter = self._meter_for(cgroup)
        figures = cgroup.usage()
        stat = cgroup.memory_stat()
        active = inactive = None
        if "active_anon" in stat:
            active = stat["active_anon"] + stat.get("active_file", 0)
            inactive = stat.get("inactive_anon", 0) + stat.get("inactive_file", 0)
        return Usage(
            memory=figures.get("memory"),
            memory_limit=self.limits.memory_bytes,
            memory_peak=meter.peak(),
            cpu_seconds=meter.cpu_seconds(),
            cpu_limit=self.limits.cpu_cores,
            pids=figures.get("pids"),
            uptime=time.monotonic() - self._started_at,
            active=active,
            inactive=inactive,
            source=f"cgroup v{cgroups.version()}",
        )

    def _meter_for(self, cgroup: cgroups.SandboxCgroup) -> cgroups.CellMeter:
        if self._meter is None or self._meter[0] is not cgroup:
            self._meter = (cgroup, cgroup.meter())
        return self._meter[1]

    def cell_usage_start(self) -> None:
        cgroup = self._cgroup
        if cgroup is None:
            self._cell_start = None
            return
        meter = self._meter_for(cgroup)
        meter.reset_peak()
        self._cell_start = (cgroup, meter.cpu_seconds())

    def cell_usage_end(self, wall: float) -> CellUsage:
        start, self._cell_start = self._cell_start, None
        cgroup = self._cgroup
        if start is None or cgroup is None:
            return CellUsage(wall, reason="no cgroup: CPU and memory are not measured (limits are not enforced)")
        if start[0] is not cgroup:
            return CellUsage(wall, memory_limit=self.limits.memory_bytes, reason="the sandbox was replaced during the cell")
        meter = self._meter_for(cgroup)
        cpu = meter.cpu_seconds()
        before = start[1]
        reason = None
        if meter.v2:
            reason = "cgroup v2: the peak memory is the sandbox's since it started (memory.peak is not reset per cell)"
        elif not meter.peak_resettable:
            reason = "the peak memory is the sandbox's since it started (memory.max_usage_in_bytes could not be reset)"
        return CellUsage(
            wall,
            cpu=None if cpu is None or before is None else max(0.0, cpu - before),
            memory_peak=meter.peak(),
            memory_limit=self.limits.memory_bytes,
            reason=reason,
        )

    async def execute(self, code: str, *args: Any, **kwargs: Any) -> AsyncGenerator[Event, None]:
        """A cell, with a hint added to ``ModuleNotFoundError``: which Python the sandbox runs.
        (The arguments after ``code`` are passed on as they are: see SandboxSession.execute.)"""
        notice = self.workspace.take_notice()
        if notice:
            yield Stream("stderr", f"[sandbox] {notice}\n")
        cell = super().execute(code, *args, **kwargs)
        try:
            async for event in cell:
                if isinstance(event, ErrorOutput) and event.ename == "ModuleNotFoundError" and self.language.name == "python":
                    hint = environment.import_hint(self._python, self._interpreter(), event.evalue)
                    event = ErrorOutput(event.ename, event.evalue, [*event.traceback, hint])
                elif isinstance(event, ErrorOutput) and (ro_hint := self.workspace.hint(event.evalue)):
                    event = ErrorOutput(event.ename, event.evalue, [*event.traceback, ro_hint])
                yield event
        finally:
            await cell.aclose()
        # Read-write workspace: the files the cell changed, written back (workspace/staging.py).
        for line in await asyncio.get_running_loop().run_in_executor(None, self.workspace.write_back):
            yield Stream("stderr", f"[sandbox] {line}\n")

    # -- %sandbox -------------------------------------------------------------------------------

    def environment_description(self) -> str:
        if self.language.name == "node" and self._node_modules:
            return f"{self._interpreter()}, node_modules {', '.join(self._node_modules)}, read-only"
        if self.language.name != "python" and self._python.bin_dir is None:
            return f"{self._interpreter()}"
        return self._python.describe() if self.language.name == "python" else f"{self._interpreter()}; PATH has {self._python.bin_dir}"

    def workspace_description(self) -> str:
        return self.workspace.describe()

    def report(self, topic: str) -> str:
        return report.report(self, topic)
