"""The kernel process's own protocol work (kernel_base.py, kernelapp.py), through jupyter_client:
what ipykernel did for the kernel before, and what the conformance suite does not cover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from kernels import REPO, run_cell, running_kernel, text

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


def replies(kc: Any, ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(ids) and time.monotonic() < deadline:
        msg = kc.get_shell_msg(timeout=deadline - time.monotonic())
        if msg["parent_header"].get("msg_id") in ids:
            got[msg["parent_header"]["msg_id"]] = msg
    return got


def test_the_kernel_process_imports_neither_ipython_nor_ipykernel_nor_jupyter_client() -> None:
    """What the kernel process imports before it answers (kernelapp.py's start)."""
    code = (
        "import sys, sandbox_kernel.kernelapp, sandbox_kernel.kernel, sandbox_kernel.kernel_sockets, "
        "sandbox_kernel.local.backend; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'IPython', 'ipykernel', 'jupyter_client', 'tornado'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cells_queued_behind_a_failed_cell_are_aborted_and_later_ones_run() -> None:
    with running_kernel("sandbox-python") as (_, kc):
        first = kc.execute("import time; time.sleep(0.5); 1 / 0")
        queued = [kc.execute(f"print({n})") for n in range(3)]
        got = replies(kc, [first, *queued])
        assert got[first]["content"]["status"] == "error"
        assert [got[q]["content"]["status"] for q in queued] == ["aborted"] * 3
        assert got[queued[0]]["metadata"]["status"] == "aborted"
        reply, outputs = run_cell(kc, "print('after')")
        assert reply["status"] == "ok" and text(outputs) == "after\n"
        # A failing cell that does not stop on error leaves the queue alone.
        failing = kc.execute("1 / 0", stop_on_error=False)
        after = kc.execute("print('runs')")
        got = replies(kc, [failing, after])
        assert got[failing]["content"]["status"] == "error" and got[after]["content"]["status"] == "ok"


def test_busy_idle_and_execute_input_around_a_cell_with_the_request_as_parent() -> None:
    with running_kernel("sandbox-python") as (_, kc):
        msg_id = kc.execute("6 * 7")
        seen: list[tuple[str, Any]] = []
        while not (seen and seen[-1] == ("status", "idle")):
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                content = msg["content"]
                seen.append((msg["msg_type"], content.get("execution_state") or content.get("execution_count")))
        assert seen[0] == ("status", "busy") and seen[-1] == ("status", "idle")
        assert ("execute_input", 1) in seen and ("execute_result", 1) in seen
        info = kc.kernel_info(reply=True, timeout=30)["content"]
        assert info["protocol_version"] == "5.4" and info["language_info"]["name"] == "python"


def test_an_iopub_subscriber_is_welcomed() -> None:
    km = KernelManager(kernel_name="sandbox-bash")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        msg = kc.get_iopub_msg(timeout=60)
        while msg["msg_type"] == "status":  # "starting" may come first
            msg = kc.get_iopub_msg(timeout=60)
        assert msg["msg_type"] == "iopub_welcome" and msg["content"] == {"subscription": ""}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_sigint_to_the_kernel_process_interrupts_the_running_cell() -> None:
    with running_kernel("sandbox-python") as (km, kc):
        msg_id = kc.execute("import time\nfor _ in range(100): time.sleep(0.1)")
        time.sleep(1.5)
        began = time.monotonic()
        os.kill(km.provisioner.process.pid, signal.SIGINT)  # type: ignore[union-attr]
        reply = replies(kc, [msg_id], timeout=15)[msg_id]["content"]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - began < 5
        assert km.is_alive()
        assert run_cell(kc, "print('still here')")[0]["status"] == "ok"


def test_shutdown_replies_on_control_and_iopub_and_the_process_exits_by_itself() -> None:
    km = KernelManager(kernel_name="sandbox-python")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.shutdown()
        reply = kc.control_channel.get_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
        broadcast = None
        while broadcast is None:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "shutdown_reply":
                broadcast = msg
        assert broadcast["parent_header"]["msg_id"] == msg_id
        process = km.provisioner.process  # type: ignore[union-attr]
        assert process.wait(timeout=15) == 0
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_a_shutdown_while_a_cell_runs_ends_the_cell_and_the_process_cleanly(tmp_path: Any) -> None:
    km = KernelManager(kernel_name="sandbox-python")
    with open(tmp_path / "stderr", "wb") as stderr:
        km.start_kernel(stderr=stderr)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute("import time\nwhile True: time.sleep(0.1)")
        time.sleep(1.0)
        kc.shutdown()
        reply = kc.control_channel.get_msg(timeout=30)
        assert reply["msg_type"] == "shutdown_reply" and reply["content"]["status"] == "ok"
        assert km.provisioner.process.wait(timeout=15) == 0  # type: ignore[union-attr]
    finally:
        kc.stop_channels()
        km.cleanup_resources()
    printed = (tmp_path / "stderr").read_text(errors="replace")
    assert "Traceback" not in printed and "Task was destroyed" not in printed, printed
