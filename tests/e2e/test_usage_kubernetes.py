"""The sandbox's usage on the Kubernetes backend: ``usage_request`` (what jupyter-resource-usage
asks) answered from the pod's own cgroup, read by the agent (a ``usage`` request, PROTOCOL.md),
for all three languages; per-cell metadata says why CPU and peak memory are not measured there."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

MiB = 1 << 20


def usage_reply(kc: Any) -> dict[str, Any]:
    msg = kc.session.msg("usage_request", {})
    kc.control_channel.send(msg)
    while True:
        reply = kc.control_channel.get_msg(timeout=15)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["msg_type"] == "usage_reply"
            return reply["content"]


def test_usage_reply_is_the_pods_cgroup(k8s_kernel: Callable[..., Any]) -> None:
    kernel = k8s_kernel("python", "--Sandbox.memory_limit=256Mi")
    cell = kernel.run("x = b'a' * (120 * 2**20)\nlen(x) >> 20")
    assert cell.reply["status"] == "ok" and cell.result == "120", cell
    first = usage_reply(kernel.kc)
    sandbox = first["sandbox"]
    assert sandbox.get("source", "").startswith("cgroup v") and sandbox["source"].endswith("read by the agent"), first
    # The pod's memory, not the kernel process's (which holds no 120 MiB).
    assert 120 * MiB <= first["kernel_memory"] < 256 * MiB, first
    assert first["host_virtual_memory"]["total"] == 256 * MiB
    assert first["host_virtual_memory"]["available"] == 256 * MiB - first["kernel_memory"]
    assert sandbox["cpu_seconds"] > 0
    # CPU and the control channel while a cell runs: the supervisor answers at once.
    kernel.kc.execute("import time\nt = time.process_time()\nwhile time.process_time() - t < 2: pass")
    time.sleep(1.0)
    started = time.monotonic()
    during = usage_reply(kernel.kc)
    assert time.monotonic() - started < 2, "usage_reply took too long while a cell ran"
    assert during["sandbox"]["cpu_seconds"] > sandbox["cpu_seconds"] + 0.3, (first, during)
    assert during["kernel_cpu"] > 10, during
    kernel.drain_iopub()
    # Per cell: wall time; CPU and peak are left out with the reason.
    reply = kernel.kc.execute_interactive("1", timeout=60)
    usage = reply["metadata"]["sandbox_usage"]
    assert usage["wall_seconds"] > 0 and "cpu_seconds" not in usage and "read-only" in usage["unmeasured"]
    assert usage["memory_limit_bytes"] == 256 * MiB


@pytest.mark.parametrize("language,code", [("node", "Buffer.alloc(80 * 2**20, 1).length"), ("bash", "echo ok")])
def test_node_and_bash_agents_report_usage(k8s_kernel: Callable[..., Any], language: str, code: str) -> None:
    kernel = k8s_kernel(language)
    assert kernel.run(code).reply["status"] == "ok"
    reply = usage_reply(kernel.kc)
    assert reply["sandbox"].get("source", "").endswith("read by the agent"), reply
    assert reply["kernel_memory"] > MiB and reply["sandbox"]["cpu_seconds"] > 0, reply
    out = kernel.run("%sandbox usage").stdout
    assert "total (1 cells)" in out and "now: memory" in out, out
