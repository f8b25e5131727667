"""The ``usage`` request (PROTOCOL.md) on the three agents as plain subprocesses: answered by
the process that holds the stream, at once, also while a cell runs, from the cgroup the agent
is in (here the host's view of /sys/fs/cgroup), and checked by messages.check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agents import Agent
from sandbox_kernel.messages import check

SLEEP = {
    "python": "import time; time.sleep(1.5)",
    "node": "await new Promise(r => setTimeout(r, 1500))",
    "bash": "sleep 1.5",
}


@pytest.mark.parametrize("language", ["python", "node", "bash"])
def test_usage_is_answered_at_once_also_while_a_cell_runs(language: str, tmp_path: Path) -> None:
    agent = Agent(language, tmp_path)
    try:
        agent.send({"type": "usage", "id": "u1"})
        idle = check(agent.next_message("usage_reply", 30))
        agent.start(SLEEP[language], cell_id="c1")
        time.sleep(0.4)
        started = time.monotonic()
        agent.send({"type": "usage", "id": "u2"})
        busy = check(agent.next_message("usage_reply", 30, keep=True))  # the cell's frames wait
        answered = time.monotonic() - started
        assert agent.next_message("done", 30).body["id"] == "c1"
    finally:
        agent.close()
    for reply, ident in ((idle, "u1"), (busy, "u2")):
        assert reply.problem is None, reply.problem
        body = reply.body
        assert body["id"] == ident, json.dumps(body)
        if Path("/sys/fs/cgroup/cgroup.controllers").exists() or Path("/sys/fs/cgroup/memory").is_dir():
            assert body["cgroup"] in (1, 2) and body["memory"] > 0 and body["cpu_seconds"] > 0, body
    assert answered < 0.5, f"the {language} agent took {answered:.2f} s to answer while a cell ran"
