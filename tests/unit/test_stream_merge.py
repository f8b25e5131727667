"""merged_streams: one cell's consecutive writes to a stream become one message, in order."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncGenerator

from sandbox_kernel.session import DisplayData, ErrorOutput, Event, Stream
from sandbox_kernel.stream_merge import merged_streams


async def scripted(steps: list[Event | float]) -> AsyncGenerator[Event, None]:
    """Yield the events; a number is a pause of that many seconds."""
    for step in steps:
        if isinstance(step, float):
            await asyncio.sleep(step)
        else:
            yield step


def merged(steps: list[Event | float], window: float = 0.05) -> list[tuple[float, Event]]:
    async def main() -> list[tuple[float, Event]]:
        began = time.monotonic()
        return [(time.monotonic() - began, event) async for event in merged_streams(scripted(steps), window)]

    return asyncio.run(main())


def test_one_print_in_pieces_is_one_message() -> None:
    out = merged([Stream("stdout", "a"), Stream("stdout", " b"), Stream("stdout", " c\n")])
    assert [event for _, event in out] == [Stream("stdout", "a b c\n")]


def test_order_is_kept_across_streams_and_other_outputs() -> None:
    display = DisplayData({"text/plain": "d"}, {})
    error = ErrorOutput("E", "v", ["E: v"])
    steps: list[Event | float] = [
        Stream("stdout", "1"),
        Stream("stdout", "2"),
        Stream("stderr", "e"),
        Stream("stdout", "3"),
        display,
        Stream("stdout", "4"),
        error,
    ]
    out = [event for _, event in merged(steps)]
    assert out == [
        Stream("stdout", "12"),
        Stream("stderr", "e"),
        Stream("stdout", "3"),
        display,
        Stream("stdout", "4"),
        error,
    ]


def test_held_text_goes_out_within_the_window_when_nothing_follows() -> None:
    out = merged([Stream("stdout", "first\n"), 0.5, Stream("stdout", "later\n")], window=0.05)
    assert [event for _, event in out] == [Stream("stdout", "first\n"), Stream("stdout", "later\n")]
    assert out[0][0] < 0.3, out  # not held until the next write, half a second later


def test_text_at_the_end_of_the_cell_is_sent() -> None:
    assert [event for _, event in merged([Stream("stderr", "x")])] == [Stream("stderr", "x")]
    assert merged([]) == []


def test_stopping_early_closes_the_pending_read() -> None:
    finished: list[bool] = []

    async def slow() -> AsyncGenerator[Event, None]:
        try:
            yield Stream("stdout", "a")
            await asyncio.sleep(10)
            yield Stream("stdout", "never")
        finally:
            finished.append(True)

    async def main() -> list[Event]:
        got = []
        source = slow()
        stream = merged_streams(source, 0.01)
        async for event in stream:
            got.append(event)
            break
        await stream.aclose()
        await source.aclose()
        return got

    began = time.monotonic()
    assert asyncio.run(main()) == [Stream("stdout", "a")]
    assert finished == [True] and time.monotonic() - began < 2
