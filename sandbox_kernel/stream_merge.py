"""Consecutive writes to one stream of a cell, published as one ``stream`` message.

A ``print("a", "b")`` in a sandbox reaches the kernel as several writes (``"a"``, then
``" b\\n"``), and the session publishes the first at once so a lone line is not delayed. A
frontend that does not merge streams itself (nbclient, hence nbconvert and papermill) would
save each as an output of its own. Like ipykernel's ``OutStream`` (which flushes every 0.2 s),
the kernel holds a stream's text for a short window and sends it with whatever follows on the
same stream; it sends it at once when anything else comes (another stream, a display, the
error, the cell's end), so the order of outputs never changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncGenerator, AsyncIterator

from .session import Event, Stream

WINDOW = 0.05  # seconds a stream's text may wait for more of the same stream
MAX_HELD = 1 << 20  # characters held at most before they go out anyway


async def merged_streams(events: AsyncIterator[Event], window: float = WINDOW) -> AsyncGenerator[Event, None]:
    """``events`` with runs of one stream's text joined, each run sent within ``window`` s of
    its first text."""
    loop = asyncio.get_running_loop()
    held: Stream | None = None
    held_since = 0.0
    upcoming: asyncio.Future[Event] | None = None
    try:
        while True:
            if upcoming is None:
                upcoming = asyncio.ensure_future(events.__anext__())
            if held is not None:
                # Wait for the next event only as long as the held text may still wait.
                done, _ = await asyncio.wait({upcoming}, timeout=max(0.0, held_since + window - loop.time()))
                if not done:
                    event_out, held = held, None
                    yield event_out
                    continue
            try:
                event = await upcoming
            except StopAsyncIteration:
                break
            finally:
                if upcoming.done():
                    upcoming = None
            if isinstance(event, Stream) and held is not None and event.name == held.name and len(held.text) < MAX_HELD:
                held = Stream(held.name, held.text + event.text)
                continue
            if held is not None:
                event_out, held = held, None
                yield event_out
            if isinstance(event, Stream):
                held, held_since = event, loop.time()
            else:
                yield event
        if held is not None:
            yield held
    finally:
        if upcoming is not None and not upcoming.done():
            # Only when our consumer stops early: the session's generator ends with its cell.
            upcoming.cancel()
            with contextlib.suppress(BaseException):
                await upcoming
