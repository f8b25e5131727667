"""The agent's byte stream on Kubernetes: an attach websocket that survives being dropped.

An attach stream carries only what the container writes while it is open. When the websocket
drops (an API server restart, a network blip) the reader thread attaches again and sends the
agent ``resume``; the agent answers with a marker line and repeats every byte the kernel has not
received, and reports how many requests it got, so lost ones are sent again. The session above
sees one unbroken stream. See ``agents/PROTOCOL.md``, "Resuming after a dropped stream".

Drops and re-attaches are logged at INFO only: what the user must know (output lost, the sandbox
gone) reaches the cell, and the kernel's stderr is the terminal of ``jupyter console``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from typing import Callable

from ..errors import ProtocolError, SandboxError
from ..protocol import ResumeScanner, SentFrames, encode_message
from ..session import AgentChannel, StreamGap
from .api import AttachStream

log = logging.getLogger("sandbox_kernel")

RESUME_TIMEOUT = 10.0
"""Seconds to wait for the agent's answer to ``resume`` before giving the stream up."""

QUEUED_BYTES = 2 << 20
"""Bytes read from the stream but not yet taken by the session, past which the reader thread
stops reading: the websocket, the API server and at last the agent's stdout pipe then hold the
rest, as a local sandbox's pipe does. Without it a flood is read as fast as the API server relays
it and queued in the kernel process faster than the session can count and drop it."""


