"""``jupyter console`` on a Kubernetes kernel prints each error once.

The console shares its terminal with the kernel's stderr, where the kernel logs. A Kubernetes
sandbox that cannot start (here: an image that does not exist) or that dies in a cell used to be
told twice or more: once per log line (each start attempt, each re-attach) and once as the cell's
error. The cell's error is the user's channel; the log keeps it at INFO. Driven through a real
pty with pexpect, as tests/integration/test_console.py drives the local kernel.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pexpect
import pytest
from kubernetes import client

from fixtures_kubernetes import KERNEL_ID_LABEL, wait_until
from processes import alive, sandbox_kernels

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def prompt(n: int) -> str:
    """``In [n]:`` as the console draws it, with colour codes between the parts."""
    esc = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
    return rf"In {esc}\[{esc}{n}{esc}\]"


class Console:
    def __init__(self, child: pexpect.spawn, log: Path) -> None:
        self.child, self.log = child, log

    def run(self, code: str, next_prompt: int, timeout: float = 120) -> None:
        self.child.sendline(code)
        self.child.expect(prompt(next_prompt), timeout=timeout)

    def screen(self) -> str:
        """Everything the terminal showed so far, without escape codes."""
        self.child.logfile_read.flush()
        return ESC.sub("", self.log.read_text())


@pytest.fixture
def console(kernel_env: dict[str, str], core_v1: client.CoreV1Api, tmp_path: Path) -> Iterator[Callable[..., Console]]:
    started: list[tuple[pexpect.spawn, str, list[int]]] = []

    def start(**env: str) -> Console:
        kernel_id = str(uuid.uuid4())
        child = pexpect.spawn(
            sys.executable,
            [
                "-m",
                "jupyter",
                "console",
                "--kernel",
                "sandbox-python",
                "--ZMQTerminalInteractiveShell.kernel_timeout=180",
            ],  # a loaded cluster starts slowly
            env={
                **os.environ,
                **kernel_env,
                "SANDBOX_KERNEL_ID": kernel_id,
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
                "PROMPT_TOOLKIT_NO_CPR": "1",
                "TERM": "xterm-256color",
                **env,
            },
            encoding="utf-8",
            timeout=180,
            dimensions=(40, 200),
            cwd=str(tmp_path),
        )
        log = tmp_path / f"console-{len(started)}.log"
        child.logfile_read = log.open("w")
        child.expect(r"on the kubernetes backend")  # the banner
        started.append((child, kernel_id, sandbox_kernels(child.pid)))
        child.expect(prompt(1))
        return Console(child, log)

    yield start
    stuck = []
    for child, kernel_id, kernels in started:
        if child.isalive():
            child.sendline("exit")
            try:
                child.expect(pexpect.EOF, timeout=90)
            except pexpect.TIMEOUT:
                stuck.append(kernel_id)
                child.terminate(force=True)
        selector = f"{KERNEL_ID_LABEL}={kernel_id}"
        if kernel_id in stuck:  # leave nothing behind on the shared cluster, then fail
            for pid in kernels:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            for ns in core_v1.list_namespace(label_selector=selector).items:
                core_v1.delete_namespace(ns.metadata.name)
            continue
        wait_until(
            lambda: not core_v1.list_namespace(label_selector=selector).items,
            90,
            what=f"the sandbox namespace of kernel {kernel_id} to be gone",
        )
    assert not stuck, f"`exit` did not end the console of kernels {stuck}"


def test_a_sandbox_that_cannot_start_is_reported_once(console: Callable[..., Console]) -> None:
    term = console(SANDBOX_IMAGE_PYTHON="localhost/sandbox-python:no-such-tag")
    term.run("1/0", 2)
    screen = term.screen()
    told = screen.count("could not be pulled")
    assert told == 1, f"the start error was printed {told} times:\n{screen}"
    assert "SandboxStartError: The sandbox image localhost/sandbox-python:no-such-tag could not be pulled" in screen, (
        screen
    )
    assert "ZeroDivisionError" not in screen  # the cell never ran
    # The console keeps using the kernel's is_complete (it gives up for good on a reply slower
    # than 1 s, e.g. one waiting for a sandbox to start again), so a plain `exit` ends it.
    assert "did not respond to an is_complete_request" not in screen, screen


def test_a_sandbox_that_dies_in_a_cell_is_reported_once(console: Callable[..., Console]) -> None:
    term = console()
    term.run("1/0", 2)
    term.run("import os; os._exit(3)", 3)
    term.run("print('after', 6 * 7)", 4)
    screen = term.screen()
    assert screen.count("ZeroDivisionError: division by zero") == 1, screen
    assert screen.count("exit code 3") == 1, f"the lost sandbox was told more than once:\n{screen}"
    assert "SandboxLost: The sandbox stopped (Error, exit code 3)" in screen, screen
    # The attach stream's end is the kernel's business, not the user's: no log lines about it.
    for noise in ("re-attach", "attach stream broke", "no longer running"):
        assert noise not in screen, f"{noise!r} on the console:\n{screen}"
    assert "after 42" in screen
    assert "did not respond to an is_complete_request" not in screen, screen
