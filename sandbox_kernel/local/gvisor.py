"""gVisor as the local sandbox's runtime (``LocalSandbox.runtime = 'gvisor'``).

With bubblewrap a cell's system calls go to the host kernel (through a seccomp filter); under
gVisor they go to gVisor's own kernel, the Sentry, a user-space process that implements Linux
itself and only makes a small, seccomp-filtered set of calls to the host. An exploit of a Linux
kernel bug then has to break the Sentry first. The agent runs in an OCI bundle of its own,
started with ``runsc run`` (Debian package ``runsc``, 2023 or later: bookworm's 20221219 build
fails ``statx`` with ``AT_NO_AUTOMOUNT``, so coreutils' ``ls`` does not work):

- the bundle's root file system is an empty, read-only directory with mount points; the host's
  ``/usr``, ``/etc``, ``/lib*`` (and ``LocalSandbox.read_only_paths``) are bind mounts, read-only;
  ``/etc/passwd`` and ``/etc/group`` are the sandbox's own (uid 1000 is ``sandbox``), the agent
  is a copy in ``/opt/sandbox-agent``; ``HOME`` and ``/tmp`` are gVisor tmpfs mounts of
  ``scratch_size``, held in the Sentry's memory (so they count against ``memory_limit``);
- ``--network=none``: gVisor's own network stack with loopback only;
- the agent's stdin and stdout are Unix sockets, not pipes (:class:`StdioSockets`): gVisor's
  ``/proc/<pid>/fd`` would reopen a pipe of the supervisor's, non-dumpable or not;
- uid 1000 inside, no capabilities, no new privileges, and the project's seccomp table
  (:mod:`.seccomp_policy`) applied inside gVisor too (``--oci-seccomp``), so cells see the same
  refusals under both runtimes;
- on the host, ``runsc --rootless`` runs as the sandbox's own leased uid (never root), in the
  sandbox's cgroup (joined before runsc starts, ``--ignore-cgroups``): memory, CPU and pids
  limits cover the Sentry, the Gofer and every process of the cell. gVisor's own processes get
  an allowance on top (:data:`MEMORY_OVERHEAD`, :data:`PIDS_OVERHEAD`);
- ``runsc run`` is attached: its Sentry and Gofer get ``SIGKILL`` when it dies, and it gets
  ``SIGKILL`` when the kernel dies (``setpriv --pdeathsig``), like bubblewrap's
  ``--die-with-parent``. Its state and bundle live in ``/run/sandbox-kernel/gvisor/<cgroup name>``;
  :meth:`GVisorBundle.destroy` removes them on close, and the next kernel removes those of
  kernels that were SIGKILLed (:func:`sweep_stale`), as :mod:`.cgroups` does for cgroups.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from ..config import Limits
from ..session import AgentChannel
from . import seccomp_policy

STATE_ROOT = Path("/run/sandbox-kernel/gvisor")
MIN_VERSION = 20230101  # the first runsc builds with the systrap platform and a working statx
MEMORY_OVERHEAD = 64 * 2**20  # the Sentry, the Gofer and runsc itself: about 40 MiB when idle
PIDS_OVERHEAD = 64  # their threads: about 50
PLATFORMS = ("systrap", "ptrace", "kvm")
POLICY = (  # what %sandbox policy adds under gVisor
    "gVisor: system calls are served by gVisor's own kernel (the Sentry), not the host's; runsc runs "
    "rootless as the sandbox's host uid; limits cover gVisor's own processes too (with "
    f"{MEMORY_OVERHEAD // 2**20}Mi and {PIDS_OVERHEAD} threads added for them); the seccomp table below "
    "is applied inside gVisor, except clone3 (gVisor's own; user namespaces made with it are gVisor's), "
    "and every refusal is EPERM"
)
OVERHEAD = {"extra_memory": MEMORY_OVERHEAD, "extra_pids": PIDS_OVERHEAD}  # for SandboxCgroup.create


@functools.cache
def version(runsc: str) -> tuple[str, int | None]:
    """``runsc --version``'s first line and the build date in it (e.g. 0.0~20240729.0)."""
    try:
        out = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not runnable ({exc})", None
    first = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    match = re.search(r"(20\d{6})", first)
    return first, int(match.group(1)) if match else None


