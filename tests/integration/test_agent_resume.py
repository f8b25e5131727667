"""Resuming a dropped stream (agents/PROTOCOL.md, "Resuming"), for all three agents.

Each agent runs as a plain subprocess; the test keeps every raw byte it wrote, so it can check
that what an agent replays after ``resume`` is byte for byte what it wrote before, and that the
stream after the marker line carries on as if it had never broken.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.protocol import FrameDecoder, Message, Output

from agents import COMMANDS, COUNT, Agent, numbers


def decode(data: bytes) -> list[Any]:
    return list(FrameDecoder().feed(data))


def run_raw(agent: Agent, code: str, cell_id: str) -> bytes:
    """Execute a cell; return all raw output up to and including its ``done``."""
    agent.send({"type": "execute", "id": cell_id, "code": code, "output_limit": 0})
    return agent.wait_raw(lambda raw: _done(decode(bytes(raw)), cell_id))


def resume(agent: Agent, offset: int) -> tuple[int, int, int]:
    """Send ``resume``; return (where the marker starts, from, received)."""
    token = secrets.token_hex(16)
    before = len(agent.raw)
    agent.send({"type": "resume", "token": token, "offset": offset})
    prefix = b"resume %s " % token.encode()
    raw = agent.wait_raw(lambda raw: raw.find(b"\n", raw.find(prefix, before)) > raw.find(prefix, before) >= 0)
    at = raw.find(prefix, before)
    end = raw.index(b"\n", at)
    fields = raw[at + len(prefix) : end].split(b" ")
    assert len(fields) == 2 and all(f.isdigit() for f in fields), raw[at:end]
    return at, int(fields[0]), int(fields[1])


def _done(frames: list[Any], cell_id: str) -> bool:
    return any(isinstance(f, Message) and f.type == "done" and f.body.get("id") == cell_id for f in frames)


def _stdout(frames: list[Any]) -> bytes:
    return b"".join(f.data for f in frames if isinstance(f, Output) and f.stream == "stdout")


@pytest.fixture(params=sorted(COMMANDS))
def language(request: pytest.FixtureRequest) -> str:
    if request.param == "node" and not Path(COMMANDS["node"][0]).exists():
        pytest.fail("node is not installed (scripts/install-deps.sh installs it)")
    return request.param


def test_resume_replays_exactly_the_bytes_after_the_offset(language: str, tmp_path: Path) -> None:
    agent = Agent(language, tmp_path, decode=False)
    try:
        before = run_raw(agent, COUNT[language](2000, False), "c1")
        assert _stdout(decode(before)) == numbers(2000)
        for offset in (len(before) // 2, 7, len(before)):  # mid-frame, inside the ready frame, the end
            at, start, received = resume(agent, offset)
            assert at == len(before)  # nothing else was written in between
            assert (start, received) == (offset, agent.sent)
            replay_start = agent.raw.index(b"\n", at) + 1
            agent.wait_raw(lambda raw: len(raw) >= replay_start + len(before) - offset)
            assert bytes(agent.raw[replay_start:]) == before[offset:]
            del agent.raw[at:]  # what a kernel keeps: the stream as if it had never broken
        after = run_raw(agent, COUNT[language](3, False), "c2")
        frames = decode(after)  # still one well-formed stream
        assert _done(frames, "c2") and _stdout(frames) == numbers(2000) + numbers(3)
    finally:
        agent.close()


def test_resume_while_a_cell_prints_loses_nothing(language: str, tmp_path: Path) -> None:
    agent = Agent(language, tmp_path, decode=False)
    try:
        agent.send({"type": "execute", "id": "c1", "code": COUNT[language](400, True), "output_limit": 0})
        for _ in range(3):
            time.sleep(0.15)
            with agent.raw_lock:
                kept = len(agent.raw)  # the kernel "saw" this much; the rest went nowhere
            time.sleep(0.1)
            at, start, received = resume(agent, kept)
            assert (start, received) == (kept, agent.sent)
            with agent.raw_lock:
                del agent.raw[kept : agent.raw.index(b"\n", at) + 1]  # drop what was "lost" and the marker
        stream = agent.wait_raw(lambda raw: _done(decode(bytes(raw)), "c1"))
        frames = decode(stream)
        assert _stdout(frames) == numbers(400)
        assert [f.body["status"] for f in frames if isinstance(f, Message) and f.type == "done"] == ["ok"]
    finally:
        agent.close()


def test_resume_past_the_replay_buffer_starts_at_a_frame_boundary(language: str, tmp_path: Path) -> None:
    agent = Agent(language, tmp_path, replay_bytes=4096, decode=False)
    try:
        before = run_raw(agent, COUNT[language](20000, False), "c1")
        at, start, received = resume(agent, 0)
        assert received == agent.sent
        assert 0 < start <= len(before) - 4096  # bytes before `start` are lost; at least 4096 kept
        replay_start = agent.raw.index(b"\n", at) + 1
        agent.wait_raw(lambda raw: len(raw) >= replay_start + len(before) - start)
        replay = bytes(agent.raw[replay_start:])
        assert replay == before[start:]
        frames = decode(replay)  # a fresh decoder can read from `start`
        assert _done(frames, "c1")
        assert _stdout(frames) and numbers(20000).endswith(_stdout(frames))
        del agent.raw[at:]
        assert _stdout(decode(run_raw(agent, COUNT[language](3, False), "c2"))).endswith(numbers(3))  # it carries on
    finally:
        agent.close()


def test_the_input_count_shows_lost_requests(language: str, tmp_path: Path) -> None:
    agent = Agent(language, tmp_path, decode=False)
    try:
        run_raw(agent, COUNT[language](1, False), "c1")
        agent.sent += 2  # pretend two requests were written into a stream that then broke
        _, _, received = resume(agent, 0)
        assert received == agent.sent - 2
    finally:
        agent.close()
