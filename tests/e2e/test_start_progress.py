"""A slow sandbox start shows what it waits for in the first cell (issue 13, item 4), on the real cluster.

The slow start is real: the kernel's sandbox pod asks for a node label no node has
(``KubernetesSandbox.node_selector``), so the scheduler leaves it Pending ("0/1 nodes are
available: … didn't match Pod's node affinity/selector"); the test then labels the node and the
start goes on. A label of the test's own, so nobody else's pods are touched. What the cell shows
is read as a frontend reads it, from IOPub through jupyter_client.
"""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any, Callable

import pytest
from kubernetes import client

from fixtures_kubernetes import K8sKernel

pytestmark = pytest.mark.cluster


def node_name(core: client.CoreV1Api) -> str:
    (node,) = core.list_node().items
    return str(node.metadata.name)


def label_node(core: client.CoreV1Api, name: str, key: str, value: str | None) -> None:
    core.patch_node(name, {"metadata": {"labels": {key: value}}})


def test_the_first_cell_shows_an_unschedulable_start_then_its_result(
    k8s_kernel: Callable[..., K8sKernel],
    core_v1: client.CoreV1Api,
) -> None:
    key = f"sandbox-kernel-test/progress-{uuid.uuid4().hex[:8]}"
    node = node_name(core_v1)
    started = time.monotonic()
    try:
        kernel = k8s_kernel("python", f"--KubernetesSandbox.node_selector={key}=yes", ready_timeout=30)
        # kernel_info answers without waiting for a sandbox that cannot start yet (KERNEL_INFO_WAIT).
        assert time.monotonic() - started < 15
        msg_id = kernel.kc.execute("1+1")
        seen: list[dict[str, Any]] = []
        labelled = False
        reply = None
        deadline = time.monotonic() + 90
        while reply is None and time.monotonic() < deadline:
            try:
                msg = kernel.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                msg = None
            if (
                msg is not None
                and msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] not in ("status", "execute_input")
            ):
                seen.append(msg)
                text = msg["content"].get("data", {}).get("text/plain", "")
                if not labelled and "no node can run the sandbox pod yet" in text:
                    time.sleep(1.5)  # an update or two while still unschedulable
                    label_node(core_v1, node, key, "yes")
                    labelled = True
            try:
                answer = kernel.kc.get_shell_msg(timeout=0.01)
                if answer["parent_header"].get("msg_id") == msg_id:
                    reply = answer
            except queue.Empty:
                pass
        assert reply is not None and reply["content"]["status"] == "ok", (reply, seen)
        # Drain what IOPub still holds for this cell (the result may come after the reply is read).
        while not any(m["msg_type"] == "execute_result" for m in seen):
            msg = kernel.kc.get_iopub_msg(timeout=10)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] not in ("status", "execute_input"):
                seen.append(msg)
    finally:
        label_node(core_v1, node, key, None)
    kinds = [m["msg_type"] for m in seen]
    first = seen[0]
    assert first["msg_type"] == "display_data", kinds
    display_id = first["content"]["transient"]["display_id"]
    texts = [
        m["content"]["data"]["text/plain"] for m in seen if m["msg_type"] in ("display_data", "update_display_data")
    ]
    assert all(t.startswith("Starting the sandbox (") for t in texts), texts
    assert any("no node can run the sandbox pod yet" in t and "node affinity/selector" in t for t in texts), texts
    updates = [m for m in seen if m["msg_type"] == "update_display_data"]
    assert updates and all(m["content"]["transient"]["display_id"] == display_id for m in updates), kinds
    # Cleared once the sandbox is ready, before the cell's own output.
    assert kinds[-2:] == ["clear_output", "execute_result"], kinds
    assert seen[-1]["content"]["data"]["text/plain"] == "2"
    assert kinds.count("display_data") == 1 and kinds.count("clear_output") == 1
    # The second cell is not slowed down or decorated.
    second = kernel.run("2+2")
    assert second.result == "4" and [o["msg_type"] for o in second.outputs] == ["execute_result"]
