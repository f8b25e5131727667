"""A kernel start prints nothing a user must wonder about (console, nbconvert, papermill show it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from kernels import run_cell, text

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.mark.parametrize("name", ["sandbox-python", "sandbox-node", "sandbox-bash"])
def test_no_debugger_warnings_at_kernel_start(name: str, tmp_path: Path) -> None:
    """Without -Xfrozen_modules=off in the kernelspec, debugpy (imported by ipykernel) prints
    four "Debugger warning: It seems that frozen modules are being used" lines."""
    km = KernelManager(kernel_name=name)
    with open(tmp_path / "stderr", "wb") as stderr:
        km.start_kernel(env=dict(os.environ), stderr=stderr)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            code = {"sandbox-python": "print('ok')", "sandbox-node": "console.log('ok')", "sandbox-bash": "echo ok"}[
                name
            ]
            reply, outputs = run_cell(kc, code)
            assert reply["status"] == "ok" and text(outputs) == "ok\n", outputs
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
    printed = (tmp_path / "stderr").read_text(errors="replace")
    assert "Debugger warning" not in printed and "frozen modules" not in printed, printed
