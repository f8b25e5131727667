"""The output limits: what of a sandbox's output the kernel keeps, and how it is told.

Everything a sandbox sends is untrusted and may be a flood. The session's reader passes each
frame through :class:`OutputGate` (bytes per cell, messages per second, what is kept between
cells) before anything is queued in the :class:`Inbox`; :class:`CellOutput` decodes a cell's
streams; the functions at the end word the notices a cell ends with. Pure, apart from the
asyncio event the inbox waits on: the clock is passed in.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import time
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError
from .session import ErrorOutput, Event, Stream


@dataclass
class Chunk:
    """Bytes of one output stream waiting in the inbox; later bytes of the same stream join it."""

    stream: str
    data: bytearray


class Inbox:
    """What the reader admitted, in order, until the session takes it (an asyncio.Queue, except
    that consecutive output of one stream is joined while it waits, so a flood of tiny frames
    costs its bytes rather than an object per frame, and the next item can be looked at)."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def put_output(self, stream: str, data: bytes, join_limit: int) -> None:
        last = self._items[-1] if self._items else None
        if isinstance(last, Chunk) and last.stream == stream and len(last.data) < join_limit:
            last.data += data
        else:
            self.put(Chunk(stream, bytearray(data)))

    def peek(self) -> Any:
        return self._items[0] if self._items else None

    def get_nowait(self) -> Any:
        return self._items.popleft()

    async def get(self, timeout: float | None = None) -> Any:
        """The next item; ``None`` if none came within ``timeout`` seconds."""
        if not self._items:
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
            else:
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        return self._items.popleft() if self._items else None


@dataclass
class Tally:
    """What the output limits let through and dropped during one cell, or between two cells."""

    kept_bytes: int = 0
    kept_messages: int = 0
    dropped_bytes: int = 0
    dropped_messages: int = 0
    malformed: int = 0
    problem: str | None = None  # what was wrong with the first malformed message
    error_seen: bool = False
    result_seen: bool = False


class OutputGate:
    """The kernel's output limits, applied by the reader before anything is queued.

    - **Bytes per cell** (``limit``, ``Sandbox.output_limit``): stream bytes and the payloads of
      output messages (``display``, ``update_display``, ``result``) together. Stream output over
      it is cut at the limit; a message that does not fit is dropped whole.
    - **Messages per second** (``rate``, ``Sandbox.output_rate``): output messages over it are
      dropped (a token bucket holding one second's worth). Streams are not counted: the session
      joins them into at most one message per ``output_interval`` anyway.
    - **Between cells** the same byte limit holds for everything kept for the next cell, and at
      most ``rate`` messages are kept.
    - **Comm messages** (widgets) count like output messages while a cell or a comm request of
      the frontend runs (:meth:`start_request`). Between them, comm messages are published at
      once, not kept: the rate holds, and at most ``limit`` bytes of them pass until the next
      cell or request starts (:meth:`comm`).

    Nothing over a limit is kept, so what the kernel holds stays within one cell's limit for the
    running cell plus one for the output kept from between cells. Pure: the clock is passed in.
    """

    def __init__(self, limit: int, rate: int, clock: Any = time.monotonic) -> None:
        self.limit = limit
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._stamp = clock()
        self.tally = Tally()
        self.idle = True
        self.idle_comm_bytes = 0  # comm bytes published since the last cell or request started

    def start_cell(self) -> Tally:
        """A cell starts: return the tally of the time between cells that just ended."""
        ended, self.tally, self.idle = self.tally, Tally(), False
        self.idle_comm_bytes = 0
        return ended

    def start_request(self) -> Tally:
        """A comm request of the frontend starts between cells: it gets a tally of its own (like a
        cell); the between-cells tally it returns goes on after :meth:`end_request`."""
        saved, self.tally, self.idle = self.tally, Tally(), False
        self.idle_comm_bytes = 0
        return saved

    def end_request(self, saved: Tally) -> None:
        self.tally, self.idle = saved, True

    def comm(self, size: int) -> bool:
        """Whether to publish a comm message of ``size`` payload bytes."""
        if not self.idle:
            return self.message(size)
        keep = (not self.limit or self.idle_comm_bytes + size <= self.limit) and self._token()
        if keep:
            self.idle_comm_bytes += size
        else:
            self.drop(size)
        return keep

    def end_cell(self) -> None:
        self.tally, self.idle = Tally(), True

    def stream(self, size: int) -> int:
        """How many of ``size`` bytes of stream output to keep (a prefix)."""
        tally = self.tally
        keep = size if not self.limit else max(0, min(size, self.limit - tally.kept_bytes))
        tally.kept_bytes += keep
        tally.dropped_bytes += size - keep
        return keep

    def message(self, size: int) -> bool:
        """Whether to keep an output message whose payload is ``size`` bytes."""
        tally = self.tally
        keep = (
            (not self.limit or tally.kept_bytes + size <= self.limit)
            and not (self.idle and self.rate and tally.kept_messages >= self.rate)
            and self._token()
        )
        if keep:
            tally.kept_bytes += size
            tally.kept_messages += 1
        else:
            self.drop(size)
        return keep

    def drop(self, size: int) -> None:
        """An output message is dropped for another reason (it belongs to no running cell)."""
        self.tally.dropped_bytes += size
        self.tally.dropped_messages += 1

    def malformed(self, problem: str) -> None:
        self.tally.malformed += 1
        if self.tally.problem is None:
            self.tally.problem = problem

    def _token(self) -> bool:
        if not self.rate:
            return True
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def cell_summary(tally: Tally, truncated: int, limit: int, rate: int) -> list[Event]:
    """The end of a cell: one notice for all output dropped (``truncated``: the bytes the agent
    itself held back; ``limit`` and ``rate``: the gate's limits, named in the notice), one error
    for malformed messages."""
    events: list[Event] = []
    dropped = tally.dropped_bytes + truncated  # the agent's count: bytes it never sent
    if dropped or tally.dropped_messages:
        what = f"{dropped} more bytes"
        if tally.dropped_messages:
            what += f" (in all, {tally.dropped_messages} output messages)"
        rate = rate if tally.dropped_messages else 0
        if not rate:
            why = f"limit {limit} bytes per cell; see Sandbox.output_limit"
        elif not limit:
            why = f"limit {rate} messages per second; see Sandbox.output_rate"
        else:
            why = (
                f"limits: {limit} bytes per cell, Sandbox.output_limit; {rate} messages per second, Sandbox.output_rate"
            )
        events.append(Stream("stderr", f"\n[sandbox] output truncated: {what} were dropped ({why})\n"))
    if tally.malformed:
        events.append(ErrorOutput.from_exception(ProtocolError(malformed_sentence(tally))))
    return events


