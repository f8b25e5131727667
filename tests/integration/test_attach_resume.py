"""The Kubernetes attach channel surviving dropped streams, against the real agents.

The seam is :class:`~sandbox_kernel.kubernetes.api.AttachStream`: here a fake one in front of
a real agent subprocess behaves like a container runtime does, copying the agent's output to
whichever stream is attached at the time and dropping it when none is. So the kernel-side
resume logic (:mod:`sandbox_kernel.kubernetes.attach`) and each agent's replay are tested
together without a cluster; tests/e2e does the same through a real API server.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import SandboxError, SandboxLost
from sandbox_kernel.kubernetes.attach import AttachChannel
from sandbox_kernel.languages import LANGUAGES
from sandbox_kernel.agent_session import AgentSession
from sandbox_kernel.session import AgentChannel, ErrorOutput, ExecuteResult, Stream

from agents import COMMANDS, COUNT, numbers, spawn, stop


class Container:
    """An agent process and its attach streams, like the container runtime's copy of stdout."""

    def __init__(self, language: str, workdir: Path, replay_bytes: int | None = None) -> None:
        self.proc = spawn(language, workdir, replay_bytes)
        self.lock = threading.Lock()
        self.attached: FakeAttach | None = None
        self.dropped_bytes = 0  # output written while nothing was attached
        self.attaches = 0
        threading.Thread(target=self._copy, daemon=True).start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self.lock:
                if self.attached is not None and not self.attached.broken:
                    self.attached.incoming(chunk)
                else:
                    self.dropped_bytes += len(chunk)
        with self.lock:
            if self.attached is not None:
                self.attached.incoming(b"")

    def attach(self) -> FakeAttach | None:
        if self.proc.poll() is not None:
            return None
        stream = FakeAttach(self)
        with self.lock:
            self.attached = stream
            self.attaches += 1
        return stream

    def drop(self, swallow_writes: bool = False) -> None:
        """Break the current stream (what it had not delivered yet is lost with it)."""
        with self.lock:
            if self.attached is not None:
                self.attached.breaks(swallow_writes)
                self.attached = None

    def stop(self) -> None:
        stop(self.proc)


class FakeAttach:
    """Implements what AttachChannel uses of AttachStream: read(timeout), write(data), close()."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.cond = threading.Condition()
        self.buffer = bytearray()
        self.broken = False
        self.swallow = False
        self.ended = False

    def incoming(self, chunk: bytes) -> None:
        with self.cond:
            if chunk:
                self.buffer += chunk
            else:
                self.ended = True
            self.cond.notify_all()

    def breaks(self, swallow_writes: bool) -> None:
        with self.cond:
            self.broken = not swallow_writes
            self.swallow = swallow_writes
            self.buffer.clear()
            self.cond.notify_all()

    def read(self, timeout: float = 0.5) -> tuple[bytes, bytes] | None:
        with self.cond:
            if not self.buffer and not self.broken and not self.ended:
                self.cond.wait(timeout)
            if self.broken or (self.ended and not self.buffer):
                return None
            data = bytes(self.buffer)
            self.buffer.clear()
            return data, b""

    def write(self, data: bytes) -> None:
        if self.broken:
            raise SandboxError("the attach stream is closed")
        if self.swallow:  # "written" into a socket that is already dead
            with self.cond:
                self.broken = True
                self.cond.notify_all()
            return
        assert self.container.proc.stdin is not None
        self.container.proc.stdin.write(data)
        self.container.proc.stdin.flush()

    def close(self) -> None:
        with self.cond:
            self.broken = True
            self.cond.notify_all()


class FlakySession(AgentSession):
    """An AgentSession whose sandbox is a Container reached through AttachChannel."""

    def __init__(self, language: str, workdir: Path, replay_bytes: int | None = None) -> None:
        super().__init__(LANGUAGES[language], Sandbox().limits())
        self.container = Container(language, workdir, replay_bytes)
        self.channel: AttachChannel | None = None

    def reattach(self) -> Any:
        time.sleep(0.3)  # like a real re-attach: output written meanwhile goes nowhere
        return self.container.attach()

    async def _spawn(self) -> AgentChannel:
        stream = self.container.attach()
        assert stream is not None
        self.channel = AttachChannel(asyncio.get_running_loop(), stream, self.reattach)  # type: ignore[arg-type]
        return self.channel

    async def _kill(self) -> None:
        self.container.stop()

    async def _lost_reason(self) -> SandboxError:
        return SandboxLost("the test container ended")

    def report(self, topic: str) -> str:
        return topic


async def run(session: AgentSession, code: str) -> tuple[str, str, Any]:
    out, err, result = "", "", None
    async for event in session.execute(code):
        if isinstance(event, Stream):
            if event.name == "stdout":
                out += event.text
            else:
                err += event.text
        elif isinstance(event, ExecuteResult):
            result = event.data["text/plain"]
        elif isinstance(event, ErrorOutput):
            result = event
    return out, err, result


@pytest.fixture(params=sorted(COMMANDS))
def language(request: pytest.FixtureRequest) -> str:
    return request.param


def test_dropped_streams_lose_no_output_of_a_running_cell(language: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, Any, FlakySession]:
        session = FlakySession(language, tmp_path)
        await session.start()
        try:
            cell = asyncio.ensure_future(run(session, COUNT[language](400, True)))
            for _ in range(3):
                await asyncio.sleep(0.25)
                session.container.drop()
                await asyncio.sleep(0.6)  # re-attached by now
            out, err, result = await cell
            return out, err, result, session
        finally:
            await session.close()

    out, err, result, session = asyncio.run(scenario())
    assert out == numbers(400).decode()
    assert err == "" and not isinstance(result, ErrorOutput)
    assert session.container.dropped_bytes > 0  # the test did cut output off
    assert session.channel is not None
    assert (session.channel.reattached, session.channel.lost_output) == (3, 0)


def test_a_request_swallowed_by_a_dying_stream_is_sent_again(language: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, Any, FlakySession]:
        session = FlakySession(language, tmp_path)
        await session.start()
        try:
            await run(session, COUNT[language](1, False))
            session.container.drop(swallow_writes=True)  # the next write vanishes, then the stream ends
            out, err, result = await asyncio.wait_for(run(session, COUNT[language](3, False)), 30)
            return out, err, result, session
        finally:
            await session.close()

    out, err, result, session = asyncio.run(scenario())
    assert out == numbers(3).decode() and err == ""
    assert session.channel is not None and session.channel.resent == 1


def test_output_beyond_the_replay_buffer_is_reported_lost_and_the_session_goes_on(
    language: str, tmp_path: Path
) -> None:
    async def scenario() -> tuple[tuple[str, str, Any], tuple[str, str, Any], FlakySession]:
        session = FlakySession(language, tmp_path, replay_bytes=64)
        await session.start()
        try:
            await run(session, COUNT[language](1, False))  # the worker is ready (IPython mode starts it first)
            cell = asyncio.ensure_future(run(session, COUNT[language](1000, True)))
            await asyncio.sleep(0.3)
            session.container.drop()
            first = await cell
            second = await run(session, COUNT[language](3, False))
            return first, second, session
        finally:
            await session.close()

    (out, err, _), second, session = asyncio.run(scenario())
    assert session.channel is not None and session.channel.lost_output > 0
    assert f"{session.channel.lost_output:,} bytes of output were lost" in err
    assert out.startswith("0\n") and out.endswith("999\n") and len(out) < len(numbers(1000))
    assert second[0] == numbers(3).decode()
