"""The agent's byte stream on Kubernetes: an attach websocket that survives being dropped.

See ``agents/PROTOCOL.md`` ("Resuming") for what both ends do after a re-attach.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Callable

from ..errors import SandboxError
from ..session import AgentChannel
from .api import AttachStream

log = logging.getLogger("sandbox_kernel")


class AttachChannel(AgentChannel):
    """The agent's stdin/stdout over an attach stream, read by a thread into an asyncio queue.

    If the websocket drops while the container still runs (an API server restart, a network
    blip), the thread attaches again. Attach does not replay output: bytes the agent wrote
    while no stream was open are lost; if that gap falls inside a frame the kernel sees a
    malformed frame and replaces the sandbox (reported to the user).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: AttachStream, reattach: Callable[[], AttachStream | None]) -> None:
        self._loop = loop
        self._stream = stream
        self._reattach = reattach
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._closed = False
        self.reattached = 0
        self.diagnostics: collections.deque[str] = collections.deque(maxlen=50)
        self._thread = threading.Thread(target=self._pump, name="sandbox-attach", daemon=True)
        self._thread.start()

    def _deliver(self, data: bytes) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
        except RuntimeError:  # the event loop is closed: the kernel is exiting
            self._closed = True

    def _pump(self) -> None:
        quiet_reattaches = 0
        while not self._closed:
            try:
                got = self._stream.read(0.5)
            except SandboxError as exc:
                if self._closed:
                    break
                log.warning("attach stream broke: %s", exc)
                got = None
            if got is None:
                if self._closed or quiet_reattaches >= 3:
                    break
                stream = self._reattach()
                if stream is None or self._closed:
                    break
                old, self._stream = self._stream, stream
                old.close()
                self.reattached += 1
                quiet_reattaches += 1
                log.warning("re-attached to the sandbox pod; output written while detached is lost")
                continue
            out, err = got
            if out or err:
                quiet_reattaches = 0
            if err:
                text = err.decode("utf-8", "replace").rstrip()
                self.diagnostics.extend(text.splitlines())
                log.info("sandbox agent: %s", text)
            if out:
                self._deliver(out)
        self._deliver(b"")

    async def read(self) -> bytes:
        data = await self._queue.get()
        if not data:
            self._queue.put_nowait(b"")  # end of stream stays visible
        return data

    async def write(self, data: bytes) -> None:
        stream = self._stream
        try:
            await self._send(stream, data)
        except SandboxError:
            # The reader may be attaching again: give it a moment, then retry once on the new stream.
            for _ in range(100):
                if self._stream is not stream or self._closed:
                    break
                await asyncio.sleep(0.1)
            if self._stream is stream or self._closed:
                raise
            await self._send(self._stream, data)

    async def _send(self, stream: AttachStream, data: bytes) -> None:
        if len(data) <= 1 << 16:
            stream.write(data)  # small: the socket buffer takes it at once
        else:
            await self._loop.run_in_executor(None, stream.write, data)

    async def close(self) -> None:
        self._closed = True
        self._stream.close()
