"""The local sandbox: the agent runs under bubblewrap, in Linux namespaces and cgroups.

What a cell sees:

- its own PID namespace (host processes are invisible; when the kernel dies, bubblewrap's
  ``--die-with-parent`` ends the namespace and every process in it),
- its own network namespace with only a loopback interface (not even the host's 127.0.0.1),
- a read-only view of the system directories (``/usr``, ``/etc``, …) and nothing of the host's
  home directories; a private tmpfs of ``scratch_size`` as working directory, ``HOME`` and
  ``/tmp`` (it vanishes with the sandbox, so nothing is left on the host),
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
import functools
import itertools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Enum, Int, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from ..config import Limits
from ..egress import host as egress
from ..errors import OutOfMemory, SandboxError, SandboxLost, SandboxStartError, SandboxUnavailable
from ..languages import Language
from ..quantity import format_bytes
from ..agent_session import AgentSession
from ..session import AgentChannel
from ..usage import CellUsage, Usage
from . import cgroups, gvisor, seccomp_policy, uids

log = logging.getLogger("sandbox_kernel")

SANDBOX_HOME = "/home/sandbox"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
AGENT_DIR = "/opt/sandbox-agent"
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class LocalSandbox(Configurable):
    """Settings of the local (bubblewrap) backend."""

    bwrap = Unicode("bwrap", help="The bubblewrap program (Debian package 'bubblewrap').").tag(config=True)

    runtime = Enum(
        ["bubblewrap", "gvisor"],
        "bubblewrap",
        help="What runs the agent: 'bubblewrap' (namespaces and a seccomp filter; system calls reach "
        "the host kernel) or 'gvisor' (gVisor's runsc: system calls reach gVisor's own user-space "
        "kernel; slower to start and to make system calls). The same limits, files, network and uid apply.",
    ).tag(config=True)

    runsc = Unicode(
        "runsc", help="gVisor's runsc program (Debian package 'runsc', 2023 or later), for runtime 'gvisor'."
    ).tag(config=True)

    gvisor_platform = Enum(
        list(gvisor.PLATFORMS),
        "systrap",
        help="How gVisor intercepts system calls (runsc --platform): 'systrap' (fastest without "
        "hardware virtualization), 'ptrace', or 'kvm' (needs a usable /dev/kvm).",
    ).tag(config=True)

    run_as_uid = Int(
        None,
        allow_none=True,
        help="Host uid every sandbox runs as when the kernel runs as root. Unset (the default), "
        "each sandbox gets a uid of its own from uid_range. Inside the sandbox it appears as uid 1000.",
    ).tag(config=True)

    uid_range = Unicode(
        "1879048192-1879113727",
        help="Host uids ('FIRST-LAST') given out one per sandbox when the kernel runs as root "
        "(0x70000000-0x7000FFFF: above systemd-nspawn's container range, below its foreign range). "
        "uids with a passwd or group entry, in /etc/subuid or /etc/subgid, or used by any "
        "process are skipped; leases are flocks under /run/sandbox-kernel/uids.",
    ).tag(config=True)

    seccomp_python = Unicode(
        "/usr/bin/python3",
        help="Python that compiles the seccomp filter with libseccomp's bindings (Debian package "
        "'python3-seccomp') when the kernel's own interpreter cannot import seccomp.",
    ).tag(config=True)

    @validate("uid_range")
    def _check_uid_range(self, proposal: Any) -> str:
        try:
            uids.parse_range(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from None
        return proposal["value"]

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

# The sandbox's own accounts: uid 1000 is 'sandbox', whose home is the scratch tmpfs.
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"sandbox:x:1000:1000:Sandbox:{SANDBOX_HOME}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"


@functools.lru_cache(maxsize=None)
def _bwrap_disables_userns(bwrap: str) -> bool:
    """Whether this bubblewrap has --disable-userns (0.8.0 and later)."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--disable-userns" in out.stdout + out.stderr


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at its start (close-on-exec here;
    ``pass_fds`` hands it to bubblewrap, which reads it and closes it before the agent runs)."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
        found = shutil.which(self.language.interpreter, path=SANDBOX_PATH)
        if not found:
            raise SandboxUnavailable(
                f"{self.language.interpreter} was not found on {SANDBOX_PATH}; install it or set "
                f"c.LocalSandbox.interpreters = ['{self.language.name}=/path/to/{self.language.interpreter}']."
            )
        return found

    # -- command line ---------------------------------------------------------------------------

    def _host_uid(self) -> int | None:
        """The host uid the sandbox runs as, when the kernel is root (explicit run_as_uid wins)."""
        if os.geteuid() != 0:
            return None
        if self.settings.run_as_uid is not None:
            return self.settings.run_as_uid
        return self._lease.uid if self._lease else None

    def _bwrap_options(self, fds: dict[str, str], seccomp: bool) -> list[str]:
        """bubblewrap's options; ``fds`` names the descriptors of the files it copies in.

        What the sandbox can still learn of the host through /proc (best effort, none of it a
        secret): its host uid (``/proc/self/uid_map``, and ``uid=`` in the options of bubblewrap's
        tmpfs mounts in mountinfo), the device number and file system type of the system
        directories and any ``read_only_paths`` (at their host paths, by design), the host
        kernel's version and CPUs, and that PID 1 is ``bwrap --args N``. No install path, kernel
        pid or cgroup name: the options are in a memfd, the agent is copied in, the cgroup is
        joined before bubblewrap starts and hidden by the cgroup namespace."""
        agent = self.language.agent_path()
        argv: list[str] = []
        if seccomp:
            argv += ["--seccomp", fds["seccomp"]]
        for path in SYSTEM_DIRS:
            p = Path(path)
            if p.is_symlink():
                argv += ["--symlink", os.readlink(p), path]
            elif p.is_dir():
                argv += ["--ro-bind", path, path]
        for extra in self.settings.read_only_paths:
            argv += ["--ro-bind", extra, extra]
        if self.egress is not None:  # egress hook: the proxy's socket directory and the relay
            argv += self.egress.bwrap_mounts(fds.get("relay", "<relay fd>"))
        argv += [
            # The sandbox's own accounts, and a copy of the agent (a bind mount would show the
            # installation's path in /proc/self/mountinfo).
            "--ro-bind-data", fds["passwd"], "/etc/passwd",
            "--ro-bind-data", fds["group"], "/etc/group",
            "--perms", "0444", "--file", fds["agent"], f"{AGENT_DIR}/{agent.name}",
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(self.limits.scratch_bytes), "--tmpfs", SANDBOX_HOME,
            "--size", str(self.limits.scratch_bytes), "--tmpfs", "/tmp",
            # Last of the mounts: / itself (bubblewrap's tmpfs) read-only, like a pod's root
            # file system; HOME and /tmp are mounts of their own and stay writable.
            "--remount-ro", "/",
            "--chdir", SANDBOX_HOME,
            "--unshare-all",  # user, pid, net (loopback only), ipc, uts, cgroup
            "--unshare-user",  # required, not just tried: --disable-userns needs it
        ]
        if _bwrap_disables_userns(self._bwrap_path()):
            argv += ["--disable-userns"]  # no nested user namespaces, even without seccomp
        argv += [
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
        ]
        if self.egress is not None:  # egress hook: HTTP(S)_PROXY and friends (after --clearenv)
            argv += self.egress.bwrap_env()
        return argv

    def _bwrap_path(self) -> str:
        return shutil.which(self.settings.bwrap) or self.settings.bwrap

    def _inner(self) -> list[str]:
        interpreter = self._interpreter()
        agent = self.language.agent_path()
        if self.egress is not None:  # egress hook: the relay listens, then execs the agent
            return self.egress.inner(SANDBOX_PATH, [interpreter, f"{AGENT_DIR}/{agent.name}"])
        return [interpreter, f"{AGENT_DIR}/{agent.name}"] if self._isolated else [interpreter, str(agent)]

    def _wrap(self, argv: list[str], cgroup: cgroups.SandboxCgroup | None) -> list[str]:
        """Prefix the bubblewrap command with the uid drop and the cgroup join."""
        uid = self._host_uid()
        if uid is not None:
            # Never run user code as root on the host: drop to an unprivileged uid, and let
            # bubblewrap's user namespace make that uid look like 1000 inside.
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"] + argv
        if cgroup is not None:
            # Join the cgroup before anything else runs, so no byte is ever allocated outside it.
            # The paths are in this script, not the environment: bubblewrap, the sandbox's PID 1,
            # gets the environment this process was given, readable in /proc/1/environ.
            procs = " ".join(shlex.quote(f) for f in cgroup.procs_files())
            join = f'for f in {procs}; do echo $$ > "$f" || exit 125; done; exec "$@"'
            argv = ["/bin/sh", "-c", join, "sandbox-start"] + argv
        return argv

    def command(self, cgroup: cgroups.SandboxCgroup | None, fds: dict[str, str] | None = None, seccomp: bool | None = None) -> list[str]:
        """The exact command that starts the sandbox (shown by ``%sandbox manifests``).

        The kernel passes bubblewrap's options through ``--args FD`` (see :meth:`_spawn`), so that
        the sandbox's PID 1 has no host path in its /proc/1/cmdline; this is the same command
        with them spelled out. ``fds`` are the descriptor numbers of the copied files."""
        inner = self._inner()
        if not self._isolated:
            return inner
        if self._gvisor:
            bundle = self._bundle or gvisor.GVisorBundle("<sandbox>")
            return self._wrap(bundle.command(self.settings.runsc, self.settings.gvisor_platform, rootless=True), cgroup)
        fds = fds or {name: f"<{name} fd>" for name in ("seccomp", "passwd", "group", "agent")}
        argv = [self._bwrap_path(), *self._bwrap_options(fds, self._seccomp is not False if seccomp is None else seccomp), "--", *inner]
        return self._wrap(argv, cgroup)

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
                await loop.run_in_executor(None, _bwrap_disables_userns, self._bwrap_path())
                self._seccomp = blob is not None
                if blob is not None:
                    fds["seccomp"] = _memfd("seccomp", blob)
                fds["passwd"] = _memfd("passwd", PASSWD.encode())
                fds["group"] = _memfd("group", GROUP.encode())
                fds["agent"] = _memfd("agent", self.language.agent_path().read_bytes())
            if self._isolated:
                if os.geteuid() == 0 and self.settings.run_as_uid is None:
                    first, last = uids.parse_range(self.settings.uid_range)
                    try:
                        self._lease = await loop.run_in_executor(None, uids.allocate, first, last)
                    except OSError as exc:
                        raise SandboxStartError(f"No host uid is free for the sandbox: {exc}") from exc
                if self.egress is not None:  # egress hook: this sandbox's proxy
                    fds["relay"] = _memfd("relay", self.egress.relay_source())
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
                options = self._bwrap_options(names, bool(self._seccomp))
                fds["args"] = _memfd("args", b"".join(o.encode() + b"\0" for o in options))
                argv = self._wrap([self._bwrap_path(), "--args", str(fds["args"]), "--", *self._inner()], cgroup)
            else:
                argv = self._argv
            log.debug("starting sandbox: %s", shlex.join(self._argv))
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env if self._isolated else {**env, "HOME": os.environ.get("HOME", "/tmp")},
                    cwd="/",
                    start_new_session=True,
                    limit=1 << 20,
                    pass_fds=tuple(fds.values()),
                )
            except OSError as exc:
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
        return PipeChannel(self._proc)

    def _create_bundle(self) -> None:
        assert self._bundle is not None
        agent = self.language.agent_path()
        self._bundle.create(
            agent_name=agent.name,
            agent=agent.read_bytes(),
            args=self._inner(),
            env={"PATH": SANDBOX_PATH, "HOME": SANDBOX_HOME, "USER": "sandbox", "LANG": "C.UTF-8", "TMPDIR": "/tmp"},
            home=SANDBOX_HOME,
            agent_dir=AGENT_DIR,
            system_dirs=SYSTEM_DIRS,
            read_only_paths=list(self.settings.read_only_paths),
            passwd=PASSWD,
            group=GROUP,
            limits=self.limits,
            owner=self._host_uid(),
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
        if self.egress is not None:  # egress hook
            await asyncio.get_running_loop().run_in_executor(None, self.egress.stop)
        if self._bundle is not None:  # gVisor hook: runsc's state and the bundle
            await asyncio.get_running_loop().run_in_executor(None, self._destroy_bundle)
        # Only now that no process of the sandbox is left may another sandbox get its uid.
        self._release_uid()

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

    # -- %sandbox -------------------------------------------------------------------------------

    def _runtime_description(self) -> str:
        if not self._isolated:
            return "none (NOT isolated)"
        if self._gvisor:
            text, _ = gvisor.version(gvisor.runsc_path(self.settings.runsc))
            return f"gVisor ({text}, platform {self.settings.gvisor_platform}, network none)"
        return "bubblewrap (Linux namespaces, host kernel)"

    def report(self, topic: str) -> str:
        limits = self.limits
        if topic == "status":
            usage = self._cgroup.usage() if self._cgroup else {}
            rows = [
                ("backend", ("local (gVisor)" if self._gvisor else "local (bubblewrap)") if self._isolated else "local, NOT isolated"),
                ("runtime", self._runtime_description()),
                ("language", f"{self.language.name} {self.language_info.get('version', '')}".strip()),
                ("process", str(self._proc.pid) if self._proc else "not running"),
                ("user", f"uid 1000 in the sandbox (host uid {self._host_uid()})" if self._host_uid() is not None else "uid 1000 in the sandbox"),
                ("seccomp", ({True: f"filter on ({len(seccomp_policy.syscalls())} system calls)", False: "OFF", None: "-"}[self._seccomp] + (" inside gVisor" if self._gvisor and self._seccomp else "")) if self._isolated else "OFF"),
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
            if os.geteuid() != 0:
                uid = "the kernel's own host uid"
            elif self.settings.run_as_uid is not None:
                uid = f"host uid {self.settings.run_as_uid} (LocalSandbox.run_as_uid)"
            else:
                uid = f"a host uid of its own from {self.settings.uid_range}" + (f", now {self._lease.uid}" if self._lease else "")
            text = (
                f"runtime: {self._runtime_description()}\n"
                "network: own network namespace with loopback only (no route to the host or the internet)\n"
                "processes: own PID namespace; host processes are invisible\n"
                "files: / and the system directories read-only; HOME and /tmp are a private tmpfs "
                f"of {limits.scratch}, deleted with the sandbox\n"
                f"user: uid 1000 ('sandbox'; {uid}), no capabilities, no new privileges, "
                "no new user namespaces\n"
                "environment: PATH, HOME, USER, LANG, TMPDIR only"
            )
            if self.egress is not None:  # egress hook
                text += "\n" + self.egress.policy_line()
            if not self._isolated:
                return text + "\nseccomp: none (the sandbox is NOT isolated)"
            if self._seccomp is False:
                return text + "\nseccomp: OFF (libseccomp's Python bindings are missing: install python3-seccomp)"
            if self._gvisor:
                text += "\n" + gvisor.POLICY
            return text + "\n" + seccomp_policy.summary()
        if topic == "events":
            return "\n".join(time.strftime("%H:%M:%S", time.localtime(t)) + "  " + text for t, text in self._events) or "no events"
        if topic == "manifests":
            return shlex.join(self._argv) if self._argv else shlex.join(self.command(None))
        raise ValueError(topic)


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