def problem_sentence(problem: str) -> str:
    return f"The sandbox sent a {problem[0].lower()}{problem[1:]}" if problem.startswith("malformed") else problem


def malformed_sentence(tally: Tally) -> str:
    first = tally.problem or "malformed message"
    if tally.malformed == 1:
        return f"The sandbox sent a {first}; it was dropped."
    return f"The sandbox sent {tally.malformed} malformed messages, which were dropped; the first: {first}."


def between_cells_notice(tally: Tally, limit: int) -> str | None:
    """One notice for what was dropped while no cell ran (told at the start of the next cell)."""
    parts = []
    if tally.dropped_bytes or tally.dropped_messages:
        what = f"{tally.dropped_bytes} bytes of output"
        if tally.dropped_messages:
            what += f" ({tally.dropped_messages} display messages, which only a running cell can show)"
        keep = f"at most {limit} bytes are kept for the next cell (Sandbox.output_limit)" if limit else ""
        parts.append(f"{what} produced between cells were dropped" + (f"; {keep}" if keep else ""))
    if tally.malformed:
        parts.append(malformed_sentence(tally).rstrip("."))
    if not parts:
        return None
    return "[sandbox] " + ". ".join(parts) + ".\n"


class CellOutput:
    """One cell's stdout/stderr on its way to the frontend: UTF-8 decoding (the reader has
    already applied the output limit)."""

    def __init__(self) -> None:
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }

    def events(self, frames: list[Chunk]) -> list[Stream]:
        """Streams for ``frames``: consecutive frames of one stream joined, order kept."""
        runs: list[tuple[str, list[bytes | bytearray]]] = []
        for frame in frames:
            if runs and runs[-1][0] == frame.stream:
                runs[-1][1].append(frame.data)
            else:
                runs.append((frame.stream, [frame.data]))
        events = []
        for name, parts in runs:
            text = self.decoders[name].decode(b"".join(parts))
            if text:
                events.append(Stream(name, text))
        return events

    def finish(self) -> list[Stream]:
        """What the decoders still hold (an incomplete UTF-8 sequence at the very end)."""
        events = []
        for name, decoder in self.decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                events.append(Stream(name, tail))
        return events
