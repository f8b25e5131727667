"""usage.py: the usage_reply fields jupyter-resource-usage shows, per-cell metadata, the warning
near the memory limit, %sandbox usage; cgroups.CellMeter on a fake cgroup tree."""

from __future__ import annotations

from pathlib import Path

from sandbox_kernel.local import cgroups
from sandbox_kernel.usage import Accounting, CellUsage, CpuMeter, Usage, format_bytes, usage_reply

MiB = 1 << 20


def test_usage_reply_fields() -> None:
    now = Usage(
        memory=100 * MiB,
        memory_limit=256 * MiB,
        memory_peak=120 * MiB,
        cpu_seconds=3.0,
        cpu_limit=0.5,
        pids=4,
        active=10,
        inactive=20,
        source="cgroup v1",
    )
    reply = usage_reply(now, 25.0, "host", 123)
    assert reply["hostname"] == "host" and reply["pid"] == 123
    assert reply["kernel_memory"] == 100 * MiB and reply["kernel_cpu"] == 25.0
    assert reply["cpu_count"] == 0.5 and reply["host_cpu_percent"] == 50.0
    assert reply["host_virtual_memory"] == {
        "total": 256 * MiB,
        "available": 156 * MiB,
        "free": 156 * MiB,
        "used": 100 * MiB,
        "percent": 39.1,
        "active": 10,
        "inactive": 20,
    }
    assert reply["sandbox"]["memory_limit"] == 256 * MiB and reply["sandbox"]["source"] == "cgroup v1"
    pod = usage_reply(Usage(memory=5, hostname="pod ns/p"), None, "host", 1)
    assert pod["hostname"] == "pod ns/p" and "kernel_cpu" not in pod and pod["host_virtual_memory"] == {}
    assert usage_reply(None, None, "host", 1) == {
        "hostname": "host",
        "pid": 1,
        "host_virtual_memory": {},
        "sandbox": {"reason": "the sandbox is not running"},
    }


def test_cpu_meter() -> None:
    t = [100.0]
    meter = CpuMeter(clock=lambda: t[0])
    assert meter.percent(2.0, uptime=4.0) == 50.0  # first: average since the start
    t[0] = 102.0
    assert meter.percent(3.0, uptime=6.0) == 50.0
    t[0] = 104.0
    assert meter.percent(0.5, uptime=1.0) == 50.0  # a new sandbox
    assert meter.percent(None) is None


def test_cell_metadata_and_warning() -> None:
    cell = CellUsage(0.25, cpu=0.1, memory_peak=240 * MiB, memory_limit=256 * MiB)
    assert cell.metadata() == {
        "wall_seconds": 0.25,
        "cpu_seconds": 0.1,
        "memory_peak_bytes": 240 * MiB,
        "memory_limit_bytes": 256 * MiB,
    }
    warning = cell.warning()
    assert warning and warning.count("\n") == 1 and warning.endswith("\n")
    assert "240.0 MiB" in warning and "94 %" in warning and "Sandbox.memory_limit" in warning
    assert CellUsage(0.1, memory_peak=230 * MiB, memory_limit=256 * MiB).warning() is None
    assert CellUsage(0.1, reason="not here").metadata() == {"wall_seconds": 0.1, "unmeasured": "not here"}


def test_accounting_report() -> None:
    acc = Accounting(keep=2)
    for n in range(1, 4):
        acc.add(n, CellUsage(0.5, cpu=0.25, memory_peak=n * MiB))
    acc.add(4, CellUsage(1.0, reason="the sandbox was replaced during the cell"))
    text = acc.report(Usage(memory=3 * MiB, memory_limit=256 * MiB, cpu_seconds=1.5))
    lines = text.splitlines()
    assert lines[0].split() == ["CELL", "WALL", "CPU", "PEAK", "MEMORY"]
    assert [line.split()[0] for line in lines[1:3]] == ["[3]", "[4]"]
    assert lines[2].split()[1:] == ["1.000", "s", "-", "-"]
    assert lines[3].split()[:3] == ["total", "(4", "cells)"] and "2.500 s" in lines[3] and "0.750 s" in lines[3]
    assert "3.0 MiB" in lines[3]
    assert "now: memory 3.0 MiB of 256.0 MiB" in text and "note: the sandbox was replaced" in text
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**30) == "3.0 GiB"


