"""A frontend that dies (killed, crashed) takes its kernel and the kernel's sandbox with it.

jupyter_client tells a kernel who started it (``JPY_PARENT_PID``); like ipykernel's parent
poller, the kernel then shuts down when that process is gone instead of living on as an orphan
that holds a sandbox, its cgroup and its memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from processes import alive, sandbox_groups, sandbox_pids

FRONTEND = """
import sys, time
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="sandbox-python")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
kc.execute_interactive("print(6 * 7)", timeout=120)
print("KERNEL-PID", km.provisioner.process.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_frontend_takes_its_kernel_and_sandbox_with_it(local_kernelspecs: Path, tmp_path: Path) -> None:
    frontend = subprocess.Popen(
        [sys.executable, "-c", FRONTEND], stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=os.environ.copy()
    )
    try:
        assert frontend.stdout is not None
        lines = iter(frontend.stdout.readline, "")
        kernel = next(int(line.split()[1]) for line in lines if line.startswith("KERNEL-PID "))  # after the cell's 42
        assert alive(kernel) and sandbox_groups(kernel) and sandbox_pids(kernel), "the sandbox did not start"
        frontend.send_signal(signal.SIGKILL)
        frontend.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (alive(kernel) or sandbox_pids(kernel)):
            time.sleep(0.2)
        assert not alive(kernel), "the kernel lives on after its frontend was killed"
        assert not sandbox_pids(kernel), "the sandbox's processes live on after the kernel went"
        assert not sandbox_groups(kernel), "the sandbox's cgroups are left behind"
    finally:
        if frontend.poll() is None:
            frontend.kill()
