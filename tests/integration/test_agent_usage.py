"""The ``usage`` request (PROTOCOL.md) on the three agents as plain subprocesses: answered by
the process that holds the stream, at once, also while a cell runs, from the cgroup the agent
is in (here the host's view of /sys/fs/cgroup), and checked by messages.check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agents import spawn, stop
from sandbox_kernel.messages import check
from sandbox_kernel.protocol import FrameDecoder, Message, encode_message

SLEEP = {"python": "import time; time.sleep(1.5)", "node": "await new Promise(r => setTimeout(r, 1500))", "bash": "sleep 1.5"}


@pytest.mark.parametrize("language", ["python", "node", "bash"])
def test_usage_is_answered_at_once_also_while_a_cell_runs(language: str, tmp_path: Path) -> None:
    proc = spawn(language, tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    decoder = FrameDecoder()
    pending: list[Message] = []

    def next_message(kind: str, timeout: float = 30) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(pending):
                if m.type == kind:
                    return pending.pop(i)
            assert time.monotonic() < deadline, f"no {kind} from the {language} agent"
            chunk = proc.stdout.read1(65536)
            assert chunk, f"the {language} agent ended"
            pending.extend(f for f in decoder.feed(chunk) if isinstance(f, Message))

    def send(body: dict) -> None:
        proc.stdin.write(encode_message(body))
        proc.stdin.flush()

    try:
        next_message("ready")
        send({"type": "usage", "id": "u1"})
        idle = check(next_message("usage_reply"))
        send({"type": "execute", "id": "c1", "code": SLEEP[language], "output_limit": 0})
        time.sleep(0.4)
        started = time.monotonic()
        send({"type": "usage", "id": "u2"})
        busy = check(next_message("usage_reply"))
        answered = time.monotonic() - started
        assert next_message("done").body["id"] == "c1"
    finally:
        stop(proc)
    for reply, ident in ((idle, "u1"), (busy, "u2")):
        assert reply.problem is None, reply.problem
        body = reply.body
        assert body["id"] == ident, json.dumps(body)
        if Path("/sys/fs/cgroup/cgroup.controllers").exists() or Path("/sys/fs/cgroup/memory").is_dir():
            assert body["cgroup"] in (1, 2) and body["memory"] > 0 and body["cpu_seconds"] > 0, body
    assert answered < 0.5, f"the {language} agent took {answered:.2f} s to answer while a cell ran"