def test_cell_meter_v1(tmp_path: Path) -> None:
    for c in ("memory", "cpu", "pids", "cpuacct"):
        (tmp_path / c / "sandbox-kernel" / "k1-1").mkdir(parents=True)
    group = cgroups.SandboxCgroup("k1-1", tmp_path)
    assert tmp_path / "cpuacct" / "sandbox-kernel" / "k1-1" in group.paths
    (tmp_path / "cpuacct" / "sandbox-kernel" / "k1-1" / "cpuacct.usage").write_text("1500000000\n")
    peak = tmp_path / "memory" / "sandbox-kernel" / "k1-1" / "memory.max_usage_in_bytes"
    peak.write_text("4096\n")
    meter = group.meter()
    assert meter.cpu_seconds() == 1.5 and meter.peak() == 4096
    assert meter.reset_peak() and peak.read_text().startswith("0")  # a plain file is not truncated


def test_cell_meter_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory cpu pids")
    base = tmp_path / "sandbox-kernel" / "k1-1"
    base.mkdir(parents=True)
    (base / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\n")
    (base / "memory.peak").write_text("8192\n")
    meter = cgroups.SandboxCgroup("k1-1", tmp_path).meter()
    assert meter.cpu_seconds() == 2.5 and meter.peak() == 8192
    assert not meter.reset_peak()


def test_agent_session_usage_round_trip_also_while_a_cell_runs() -> None:
    import asyncio

    from sandbox_kernel.protocol import encode_message
    from test_session import FakeSession, done

    cell: dict = {}

    def script(req: dict) -> bytes | None:
        if req["type"] == "usage":
            return encode_message(
                {
                    "type": "usage_reply",
                    "id": req["id"],
                    "cgroup": 2,
                    "memory": 5 * MiB,
                    "memory_limit": None,
                    "memory_peak": 6 * MiB,
                    "cpu_seconds": 1.25,
                }
            )
        if req["type"] == "execute":
            cell["req"] = req  # answered later: the cell keeps running
        return None

    async def main() -> tuple:
        session = FakeSession(script)
        await session.start()
        idle = await session.usage()
        running = asyncio.ensure_future(session.execute("x").__anext__())
        await asyncio.sleep(0.05)
        busy = await session.usage()  # while the cell runs
        session.spawned[0].inbox.put_nowait(done(cell["req"]))
        running.cancel()
        return idle, busy, session.cell_usage_end(0.5)

    idle, busy, cell_usage = asyncio.run(main())
    assert idle.memory == 5 * MiB and idle.memory_peak == 6 * MiB and idle.cpu_seconds == 1.25
    assert idle.memory_limit == 256 * MiB  # "unlimited" in the cgroup: the configured limit
    assert idle.source == "cgroup v2, read by the agent" and busy.memory == 5 * MiB
    assert cell_usage.cpu is None and "read-only" in (cell_usage.reason or "")


def test_agent_session_usage_without_an_answer_says_so() -> None:
    import asyncio

    from test_session import FakeSession

    async def main():
        session = FakeSession(lambda req: None)
        await session.start()
        return await session.usage()

    usage = asyncio.run(main())
    assert usage.memory is None and usage.reason == "the sandbox's agent did not report its usage"


def test_usage_reply_is_checked() -> None:
    from sandbox_kernel.messages import check
    from sandbox_kernel.protocol import Message

    good = check(
        Message({"type": "usage_reply", "id": "u1", "cgroup": 1, "memory": 7, "memory_limit": None, "cpu_seconds": 2})
    )
    assert good.problem is None and good.body == {
        "type": "usage_reply",
        "id": "u1",
        "cgroup": 1,
        "memory": 7,
        "cpu_seconds": 2.0,
    }
    bad = check(Message({"type": "usage_reply", "id": "u1", "memory": -1}))
    assert bad.problem and "'memory'" in bad.problem and bad.body == {"type": "usage_reply", "id": "u1"}
    assert check(Message({"type": "usage_reply", "id": "u1", "cpu_seconds": "1"})).problem