class AttachChannel(AgentChannel):
    """The agent's stdin/stdout over an attach stream, read by a thread into an asyncio queue.

    ``reattach`` is called (in the reader thread) when the stream ends; it returns a new stream
    if the container still runs, or None. Counters for the kernel's reports and tests:
    :attr:`reattached` (streams re-opened), :attr:`lost_output` (bytes the agent no longer
    had), :attr:`resent` (requests sent again).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stream: AttachStream, reattach: Callable[[], AttachStream | None]
    ) -> None:
        self._loop = loop
        self._stream = stream
        self._reattach = reattach
        self._queue: asyncio.Queue[bytes | StreamGap] = asyncio.Queue()
        self._queued = 0  # bytes delivered to the queue and not yet read (guarded by _room)
        self._room = threading.Condition()
        self._closed = False
        self._received = 0  # the agent's output offset: bytes delivered in order
        self._sent = SentFrames()
        self._send_lock = threading.Lock()  # one writer at a time; guards _stream swaps and _sent
        self.reattached = 0
        self.lost_output = 0
        self.resent = 0
        self._thread = threading.Thread(target=self._pump, name="sandbox-attach", daemon=True)
        self._thread.start()

    # -- the reader thread --------------------------------------------------------------------

    def _deliver(self, data: bytes | StreamGap) -> None:
        if isinstance(data, bytes) and data:
            with self._room:
                while self._queued >= QUEUED_BYTES and not self._closed:
                    self._room.wait(0.5)
                self._queued += len(data)
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
        except RuntimeError:  # the event loop is closed: the kernel is exiting
            self._closed = True

    def _pump(self) -> None:
        try:
            self._read_until_lost()
        except Exception:  # noqa: BLE001 - whatever broke, the session must hear the stream ended
            log.exception("the attach reader failed")
        self._deliver(b"")

    def _read_until_lost(self) -> None:
        quiet_reattaches = 0
        scanner: ResumeScanner | None = None  # set while waiting for the agent's resume line
        resume_index = 0
        resume_deadline = 0.0
        while not self._closed:
            try:
                got = self._stream.read(0.5)
            except SandboxError as exc:
                if self._closed:
                    return
                log.info("attach stream broke: %s", exc)
                got = None
            if got is not None and scanner is not None and time.monotonic() > resume_deadline:
                log.error("the sandbox agent did not answer resume within %g s", RESUME_TIMEOUT)
                return
            if got is None:
                if self._closed or quiet_reattaches >= 3:
                    return
                reopened = self._reopen()
                if reopened is None:
                    return
                scanner, resume_index = reopened
                resume_deadline = time.monotonic() + RESUME_TIMEOUT
                quiet_reattaches += 1
                continue
            out, err = got
            if err:
                log.info("sandbox agent: %s", err.decode("utf-8", "replace").rstrip())
            if not out:
                continue
            quiet_reattaches = 0
            if scanner is not None:
                try:
                    found = scanner.feed(out)
                except ProtocolError as exc:
                    log.error("after re-attaching: %s", exc)
                    return
                if found is None:
                    continue
                point, out = found
                scanner = None
                self._resumed(point.start, point.received, resume_index)
                if not out:
                    continue
            self._received += len(out)
            self._deliver(out)

    def _reopen(self) -> tuple[ResumeScanner, int] | None:
        """Attach again and ask the agent to resume; return what to wait for, or None if the pod is gone."""
        while not self._closed:
            stream = self._reattach()
            if stream is None or self._closed:
                return None
            token = secrets.token_hex(16)
            try:
                with self._send_lock:
                    # The resume goes first on the new stream, so requests the old one swallowed
                    # are exactly those sent just before it.
                    stream.write(encode_message({"type": "resume", "token": token, "offset": self._received}))
                    resume_index = self._sent.record_resume()
                    old, self._stream = self._stream, stream
            except SandboxError as exc:
                log.info("the new attach stream broke at once: %s", exc)
                stream.close()
                continue
            old.close()
            self.reattached += 1
            log.info("re-attached to the sandbox pod; asking the agent to resume at byte %d", self._received)
            return ResumeScanner(token), resume_index
        return None

    def _resumed(self, start: int, received: int, resume_index: int) -> None:
        if start > self._received:
            lost = start - self._received
            log.info("%d bytes of the agent's output were lost while detached", lost)
            self.lost_output += lost
            self._received = start
            self._deliver(StreamGap(lost))
        elif start < self._received:
            log.info("the agent resumed at byte %d, before %d; skipping the repeat", start, self._received)
        with self._send_lock:
            lost_requests, forgotten = self._sent.lost_before(resume_index, received)
            if forgotten:
                log.error("%d requests sent before the stream broke are lost and no longer kept", forgotten)
            for frame in lost_requests:
                try:
                    self._stream.write(frame)
                except SandboxError as exc:  # the stream broke again: the next resume covers it
                    log.warning("sending a lost request again failed: %s", exc)
                self._sent.record(frame)
                self.resent += 1
        if lost_requests:
            log.warning("sent %d requests again that the broken stream had swallowed", len(lost_requests))

    # -- the kernel's side ----------------------------------------------------------------------

    async def read(self) -> bytes | StreamGap:
        data = await self._queue.get()
        if data == b"":
            self._queue.put_nowait(b"")  # end of stream stays visible
        elif isinstance(data, bytes):
            with self._room:
                self._queued -= len(data)
                self._room.notify()
        return data

    async def write(self, data: bytes) -> None:
        """Send one frame (a whole ``msg`` frame: frames are counted, see :class:`SentFrames`)."""
        stream = self._stream
        try:
            await self._write_frame(data)
        except SandboxError:
            # The reader may be attaching again: give it a moment, then retry once on the new stream.
            for _ in range(100):
                if self._stream is not stream or self._closed:
                    break
                await asyncio.sleep(0.1)
            if self._stream is stream or self._closed:
                raise
            await self._write_frame(data)

    async def _write_frame(self, data: bytes) -> None:
        if len(data) <= 1 << 16:
            self._write_locked(data)  # small: the socket buffer takes it at once
        else:
            await self._loop.run_in_executor(None, self._write_locked, data)

    def _write_locked(self, data: bytes) -> None:
        with self._send_lock:
            self._stream.write(data)
            self._sent.record(data)

    def open_gate(self, line: bytes) -> None:
        """Write the container's gate line (not a frame, not counted): the agent starts after it."""
        with self._send_lock:
            self._stream.write(line)

    async def close(self) -> None:
        self._closed = True
        self._stream.close()
