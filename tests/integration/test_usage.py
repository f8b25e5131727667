"""The sandbox's usage through jupyter_client on the local backend: ``usage_request`` on the
control channel (what jupyter-resource-usage asks), ``execute_reply`` metadata per cell,
``%sandbox usage`` and the warning near the memory limit. Figures are checked against the
sandbox's own cgroup, read here from the host."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kernels import result, run_cell, running_kernel

MiB = 1 << 20
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory/sandbox-kernel")
CGROUP_V2 = Path("/sys/fs/cgroup/sandbox-kernel")

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


def usage_reply(kc: Any) -> dict[str, Any]:
    msg = kc.session.msg("usage_request", {})
    kc.control_channel.send(msg)
    while True:
        reply = kc.control_channel.get_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["msg_type"] == "usage_reply"
            return reply["content"]


def execute(kc: Any, code: str, timeout: float = 60) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """Run ``code``; (reply content, reply metadata, stdout, stderr)."""
    outputs: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            outputs.append(msg["content"])

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    out = "".join(o["text"] for o in outputs if o["name"] == "stdout")
    err = "".join(o["text"] for o in outputs if o["name"] == "stderr")
    return reply["content"], reply["metadata"], out, err


def memory_group(km: Any) -> Path:
    pid = km.provisioner.process.pid
    parent = CGROUP_V1_MEMORY if CGROUP_V1_MEMORY.is_dir() else CGROUP_V2
    [group] = sorted(parent.glob(f"k{pid}-*"))
    return group


def test_usage_reply_is_the_sandboxs_memory_and_cpu_against_its_limits() -> None:
    with running_kernel("sandbox-python", argv=["--Sandbox.memory_limit=512Mi", "--Sandbox.cpu_limit=1"]) as (km, kc):
        run_cell(kc, "import time\nx = bytearray(150 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1")
        first = usage_reply(kc)
        group = memory_group(km)
        in_cgroup = int(
            (group / ("memory.usage_in_bytes" if CGROUP_V1_MEMORY.is_dir() else "memory.current")).read_text()
        )
        assert first["kernel_memory"] >= 150 * MiB
        assert abs(first["kernel_memory"] - in_cgroup) < 20 * MiB  # the sandbox's cgroup, not the kernel's tree
        assert first["pid"] == km.provisioner.process.pid
        vm = first["host_virtual_memory"]
        assert vm["total"] == 512 * MiB and vm["available"] == 512 * MiB - first["kernel_memory"]
        assert 0 < vm["percent"] < 100
        assert first["cpu_count"] == 1
        assert first["sandbox"]["memory_limit"] == 512 * MiB and first["sandbox"]["source"].startswith("cgroup")
        # CPU between two requests: a busy cell shows up in the second one.
        run_cell(kc, "t = time.process_time()\nwhile time.process_time() - t < 0.5: pass")
        second = usage_reply(kc)
        assert second["sandbox"]["cpu_seconds"] >= first["sandbox"]["cpu_seconds"] + 0.4
        assert second["kernel_cpu"] > 5
        # The control channel answers while a cell runs.
        kc.execute("time.sleep(2)")
        time.sleep(0.5)
        started = time.monotonic()
        during = usage_reply(kc)
        assert time.monotonic() - started < 1.5 and during["kernel_memory"] >= 150 * MiB


def test_execute_reply_metadata_and_sandbox_usage() -> None:
    with running_kernel("sandbox-python", argv=["--Sandbox.memory_limit=256Mi"]) as (km, kc):
        reply, meta, _, err = execute(
            kc, "x = bytearray(100 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\ndel x"
        )
        assert reply["status"] == "ok" and not err
        usage = meta["sandbox_usage"]
        assert usage["memory_peak_bytes"] >= 100 * MiB and usage["memory_limit_bytes"] == 256 * MiB
        assert usage["wall_seconds"] > 0 and usage["cpu_seconds"] > 0
        assert "unmeasured" not in usage
        # The peak is per cell (memory.max_usage_in_bytes is reset before each one).
        _, meta, _, _ = execute(kc, "y = 1")
        resting = meta["sandbox_usage"]["memory_peak_bytes"]  # IPython mode: ~55 MiB, plain: ~20 MiB
        assert resting < 100 * MiB
        _, meta, _, _ = execute(
            kc, "t = __import__('time').process_time()\nwhile __import__('time').process_time() - t < 0.3: pass"
        )
        assert 0.25 < meta["sandbox_usage"]["cpu_seconds"] < meta["sandbox_usage"]["wall_seconds"] + 0.05
        # Near the limit: one line on stderr naming the setting. The cell takes what brings the
        # sandbox to 95 % of 256 MiB, over what it holds at rest (IPython mode holds more).
        near = int((0.95 * 256 * MiB - resting) // MiB)
        reply, meta, _, err = execute(kc, f"x = bytearray({near} * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1")
        assert reply["status"] == "ok"
        assert err.count("\n") == 1 and "Sandbox.memory_limit" in err and "peaked at" in err, err
        assert meta["sandbox_usage"]["memory_peak_bytes"] > 0.9 * 256 * MiB
        _, _, out, _ = execute(kc, "%sandbox usage")
        lines = out.splitlines()
        assert lines[0].split() == ["CELL", "WALL", "CPU", "PEAK", "MEMORY"]
        assert [line.split()[0] for line in lines[1:5]] == ["[1]", "[2]", "[3]", "[4]"]
        assert lines[5].startswith("total (4 cells)")
        assert "now: memory" in out and "of 256.0 MiB" in out


def test_bash_and_node_cells_are_accounted_too() -> None:
    for name, code in (
        ("sandbox-bash", "head -c 50000000 /dev/zero | tail -c 1 >/dev/null; echo ok"),
        ("sandbox-node", "Buffer.alloc(50 * 2**20, 1).length"),
    ):
        with running_kernel(name) as (km, kc):
            reply, meta, _, _ = execute(kc, code)
            assert reply["status"] == "ok"
            assert meta["sandbox_usage"]["cpu_seconds"] > 0
            assert meta["sandbox_usage"]["memory_peak_bytes"] > 0
            assert usage_reply(kc)["kernel_memory"] > 0


def test_a_busy_sandbox_is_held_to_its_cpu_limit_over_seconds() -> None:
    """``Sandbox.cpu_limit`` is a share of each second (cgroups.CPU_PERIOD_US): a short burst may
    run at full speed (benchmarks/bench_ipython.py measures what that gives), but a loop that keeps
    the CPU busy for 5 s gets 500m's 2.5 s of CPU, give or take the periods at either end."""
    with running_kernel("sandbox-python", argv=["--Sandbox.cpu_limit=500m"]) as (km, kc):
        reply, outputs = run_cell(
            kc,
            "import os, time\nstart, cpu = time.monotonic(), os.times()\n"
            "while time.monotonic() - start < 5: pass\n"
            "now = os.times()\n"
            "(now.user - cpu.user + now.system - cpu.system) / (time.monotonic() - start)",
            timeout=60,
        )
        assert reply["status"] == "ok", outputs
        share = float(result(outputs))
        print(f"CPU share of a 5 s busy loop at cpu_limit 500m: {share:.2f}")
        # 5 s overlap at most 6 one-second periods, the two at the ends partly: 4 x 0.5 + 2 x 0.5 = 3 s, 0.6.
        assert share <= 0.62, share
