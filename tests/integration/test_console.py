"""``jupyter console --kernel sandbox-python`` in a real terminal (a pty driven by pexpect).

The console is the full prompt_toolkit interface a person gets, colours and all; the test types
into it and reads the screen's byte stream, so prompts are matched through the escape codes.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from processes import alive, children, sandbox_groups, sandbox_kernels

pytestmark = pytest.mark.usefixtures("local_kernelspecs")

ESC = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"  # any run of colour / cursor escape sequences


def prompt(n: int) -> str:
    """``In [n]:`` as the console draws it, with colour codes between the parts."""
    return rf"In {ESC}\[{ESC}{n}{ESC}\]"


def kernel_pid(console_pid: int) -> int:
    """The Sandbox kernel the console started (its child running sandbox_kernel.kernelapp)."""
    found = sandbox_kernels(console_pid)
    assert found, f"no Sandbox kernel among the console's children {children(console_pid)}"
    return found[0]


def test_jupyter_console_runs_interrupts_and_exits_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "PROMPT_TOOLKIT_NO_CPR": "1",  # pexpect's pty never answers cursor-position queries
        "TERM": "xterm-256color",
    }
    console = pexpect.spawn(
        sys.executable,
        ["-m", "jupyter", "console", "--kernel", "sandbox-python"],  # `jupyter console`
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 140),
        cwd=str(tmp_path),
    )
    console.logfile_read = (tmp_path / "console.log").open("w")
    try:
        console.expect(r"Sandbox \(Python\) on the local backend")  # the kernel's banner
        console.expect(prompt(1))

        console.sendline("x = 6 * 7; print('x is', x)")
        console.expect(r"x is 42")
        console.expect(prompt(2))

        kernel = kernel_pid(console.pid)
        groups = sandbox_groups(kernel)
        assert len(groups) == 1, groups
        pids = {int(p) for p in (groups[0] / "cgroup.procs").read_text().split()}
        assert pids

        console.sendline("import time; time.sleep(100)")
        time.sleep(1.5)  # let the cell start
        began = time.monotonic()
        console.sendintr()  # Ctrl-C
        console.expect(r"KeyboardInterrupt", timeout=10)
        assert time.monotonic() - began < 2.0
        console.expect(prompt(3))

        console.sendline("x + 1")  # state kept across the interrupt
        console.expect(rf"Out{ESC}\[{ESC}3{ESC}\]: {ESC}43")
        console.expect(prompt(4))

        # Multi-line input as with ipykernel: a one-line block runs at once; an indented block
        # after one empty line (the kernel's is_complete decides, like IPython's).
        console.sendline("for i in range(2): print('row', i)")
        console.expect(r"row 1")
        console.expect(prompt(5))
        console.sendline("for i in range(2):")
        console.sendline("print('col', i * x)")
        console.sendline("")
        console.expect(r"col 42")
        console.expect(prompt(6))

        console.sendeof()  # Ctrl-D
        console.expect(re.escape("Do you really want to exit ([y]/n)?"))
        console.sendline("y")
        console.expect(pexpect.EOF, timeout=60)
    finally:
        console.close(force=False)
        if console.isalive():
            console.terminate(force=True)
    assert console.exitstatus == 0, f"console ended with {console.exitstatus} / signal {console.signalstatus}"
    assert not alive(kernel), "the console left its kernel running"
    assert not [pid for pid in pids if alive(pid)], "sandbox processes survived the console"
    assert not sandbox_groups(kernel), "the kernel left its sandbox cgroups behind"
