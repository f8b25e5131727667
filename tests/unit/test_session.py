"""AgentSession logic over a scripted byte stream (the seam every backend shares).

A fake agent at the byte-stream boundary (like httpx's MockTransport) drives time limits,
output caps, interrupt escalation and sandbox replacement without any process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable


from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import OutOfMemory, SandboxError
from sandbox_kernel.languages import LANGUAGES
from sandbox_kernel.protocol import FrameDecoder, Message, encode, encode_message
from sandbox_kernel.agent_session import AgentSession
from sandbox_kernel.session import AgentChannel, ErrorOutput, ExecuteResult, Stream

READY = encode_message({"type": "ready", "language_info": {"name": "python", "version": "3.11.0"}})


class FakeChannel(AgentChannel):
    """Replies to each request with ``script(request) -> bytes``; ``hang`` keeps it silent."""

    def __init__(self, script: Callable[[dict], bytes | None]) -> None:
        self.script = script
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.inbox.put_nowait(READY)
        self.sent: list[dict] = []
        self.decoder = FrameDecoder()
        self.closed = False

    async def read(self) -> bytes:
        return await self.inbox.get()

    async def write(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            assert isinstance(frame, Message)
            self.sent.append(frame.body)
            reply = self.script(frame.body)
            if reply is not None:
                self.inbox.put_nowait(reply)

    async def close(self) -> None:
        self.closed = True


class FakeSession(AgentSession):
    def __init__(
        self, script: Callable[[dict], bytes | None], lost: SandboxError | None = None, **limits: object
    ) -> None:
        config = {"Sandbox": {"timeout": 0.0, **limits}}
        from traitlets.config import Config

        super().__init__(LANGUAGES["python"], Sandbox(config=Config(config)).limits())
        self.script = script
        self.spawned: list[FakeChannel] = []
        self.kills = 0
        self.lost = lost or SandboxError("gone")

    async def _spawn(self) -> AgentChannel:
        channel = FakeChannel(self.script)
        self.spawned.append(channel)
        return channel

    async def _kill(self) -> None:
        self.kills += 1

    async def _lost_reason(self) -> SandboxError:
        return self.lost

    def report(self, topic: str) -> str:
        return topic


def done(req: dict, status: str = "ok", truncated: int = 0) -> bytes:
    return encode_message({"type": "done", "id": req["id"], "status": status, "truncated": truncated})


async def run(session: AgentSession, code: str = "x") -> list:
    return [event async for event in session.execute(code)]


def test_outputs_arrive_in_order_and_utf8_split_across_frames_is_joined() -> None:
    def script(req: dict) -> bytes | None:
        if req["type"] == "execute":
            snow = "☃".encode()
            return (
                encode("out", b"a" + snow[:1])
                + encode("out", snow[1:] + b"\n")
                + encode_message({"type": "result", "id": req["id"], "data": {"text/plain": "42"}})
                + done(req)
            )
        return None

    async def main() -> list:
        session = FakeSession(script)
        await session.start()
        assert session.language_info["version"] == "3.11.0"
        return await run(session)

    events = asyncio.run(main())
    assert "".join(e.text for e in events if isinstance(e, Stream)) == "a☃\n"
    assert events[-1] == ExecuteResult({"text/plain": "42"}, {})


def test_output_over_the_limit_is_dropped_with_a_notice() -> None:
    def script(req: dict) -> bytes | None:
        if req["type"] == "execute":
            assert req["output_limit"] == 1024
            return b"".join(encode("out", b"x" * 500) for _ in range(10)) + done(req, truncated=0)
        return None

    async def main() -> list:
        session = FakeSession(script, output_limit="1Ki")
        await session.start()
        return await run(session)

    events = asyncio.run(main())
    text = "".join(e.text for e in events if isinstance(e, Stream) and e.name == "stdout")
    assert text == "x" * 1024
    notice = [e.text for e in events if isinstance(e, Stream) and e.name == "stderr"]
    assert notice and "output truncated: 3976 more bytes" in notice[0]


def test_timeout_sends_interrupt_and_reports_a_timeout_error() -> None:
    def script(req: dict) -> bytes | None:
        if req["type"] == "interrupt":
            return encode_message(
                {"type": "error", "id": "c-any", "ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
            )
        return None  # the cell "runs" until interrupted

    async def main() -> tuple[list, FakeSession]:
        session = FakeSession(script, timeout=0.2)
        await session.start()
        # The agent's error carries the request id in real life; emulate it.
        session.script = lambda req: (
            encode_message(
                {"type": "error", "id": session._last, "ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
            )
            + encode_message({"type": "done", "id": session._last, "status": "interrupted"})
            if req["type"] == "interrupt"
            else (setattr(session, "_last", req["id"]) or None)
        )
        session.spawned[0].script = session.script
        return await run(session), session

    events, session = asyncio.run(main())
    errors = [e for e in events if isinstance(e, ErrorOutput)]
    assert len(errors) == 1 and errors[0].ename == "CellTimeout" and "0.2 s" in errors[0].evalue
    assert [m["type"] for m in session.spawned[0].sent] == ["setup", "execute", "interrupt"]
    assert session.spawned[0].sent[0] == {"type": "setup", "ipython": "auto"}  # Sandbox.ipython, once per sandbox
    assert session.kills == 0  # the agent obeyed: state is kept


def test_ignored_interrupt_replaces_the_sandbox_within_the_grace_period() -> None:
    async def main() -> tuple[list, FakeSession, float]:
        session = FakeSession(lambda req: None, interrupt_grace=0.3)
        await session.start()
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: asyncio.ensure_future(session.interrupt()))
        began = loop.time()
        events = await run(session)
        return events, session, loop.time() - began

    events, session, took = asyncio.run(main())
    assert took < 1.5
    assert isinstance(events[-1], ErrorOutput) and "sandbox was replaced" in events[-1].traceback[0]
    assert session.kills == 1 and len(session.spawned) == 2  # a fresh sandbox is ready


def test_lost_sandbox_is_reported_and_the_next_cell_gets_a_fresh_one() -> None:
    calls = {"n": 0}

    def script(req: dict) -> bytes | None:
        if req["type"] != "execute":
            return None
        calls["n"] += 1
        if calls["n"] == 1:
            return b""  # EOF: the sandbox died (the fake reader treats b"" as end of stream)
        return encode("out", b"fine\n") + done(req)

    async def main() -> tuple[list, list, FakeSession]:
        session = FakeSession(script, lost=OutOfMemory("256Mi"))
        await session.start()
        first = await run(session)
        second = await run(session)
        return first, second, session

    first, second, session = asyncio.run(main())
    assert isinstance(first[-1], ErrorOutput) and first[-1].ename == "OutOfMemory"
    assert "out of memory (limit 256Mi)" in first[-1].evalue
    assert [e.text for e in second if isinstance(e, Stream)] == ["fine\n"]
    assert len(session.spawned) == 2


def test_garbage_from_the_agent_is_a_protocol_error_not_a_crash() -> None:
    def script(req: dict) -> bytes | None:
        return b"this is not a frame at all, it is far too long for a header\n" if req["type"] == "execute" else None

    async def main() -> list:
        session = FakeSession(script)
        await session.start()
        return await run(session)

    events = asyncio.run(main())
    assert isinstance(events[-1], ErrorOutput) and events[-1].ename == "ProtocolError"


def test_completion_round_trip_and_unanswered_requests_degrade() -> None:
    def script(req: dict) -> bytes | None:
        if req["type"] == "complete":
            return encode_message(
                {"type": "complete_reply", "id": req["id"], "matches": ["print"], "cursor_start": 0, "cursor_end": 2}
            )
        return None

    async def main() -> tuple:
        session = FakeSession(script)
        await session.start()
        completion = await session.complete("pr", 2)
        return completion, json.dumps(session.spawned[0].sent[-1])

    completion, sent = asyncio.run(main())
    assert completion.matches == ["print"] and (completion.cursor_start, completion.cursor_end) == (0, 2)
    assert '"cursor_pos": 2' in sent


def test_banner_names_the_language_with_or_without_parentheses_in_its_display_name() -> None:
    import dataclasses

    session = FakeSession(lambda req: None)
    assert session.banner().startswith("Sandbox (Python) on the ")
    for display_name, label in [
        ("Python", "Python"),
        ("My Python", "My Python"),
        ("Team (R&D) Python", "Team (R&D) Python"),
        ("Sandbox (Node.js)", "Node.js"),
    ]:
        session.language = dataclasses.replace(LANGUAGES["python"], display_name=display_name)
        assert session.banner().startswith(f"Sandbox ({label}) on the "), display_name