def unavailable_reason(runsc: str) -> str | None:
    """Why gVisor cannot run here, or None when it can."""
    path = shutil.which(runsc)
    if path is None:
        return f"gVisor's runsc ('{runsc}') is not installed. Install it (Debian/Ubuntu: apt-get install runsc)"
    text, date = version(path)
    if date is None and "runsc version" not in text:
        return f"{path} does not work: {text}"
    if date is not None and date < MIN_VERSION:
        return (
            f"{path} is too old ({text}; builds before 2023 lack the systrap platform and fail statx, "
            "which breaks ls). Install a newer runsc (Debian trixie's package, or scripts/install-deps.sh)"
        )
    return None


def runsc_path(runsc: str) -> str:
    return shutil.which(runsc) or runsc


def oci_seccomp_profile() -> dict[str, Any]:
    """The project's seccomp table as gVisor applies it (``--oci-seccomp``), less ``clone3``:
    runsc ignores an OCI profile's ``errnoRet`` (every refusal is EPERM), and glibc falls back to
    ``clone`` only on ENOSYS, so an EPERM ``clone3`` would break every thread. gVisor implements
    ``clone3`` itself; namespaces made with it are gVisor's own, never the host's."""
    profile = seccomp_policy.to_oci_profile()
    kept = []
    for entry in profile["syscalls"]:
        names = [n for n in entry["names"] if n != "clone3"]
        if names:
            kept.append({**entry, "names": names})
    return {**profile, "syscalls": kept}


def spec(
    args: list[str],
    env: dict[str, str],
    *,
    home: str,
    agent_dir: str,
    system_dirs: tuple[str, ...],
    read_only_paths: list[tuple[str, str]],
    files: dict[str, str],
    limits: Limits,
    hostname: str = "sandbox",
    cwd: str | None = None,
    own_dirs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The OCI runtime spec of a sandbox. ``read_only_paths`` are (host source, path inside)
    pairs, bound read-only after the tmpfs mounts; ``files`` maps a path inside to the host file
    bound there read-only (the sandbox's passwd and group); ``own_dirs`` are more private tmpfs
    mounts of the sandbox's user, as its HOME (the read-write workspace: its files come and go
    through the agent protocol, because rootless runsc cannot create a host file of that user)."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=0755"]},
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["mode=1777", f"size={limits.scratch_bytes}"],
        },
        *(
            {
                "destination": path,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["mode=0700", "uid=1000", "gid=1000", f"size={limits.scratch_bytes}"],
            }
            for path in (home, *own_dirs)
        ),
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["mode=1777", f"size={limits.scratch_bytes}"],
        },
    ]
    system = [(p, p) for p in system_dirs if os.path.isdir(p) and not os.path.islink(p)]
    for source, path in [*system, *read_only_paths]:
        mounts.append(
            {"destination": path, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev"]}
        )
    for inside, host in files.items():
        mounts.append(
            {"destination": inside, "type": "bind", "source": host, "options": ["bind", "ro", "nosuid", "nodev"]}
        )
    none: list[str] = []
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000]},
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd or home,
            "capabilities": {k: none for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "seccomp": oci_seccomp_profile(),
            # For gVisor's view (/proc/meminfo); the host cgroup the kernel set up enforces them.
            "resources": {"memory": {"limit": limits.memory_bytes}, "pids": {"limit": limits.pids}},
            "maskedPaths": [],
            "readonlyPaths": [],
        },
    }


