"""bubblewrap's command line for a local sandbox: what a cell sees, as mount and namespace options.

:func:`options` is pure (it takes the :class:`View` the backend decided on); the backend passes
its result through ``bwrap --args FD``, so no host path is on a command line. The sandbox's
PID 1 is :data:`REAPER`, not bubblewrap. gVisor's bundle (:mod:`.gvisor`) is built from the same :class:`View`.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .environment import SYSTEM_DIRS, MountPlan

SANDBOX_HOME = "/home/sandbox"
AGENT_DIR = "/opt/sandbox-agent"
WORKSPACE = "/workspace"
"""Where the notebook's directory appears in the sandbox (its working directory)."""

# The sandbox's own accounts: uid 1000 is 'sandbox', whose home is the scratch tmpfs.
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"sandbox:x:1000:1000:Sandbox:{SANDBOX_HOME}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"

# The sandbox's PID 1 under both runtimes (bubblewrap's --as-pid-1; runsc has no init of its
# own): a shell that starts the agent with the protocol stream as its fd 0/1 and keeps no copy of
# it, then reaps every orphan while it waits (dash's `wait` reaps any child). Any process of the
# sandbox's uid that is dumpable can be written into through /proc/<pid>/mem, so no such process
# may hold the stream: bubblewrap's own init would (it keeps the fds it was given), and under
# gVisor the Node agent's launcher would. The agent starts only once PID 1 has closed its copies,
# so not even its first instruction runs while one is open. A command started with `&` begins
# with SIGINT and SIGQUIT ignored, which every child would inherit: GNU env (coreutils 8.31 and
# later) resets them to their defaults.
REAPER = (
    "unset PWD; exec 3<&0 4>&1 </dev/null >/dev/null; "
    "{ while [ -e /proc/1/fd/3 ] || [ -e /proc/1/fd/4 ]; do :; done; "
    'env --default-signal=INT true 2>/dev/null && set -- env --default-signal=INT,QUIT "$@"; '
    'exec "$@" <&3 >&4 3<&- 4>&-; } & '
    "exec 3<&- 4>&-; wait $!"
)


def reaped(argv: list[str]) -> list[str]:
    """``argv`` started by :data:`REAPER` as the sandbox's PID 1."""
    return ["/bin/sh", "-c", REAPER, "sandbox-init", *argv]


RESERVED = {  # the sandbox's own mount points: a read-only path may not hide or be hidden by them
    "/proc": "the sandbox's own /proc",
    "/dev": "the sandbox's own /dev",
    "/tmp": "the sandbox's private /tmp",
    SANDBOX_HOME: "the sandbox's private HOME",
    AGENT_DIR: "the agent",
    WORKSPACE: "the notebook's directory",
    "/etc/passwd": "the sandbox's own accounts",
    "/etc/group": "the sandbox's own groups",
    "/run/sandbox-egress": "the egress proxy's socket",
}


@dataclass(frozen=True)
class WorkspaceMount:
    """The notebook's directory in the sandbox: ``source`` bound at :data:`WORKSPACE`."""

    source: str
    writable: bool


@dataclass(frozen=True)
class View:
    """Everything of the host a sandbox sees, decided once per start by the backend."""

    scratch_bytes: int
    env: tuple[tuple[str, str], ...]
    """The whole environment of the agent (PATH, HOME, …), set after ``--clearenv``."""
    mounts: MountPlan
    """The user's environment and ``read_only_paths``, read-only at their own paths."""
    workspace: WorkspaceMount | None = None
    cwd: str = SANDBOX_HOME
    agent_name: str = "agent"
    extra: tuple[str, ...] = field(default=())
    """Options of the egress hook (its socket directory and relay), before ``--remount-ro /``."""
    extra_env: tuple[str, ...] = field(default=())
    """``--setenv`` options of the egress hook (after ``--clearenv``)."""


@functools.lru_cache(maxsize=None)
def disables_userns(bwrap: str) -> bool:
    """Whether this bubblewrap has --disable-userns (0.8.0 and later)."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--disable-userns" in out.stdout + out.stderr


def memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at its start (close-on-exec here;
    ``pass_fds`` hands it to bubblewrap, which reads it and closes it before the agent runs)."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def options(view: View, fds: dict[str, str], seccomp: bool, disable_userns: bool) -> list[str]:
    """bubblewrap's options; ``fds`` names the descriptors of the files it copies in.

    What the sandbox can still learn of the host through /proc (best effort, none of it a
    secret): its host uid (``/proc/self/uid_map``, and ``uid=`` in the options of bubblewrap's
    tmpfs mounts in mountinfo), the device number and file system type of the system
    directories, the environment and any ``read_only_paths`` (at their host paths, by design),
    the host kernel's version and CPUs, and that PID 1 is ``bwrap --args N``. No install path,
    kernel pid or cgroup name: the options are in a memfd, the agent is copied in, the cgroup is
    joined before bubblewrap starts and hidden by the cgroup namespace."""
    argv: list[str] = []
    if seccomp:
        argv += ["--seccomp", fds["seccomp"]]
    for path in SYSTEM_DIRS:
        p = Path(path)
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), path]
        elif p.is_dir():
            argv += ["--ro-bind", path, path]
    argv += list(view.extra)
    # Not reformatted: an option and its values on one line.
    # fmt: off
    argv += [
        # The sandbox's own accounts, and a copy of the agent (a bind mount would show the
        # installation's path in /proc/self/mountinfo).
        "--ro-bind-data", fds["passwd"], "/etc/passwd",
        "--ro-bind-data", fds["group"], "/etc/group",
        "--perms", "0444", "--file", fds["agent"], f"{AGENT_DIR}/{view.agent_name}",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(view.scratch_bytes), "--tmpfs", SANDBOX_HOME,
        "--size", str(view.scratch_bytes), "--tmpfs", "/tmp",
    ]
    if view.workspace is not None:
        argv += ["--bind" if view.workspace.writable else "--ro-bind", view.workspace.source, WORKSPACE]
    # After the sandbox's own /tmp, so that a path below /tmp stays visible (environment.py
    # refuses the ones that would hide a mount of the sandbox's own instead).
    argv += view.mounts.bwrap_options()
    argv += [
        # Last of the mounts: / itself (bubblewrap's tmpfs) read-only, like a pod's root
        # file system; HOME, /tmp (and a read-write workspace) are mounts of their own.
        "--remount-ro", "/",
        "--chdir", view.cwd,
        "--unshare-all",  # user, pid, net (loopback only), ipc, uts, cgroup
        "--unshare-user",  # required, not just tried: --disable-userns needs it
        "--as-pid-1",  # PID 1 is REAPER, not bubblewrap's init (which would keep the stream)
    ]
    if disable_userns:
        argv += ["--disable-userns"]  # no nested user namespaces, even without seccomp
    argv += [
        "--uid", "1000", "--gid", "1000",
        "--hostname", "sandbox",
        "--die-with-parent",  # the kernel's death (even SIGKILL) ends the whole sandbox
        "--new-session",  # no controlling terminal to inject keystrokes into
        "--cap-drop", "ALL",
        "--clearenv",
    ]
    for name, value in view.env:
        argv += ["--setenv", name, value]
    argv += list(view.extra_env)
    # fmt: on
    return argv
