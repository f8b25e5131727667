"""The three agents as plain subprocess commands, and cells that count, for the resume tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

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
