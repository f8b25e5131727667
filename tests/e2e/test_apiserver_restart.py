"""A running cell survives an API server crash and restart (tests/cluster/restart-apiserver) and loses no output.

The kernel's attach stream goes through the API server, so a restart (an upgrade, a crash) cuts
it while the cell keeps printing inside the pod. The kernel must re-attach once the API server
is back, and the agent must repeat what was printed meanwhile. Marked ``disruptive``: it runs
after every other test (tests/conftest.py), since the cluster's controllers lag for a while after.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from traitlets.config import Config

from sandbox_kernel.config import Sandbox
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES
from sandbox_kernel.session import ErrorOutput, ExecuteResult, Stream

RESTART = Path(__file__).resolve().parents[1] / "cluster" / "restart-apiserver"

COUNT_FOREVER = "import time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n    time.sleep(0.01)"


@pytest.mark.disruptive
def test_a_cell_loses_no_output_across_an_api_server_crash_and_restart(
    sa_kubeconfig: str, sandbox_images: dict[str, str]
) -> None:
    async def scenario() -> tuple[str, list[ErrorOutput], float, str, str]:
        settings = KubernetesSandbox(
            kubeconfig=sa_kubeconfig, images={"python": sandbox_images["SANDBOX_IMAGE_PYTHON"]}
        )
        limits = Sandbox(config=Config({"Sandbox": {"timeout": 0.0}})).limits()  # the restart takes a while
        session = KubernetesSandboxSession(LANGUAGES["python"], limits, settings, kernel_id="apiserver-restart")
        out: list[str] = []
        errors: list[ErrorOutput] = []

        async def run() -> None:
            async for event in session.execute(COUNT_FOREVER):
                if isinstance(event, Stream) and event.name == "stdout":
                    out.append(event.text)
                elif isinstance(event, Stream):
                    out.append(f"<stderr {event.text!r}>")
                elif isinstance(event, ErrorOutput):
                    errors.append(event)
                elif isinstance(event, ExecuteResult):
                    out.append("<result>")

        try:
            await session.start()
            cell = asyncio.ensure_future(run())
            await asyncio.sleep(1)
            restart = await asyncio.to_thread(
                subprocess.run, [str(RESTART), "--crash", "3"], capture_output=True, text=True, timeout=180
            )
            assert restart.returncode == 0, restart.stderr
            channel = session._attach
            assert channel is not None
            deadline = time.monotonic() + 60
            while channel.reattached < 1:  # the kernel attaches again by itself
                assert time.monotonic() < deadline, "the stream was not re-attached after the restart"
                assert not cell.done(), f"the cell ended: {errors}"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)
            await session.interrupt()
            await asyncio.wait_for(cell, 30)
            after = await collect_one(session, "print('still here', i > 0)")
            return "".join(out), errors, float(restart.stdout.strip() or 0), session.report("status"), after
        finally:
            await session.close()

    text, errors, downtime, status, after = asyncio.run(scenario())
    lines = text.splitlines()
    assert downtime >= 3
    assert len(lines) > 200  # it printed before, during and after the restart
    assert lines == [str(i) for i in range(len(lines))]  # every line once, in order, none lost
    assert [e.ename for e in errors] == ["KeyboardInterrupt"]
    assert "0 bytes of output lost" in status
    assert after == "still here True\n"  # the same sandbox, with its variables


async def collect_one(session: KubernetesSandboxSession, code: str) -> str:
    out = ""
    async for event in session.execute(code):
        if isinstance(event, Stream):
            out += event.text
    return out
