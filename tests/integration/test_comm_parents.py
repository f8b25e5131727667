"""A request's output and its ``idle`` status carry that request as parent, even when the
frontend's comm messages overlap other requests, through jupyter_client on real Sandbox (Python)
kernels on the local backend.

JupyterLab's widget manager (jupyterlab_widgets) opens a ``jupyter.widget.control`` comm and sends
it ``request_states`` as soon as a kernel is ready. In IPython mode the sandbox is still starting
IPython then, so the ``comm_open`` takes about a second and the first cell arrives meanwhile: that
cell's output and ``idle`` went out with the ``comm_open`` as parent, and JupyterLab showed the cell
as running (``[*]``) for ever, with no output. These tests send exactly those messages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kernels import running_kernel

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


def send(kc: Any, kind: str, content: dict[str, Any]) -> str:
    """Send a shell message as a frontend does; return its msg_id."""
    msg = kc.session.msg(kind, content)
    kc.session.send(kc.shell_channel.socket, msg)
    return str(msg["header"]["msg_id"])


def widget_manager_connects(kc: Any) -> dict[str, str]:
    """What JupyterLab's widget manager sends when it connects to a kernel."""
    return {
        "comm_open": send(
            kc, "comm_open", {"comm_id": "control-1", "target_name": "jupyter.widget.control", "data": {}}
        ),
        "comm_msg": send(kc, "comm_msg", {"comm_id": "control-1", "data": {"method": "request_states"}}),
    }


def iopub_until_idle(kc: Any, parent_id: str, timeout: float = 30) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Every IOPub message as (type, parent msg_id, content), up to the ``idle`` of ``parent_id``."""
    seen: list[tuple[str, str | None, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no idle for {parent_id} within {timeout} s; IOPub: {seen}"
        try:
            msg = kc.get_iopub_msg(timeout=min(left, 1))
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting until the deadline
            continue
        seen.append((msg["msg_type"], msg["parent_header"].get("msg_id"), msg["content"]))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and seen[-1][1] == parent_id:
            return seen


def stdout_of(seen: list[tuple[str, str | None, dict[str, Any]]], parent_id: str | None) -> str:
    return "".join(
        c["text"] for kind, parent, c in seen if kind == "stream" and parent == parent_id and c["name"] == "stdout"
    )


def test_first_cell_after_jupyterlabs_widget_manager_connects(local_kernelspecs: Path) -> None:
    """JupyterLab's messages right after start (IPython mode, the default), then ``print(6*7)``."""
    with running_kernel("sandbox-python") as (_km, kc):
        comm = widget_manager_connects(kc)
        cell = kc.execute("print(6*7)", store_history=True, allow_stdin=True, stop_on_error=True)
        seen = iopub_until_idle(kc, cell)
        assert stdout_of(seen, cell) == "42\n", seen
        assert stdout_of(seen, comm["comm_open"]) == "", seen
        # The control comm has no target in the sandbox (ipywidgets is not imported): closed, under its own parent.
        assert ("comm_close", comm["comm_open"], {"comm_id": "control-1", "data": {}}) in seen, seen
        reply = kc.get_shell_msg(timeout=10)
        while reply["parent_header"].get("msg_id") != cell:
            reply = kc.get_shell_msg(timeout=10)
        assert reply["content"]["status"] == "ok"
        # Nothing of the cell's came under another parent, and the next cell is as good.
        assert not [m for m in seen if m[0] == "status" and m[1] not in (cell, *comm.values())], seen
        second = kc.execute("print('next')")
        assert stdout_of(iopub_until_idle(kc, second), second) == "next\n"


@pytest.mark.parametrize("ipython", ["auto", "off"])
def test_comm_messages_during_a_cell_leave_the_next_cells_parent_alone(local_kernelspecs: Path, ipython: str) -> None:
    """A comm_open and comm_msg arriving while a cell runs wait for it (the sandbox takes comm
    messages between cells); the cell after them still has its own output and ``idle``."""
    with running_kernel("sandbox-python", argv=[f"--Sandbox.ipython={ipython}"]) as (_km, kc):
        running = kc.execute("import time; time.sleep(1)")
        time.sleep(0.3)  # the cell is running
        comm = widget_manager_connects(kc)
        cell = kc.execute("print(6*7)")
        seen = iopub_until_idle(kc, cell)
        assert stdout_of(seen, cell) == "42\n", seen
        assert stdout_of(seen, running) == "", seen
        idles = [parent for kind, parent, c in seen if kind == "status" and c["execution_state"] == "idle"]
        assert idles.count(running) == 1 and idles.count(cell) == 1, seen
        assert ("comm_close", comm["comm_open"], {"comm_id": "control-1", "data": {}}) in seen, seen
