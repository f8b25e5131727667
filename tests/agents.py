"""The three agents as plain subprocesses, and cells that count, for the agent and resume tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from sandbox_kernel.protocol import encode_message

AGENTS = Path(__file__).resolve().parents[1] / "sandbox_kernel" / "agents"

COMMANDS: dict[str, list[str]] = {
    "python": [sys.executable, str(AGENTS / "python_agent.py")],
    "node": [shutil.which("node") or "/usr/bin/node", str(AGENTS / "node_agent.js")],
    "bash": [shutil.which("bash") or "/bin/bash", str(AGENTS / "bash_agent.sh")],
}

# Cells that print the numbers 0 .. n-1, one per line, optionally pausing ~2 ms after each.
COUNT: dict[str, Callable[[int, bool], str]] = {
    "python": lambda n, slow: (
        "import time\nfor i in range(%d):\n    print(i, flush=True)\n    %s" % (n, "time.sleep(0.002)" if slow else "pass")
    ),
    "node": lambda n, slow: (
        "for (let i = 0; i < %d; i++) { console.log(i); %s}"
        % (n, "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2); " if slow else "")
    ),
    "bash": lambda n, slow: "for ((i = 0; i < %d; i++)); do echo $i; %sdone" % (n, "sleep 0.002; " if slow else ""),
}


def numbers(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(n))


def spawn(language: str, workdir: Path, replay_bytes: int | None = None) -> subprocess.Popen[bytes]:
    """Start an agent as a plain subprocess: stdin/stdout are the protocol pipes, stderr goes to
    ``workdir/agent.log``, the environment is what a sandbox gives it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8"}
    if replay_bytes is not None:
        env["SANDBOX_AGENT_REPLAY_BYTES"] = str(replay_bytes)
    with open(workdir / "agent.log", "wb") as log:
        return subprocess.Popen(COMMANDS[language], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env)


def private_dirs(pid: int) -> set[Path]:
    """The Bash agent's private FIFO directory (``.skbash.*``), found through its open files.

    In a sandbox it lives on the sandbox's own /dev/shm or /tmp and goes with it; a bare agent
    that is killed leaves it on the host's, so tests remove it (see :func:`stop`)."""
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.parent.name.startswith(".skbash."):
                found.add(target.parent)
    except OSError:
        pass
    return found


def stop(proc: subprocess.Popen[bytes], leftovers: set[Path] | None = None) -> None:
    """Ask the agent to shut down; kill it if it has not within 5 s; remove ``leftovers`` (by
    default its :func:`private_dirs`, if it still runs)."""
    leftovers = private_dirs(proc.pid) if leftovers is None else leftovers
    if proc.poll() is None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(encode_message({"type": "shutdown"}))
            proc.stdin.flush()
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for directory in leftovers:
        shutil.rmtree(directory, ignore_errors=True)
