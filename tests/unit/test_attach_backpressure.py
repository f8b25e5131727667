"""The attach reader stops reading when the session falls behind (issue 11, "a bounded kernel").

Seam: :class:`~sandbox_kernel.kubernetes.api.AttachStream`, here an endless fake one. Without a
bound the reader thread queued whatever the API server relayed, and a between-cell flood grew the
kernel process by the size of the flood (80 MiB seen); with it the stream is left to hold the rest
(backpressure to the agent's stdout pipe), as a local sandbox's pipe does.
"""

from __future__ import annotations

import asyncio
import time

from sandbox_kernel.kubernetes.attach import QUEUED_BYTES, AttachChannel

CHUNK = 64 << 10


class EndlessStream:
    """Hands out a chunk on every read, as a flooding agent's attach stream does; counts them."""

    def __init__(self) -> None:
        self.handed = 0
        self.closed = False

    def read(self, timeout: float = 0.5) -> tuple[bytes, bytes] | None:
        if self.closed:
            return None
        self.handed += CHUNK
        return b"x" * CHUNK, b""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_the_reader_stops_reading_while_the_session_does_not_take_what_it_read() -> None:
    async def main() -> None:
        stream = EndlessStream()
        channel = AttachChannel(asyncio.get_running_loop(), stream, lambda: None)  # type: ignore[arg-type]
        await asyncio.sleep(0.5)  # the session reads nothing meanwhile
        stalled = stream.handed
        assert QUEUED_BYTES <= stalled <= QUEUED_BYTES + 2 * CHUNK, stalled
        await asyncio.sleep(0.3)
        assert stream.handed == stalled  # not one read more while nothing is taken
        taken = 0
        while taken < 4 * QUEUED_BYTES:  # taking lets it read on, and what it read arrives whole
            data = await asyncio.wait_for(channel.read(), 5)
            assert isinstance(data, bytes) and data == b"x" * CHUNK
            taken += len(data)
        assert stream.handed >= taken
        await channel.close()
        deadline = time.monotonic() + 3
        while channel._thread.is_alive() and time.monotonic() < deadline:  # a stalled reader still ends
            await asyncio.sleep(0.05)
        assert not channel._thread.is_alive()

    asyncio.run(main())