class GVisorBundle:
    """One sandbox's OCI bundle and runsc state, under ``STATE_ROOT/<name>``."""

    def __init__(self, name: str, root: Path = STATE_ROOT) -> None:
        self.name = name
        self.dir = root / name
        self.bundle = self.dir / "bundle"
        self.state = self.dir / "state"
        self.log = self.dir / "runsc.log"

    def create(
        self,
        *,
        agent_name: str,
        agent: bytes,
        args: list[str],
        env: dict[str, str],
        home: str,
        agent_dir: str,
        system_dirs: tuple[str, ...],
        read_only_paths: list[tuple[str, str]],
        passwd: str,
        group: str,
        limits: Limits,
        owner: int | None,
        cwd: str | None = None,
        own_dirs: tuple[str, ...] = (),
    ) -> None:
        """Write the bundle; ``owner`` is the host uid runsc will run as (None: this process's)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(mode=0o700)
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        # Mount points (the root is read-only, so gVisor cannot make them) and the merged-/usr links.
        for path in system_dirs:
            if os.path.islink(path):
                (rootfs / path.lstrip("/")).symlink_to(os.readlink(path))
        present = [p for p in system_dirs if os.path.isdir(p) and not os.path.islink(p)]
        for path in ("proc", "dev", "tmp", home, *own_dirs, agent_dir, *present, *(i for _, i in read_only_paths)):
            target = rootfs / path.lstrip("/")
            if not target.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
        (rootfs / agent_dir.lstrip("/") / agent_name).write_bytes(agent)
        (rootfs / agent_dir.lstrip("/") / agent_name).chmod(0o444)
        (self.bundle / "passwd").write_text(passwd)
        (self.bundle / "group").write_text(group)
        for name in ("passwd", "group"):
            (self.bundle / name).chmod(0o444)
        config = spec(
            args,
            env,
            home=home,
            agent_dir=agent_dir,
            system_dirs=system_dirs,
            read_only_paths=read_only_paths,
            files={"/etc/passwd": str(self.bundle / "passwd"), "/etc/group": str(self.bundle / "group")},
            limits=limits,
            cwd=cwd,
            own_dirs=own_dirs,
        )
        (self.bundle / "config.json").write_text(json.dumps(config, indent=1))
        self.state.mkdir(mode=0o700)
        if owner is not None:
            # runsc (rootless) writes its state and log as the sandbox's uid; it only reads the bundle.
            for own in (self.dir, self.state):
                os.chown(own, owner, owner)
            self.log.touch(mode=0o600)
            os.chown(self.log, owner, owner)

    def command(self, runsc: str, platform: str, rootless: bool) -> list[str]:
        """runsc's command line, dying with its parent (the kernel)."""
        argv = ["setpriv", "--pdeathsig", "KILL", runsc_path(runsc)]
        if rootless:
            argv.append("--rootless")
        argv += [
            f"--root={self.state}",
            f"--log={self.log}",
            f"--platform={platform}",
            "--network=none",
            "--ignore-cgroups",  # the kernel put runsc in the sandbox's cgroup already
            "--overlay2=none",  # the root stays read-only (not a writable overlay in memory)
            "--oci-seccomp",
            "run",
            f"--bundle={self.bundle}",
            self.name,
        ]
        return argv

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        wanted = [line for line in text if line[:1] in ("W", "E", "F") or "error" in line.lower()]
        return "; ".join(wanted[-lines:])

    def destroy(self) -> None:
        """Remove the bundle and runsc's state (its processes are gone with the cgroup)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep_stale(root: Path = STATE_ROOT) -> list[str]:
    """Remove the bundles of kernels that are gone (SIGKILLed ones cannot clean up themselves)."""
    removed: list[str] = []
    try:
        names = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("k")]
    except OSError:
        return removed
    for name in names:
        pid = name[1:].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            GVisorBundle(name, root).destroy()
            removed.append(name)
    return removed


class StdioSockets:
    """The agent's stdin and stdout as Unix sockets rather than pipes.

    gVisor's ``/proc/<pid>/fd/N`` opens the file behind a descriptor for any process of the
    sandbox, whether or not the owner is dumpable (unlike Linux, which checks ptrace access), so
    a cell could reopen the supervisor's protocol pipes and write frames. A socket cannot be
    reopened through ``/proc`` (ENXIO, on Linux and in gVisor alike), and ``pidfd_getfd`` and
    ``ptrace`` are in the seccomp table, applied inside gVisor too. One socket pair per
    direction keeps the pipes' semantics: the kernel closing its end of stdin is the agent's EOF.
    """

    def __init__(self) -> None:
        self._in_parent, self.stdin = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._out_parent, self.stdout = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._in_parent.shutdown(socket.SHUT_RD)
        self._out_parent.shutdown(socket.SHUT_WR)

    async def channel(self) -> AgentChannel:
        """The kernel's ends as a channel; the sandbox's ends are closed here (runsc has them)."""
        self.stdin.close()
        self.stdout.close()
        # Both streams' writers are kept: a StreamWriter closes its socket when collected.
        reader, self._out_writer = await asyncio.open_unix_connection(sock=self._out_parent, limit=1 << 20)
        _, writer = await asyncio.open_unix_connection(sock=self._in_parent)
        return SocketChannel(reader, writer, self._out_writer)

    def close(self) -> None:
        for sock in (self.stdin, self.stdout, self._in_parent, self._out_parent):
            sock.close()


class SocketChannel(AgentChannel):
    """The agent's protocol over :class:`StdioSockets`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reader_end: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._reader_end = reader_end  # the reading socket's transport (a StreamWriter closes it when collected)

    async def read(self) -> bytes:
        try:
            return await self.reader.read(1 << 16)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        for end in (self.writer, self._reader_end):
            if not end.is_closing():
                end.close()
