"""The attach reader stops reading when the session falls behind (issue 11, "a bounded kernel").

Seam: :class:`~sandbox_kernel.kubernetes.api.AttachStream`, here an endless fake one. Without a
bound the reader thread queued whatever the API server relayed, and a between-cell flood grew the
kernel process by the size of the flood (80 MiB seen); with it the stream is left to hold the rest
(backpressure to the agent's stdout pipe), as a local sandbox's pipe does. And one read of the
stream itself takes a bounded share off the websocket: the client's own ``update()`` did not.
"""

from __future__ import annotations

import asyncio
import socket
import time

from websocket import ABNF

from sandbox_kernel.kubernetes.api import READ_BYTES, AttachStream, KubernetesApi
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


class Frame:
    def __init__(self, data: bytes) -> None:
        self.data = data


class FloodingSocket:
    """websocket-client's ``WebSocket`` as the API server relays a flood: a frame is always waiting
    (the socket underneath is a socketpair end with a byte unread), until ``frames`` run out and a
    close frame comes."""

    def __init__(self, frames: int) -> None:
        self.sock, self._peer = socket.socketpair()
        self._peer.send(b"!")
        self.connected = True
        self.frames = frames
        self.read = 0

    def recv_data_frame(self, control_frame: bool) -> tuple[int, Frame]:
        if self.read >= self.frames:
            return ABNF.OPCODE_CLOSE, Frame(b"")
        self.read += 1
        return ABNF.OPCODE_BINARY, Frame(bytes([1 + self.read % 2]) + b"x" * CHUNK)  # stdout, stderr in turn


class FakeWSClient:
    def __init__(self, sock: FloodingSocket) -> None:
        self.sock = sock
        self._connected = True

    def is_open(self) -> bool:
        return self._connected


def test_one_read_takes_a_bounded_share_of_a_flood_off_the_socket() -> None:
    """``WSClient.update()`` would keep reading while frames keep coming: a flood relayed by the
    API server was gathered whole in the kernel process before the reader's bound applied."""
    sock = FloodingSocket(frames=10 * READ_BYTES // CHUNK)
    stream = AttachStream(KubernetesApi.__new__(KubernetesApi), FakeWSClient(sock))
    got = stream.read(0.1)
    assert got is not None
    out, err = got
    assert READ_BYTES <= len(out) + len(err) < READ_BYTES + CHUNK, (len(out), len(err))
    assert sock.read == (READ_BYTES + CHUNK - 1) // CHUNK  # and no frame more was taken off the socket
    assert out == b"x" * len(out) and err == b"x" * len(err) and len(out) == len(err)
    total = len(out) + len(err)
    while (got := stream.read(0.1)) is not None:  # every byte arrives, then the close ends the stream
        total += len(got[0]) + len(got[1])
    assert total == sock.frames * CHUNK
