"""The session seam: what the kernel asks of a sandbox, and the agent-driving half every backend shares.

:class:`SandboxSession` is the contract the kernel codes against; it knows nothing of Jupyter.
:class:`AgentSession` implements it for any backend that can give it a byte stream to an
in-sandbox agent (see ``agents/PROTOCOL.md``): it frames requests, decodes and checks replies
(``messages.py``), enforces the per-cell time and output limits, escalates an interrupt that is
not obeyed, and replaces a sandbox that died. A backend subclasses it and supplies only :meth:`AgentSession._spawn`,
:meth:`AgentSession._kill` and :meth:`AgentSession._lost_reason`.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncGenerator, Union

from .config import Limits
from .errors import CellTimeout, ProtocolError, SandboxError, SandboxLost, SandboxStartError
from .languages import Language
from .messages import OUTPUT, check, clean_text
from .protocol import FrameDecoder, Message, Output, encode_message

if TYPE_CHECKING:
    from .usage import CellUsage, Usage

log = logging.getLogger("sandbox_kernel")


# ---------------------------------------------------------------------------------------------
# What a cell produces, in the order it produces it.


@dataclass(frozen=True)
class Stream:
    """Text the cell wrote to ``stdout`` or ``stderr``."""

    name: str
    text: str


@dataclass(frozen=True)
class DisplayData:
    """A rich object the cell displayed with ``display()``."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecuteResult:
    """The value of the cell's last expression."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorOutput:
    """The cell failed; ``traceback`` lines are shown as they are."""

    ename: str
    evalue: str
    traceback: list[str]

    @classmethod
    def from_exception(cls, exc: SandboxError) -> "ErrorOutput":
        return cls(exc.ename, str(exc), [f"{exc.ename}: {exc}"])


Event = Union[Stream, DisplayData, ExecuteResult, ErrorOutput]


@dataclass(frozen=True)
class Completion:
    matches: list[str]
    cursor_start: int
    cursor_end: int


@dataclass(frozen=True)
class Inspection:
    found: bool
    data: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The contract.


class SandboxSession(abc.ABC):
    """One kernel's sandbox, from first cell to shutdown.

    The kernel creates one session per kernel process, calls :meth:`start` once, then any number
    of :meth:`execute`, :meth:`complete`, :meth:`inspect` and :meth:`is_complete` calls (never two
    at once), :meth:`interrupt` at any moment, and finally :meth:`close`. A sandbox that dies is
    replaced by the session itself; the kernel only relays what happened.
    """

    backend: str = "abstract"

    def __init__(self, language: Language, limits: Limits) -> None:
        self.language = language
        self.limits = limits
        self.timeout = limits.timeout

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the sandbox and wait until its agent is ready.

        Called once, when the kernel starts, before any other method. Raises a
        :class:`~sandbox_kernel.errors.SandboxError` (never anything else) when the sandbox cannot
        be had; the message says why and what to do.
        """

    @property
    @abc.abstractmethod
    def language_info(self) -> dict[str, Any]:
        """The runtime's real language_info (name, version, mimetype, …), known after :meth:`start`."""

    @abc.abstractmethod
    def execute(self, code: str) -> AsyncGenerator[Event, None]:
        """Run one cell; yield its outputs as they are produced.

        Called for every execute request. The iterator ends when the cell has finished; a failed,
        interrupted or timed-out cell ends with an :class:`ErrorOutput`. The per-cell time limit
        is :attr:`timeout` (seconds, 0 = none), which the kernel may change between cells.
        """

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Stop the running cell, if any. Called when the user presses stop or Ctrl-C.

        Returns at once; the running :meth:`execute` ends with an interrupted error, within
        ``interrupt_grace`` seconds even if the sandbox has to be replaced to achieve it.
        """

    @abc.abstractmethod
    async def complete(self, code: str, cursor_pos: int) -> Completion:
        """Completions at ``cursor_pos`` (code points). Called on Tab."""

    @abc.abstractmethod
    async def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> Inspection:
        """Help for the name at ``cursor_pos``. Called on Shift-Tab."""

    @abc.abstractmethod
    async def is_complete(self, code: str) -> tuple[str, str]:
        """``(status, indent)``: whether ``code`` is ready to run. Called by consoles on Enter."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Destroy the sandbox and everything it created. Called at kernel shutdown and restart.

        Safe to call more than once, and after a failed :meth:`start`.
        """

    @abc.abstractmethod
    def report(self, topic: str) -> str:
        """Plain text for ``%sandbox TOPIC`` (status, quota, policy, events, manifests)."""

    async def usage(self) -> "Usage | None":
        """The sandbox's memory and CPU now, with its limits (:class:`~sandbox_kernel.usage.Usage`).

        Called for every ``usage_request`` (JupyterLab's resource-usage panel polls every 5 s
        while it is open, also while a cell runs) and by ``%sandbox usage``; runs on the shell
        event loop. Must be cheap, answer within a second and never raise; ``None`` when there
        is no sandbox to ask (the default: the kernel then reports no figures).
        """
        return None

    def cell_usage_start(self) -> None:
        """A cell is about to run: take the readings :meth:`cell_usage_end` compares against
        (and reset per-cell peaks). Called on the shell loop before every :meth:`execute` that
        runs code; synchronous and cheap (the kernel's per-cell budget for accounting is 0.2 ms)."""

    def cell_usage_end(self, wall: float) -> "CellUsage":
        """The cell that just ended: ``wall`` seconds plus whatever the backend measured since
        :meth:`cell_usage_start` (CPU seconds, peak memory); missing figures carry a reason."""
        from .usage import CellUsage

        return CellUsage(wall, reason=f"CPU and memory per cell are not measured on the {self.backend} backend")

    def banner(self) -> str:
        return f"Sandbox ({self.language.display_name.split('(')[1].rstrip(')')}) on the {self.backend} backend; limits: {self.limits.summary()}"


# ---------------------------------------------------------------------------------------------
# The shared half: driving an agent over a byte stream.


@dataclass(frozen=True)
class StreamGap:
    """Returned by :meth:`AgentChannel.read`: ``lost`` bytes of the agent's output are gone for
    good, and the stream goes on at the start of a frame (see PROTOCOL.md, "Resuming")."""

    lost: int


class AgentChannel(abc.ABC):
    """A byte stream to a running agent, supplied by a backend."""

    @abc.abstractmethod
    async def read(self) -> bytes | StreamGap:
        """Next chunk from the agent's stdout; ``b""`` once the stream has ended."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes to the agent's stdin."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop using the stream (does not by itself stop the sandbox)."""


class _Ended(Exception):
    """The agent stream ended; carries the reason as a SandboxError."""

    def __init__(self, error: SandboxError) -> None:
        self.error = error


_ids = itertools.count(1)
_WAKE = object()  # put on the frame queue to make a waiting execute() re-check its deadlines


@dataclass
class _Chunk:
    """Bytes of one output stream waiting in the inbox; later bytes of the same stream join it."""

    stream: str
    data: bytearray


class _Inbox:
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
        if isinstance(last, _Chunk) and last.stream == stream and len(last.data) < join_limit:
            last.data += data
        else:
            self.put(_Chunk(stream, bytearray(data)))

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
class _Tally:
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

    Nothing over a limit is kept, so what the kernel holds stays within one cell's limit for the
    running cell plus one for the output kept from between cells. Pure: the clock is passed in.
    """

    def __init__(self, limit: int, rate: int, clock: Any = time.monotonic) -> None:
        self.limit = limit
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._stamp = clock()
        self.tally = _Tally()
        self.idle = True

    def start_cell(self) -> _Tally:
        """A cell starts: return the tally of the time between cells that just ended."""
        ended, self.tally, self.idle = self.tally, _Tally(), False
        return ended

    def end_cell(self) -> None:
        self.tally, self.idle = _Tally(), True

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


class AgentSession(SandboxSession):
    """A session whose sandbox runs one of our agents behind an :class:`AgentChannel`."""

    start_timeout: float = 60.0
    """Seconds to wait for the agent's ``ready`` frame."""

    output_interval: float = 0.02
    """Least seconds between two stream messages of one cell: output that arrives sooner is
    joined into the next message (the first output, and output after a pause, go out at once)."""

    output_batch: int = 1 << 20
    """Bytes of pending output that are published at once, whatever the interval."""

    def __init__(self, language: Language, limits: Limits) -> None:
        super().__init__(language, limits)
        self._channel: AgentChannel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._frames = _Inbox()  # of Message, _Chunk, _Ended and _WAKE
        self._gate = OutputGate(limits.output_bytes, limits.output_rate)
        self._cell_id: str | None = None  # the running cell's request id
        self._ask_id: str | None = None  # the complete/inspect/is_complete request awaiting its reply
        self._language_info: dict[str, Any] = {"name": language.name}
        self._running = False
        self._interrupt_requested_at: float | None = None
        self._notice: str | None = None  # told to the user at the start of the next cell
        self._closed = False
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped every time a sandbox is replaced
        self._usage_waiters: dict[str, asyncio.Future[Message]] = {}  # usage request id -> its reply
        self._launched_at = time.monotonic()

    # -- what a backend provides -------------------------------------------------------------

    @abc.abstractmethod
    async def _spawn(self) -> AgentChannel:
        """Create a sandbox running the agent and return the stream to it.

        Called by :meth:`start` and whenever a dead sandbox is replaced.
        """

    @abc.abstractmethod
    async def _kill(self) -> None:
        """Destroy the current sandbox at once (no grace). Called on replacement and close."""

    @abc.abstractmethod
    async def _lost_reason(self) -> SandboxError:
        """Why the agent's stream ended: called once after it ended unexpectedly.

        Backends look at what killed it (memory cgroup, pod status) and return e.g.
        :class:`~sandbox_kernel.errors.OutOfMemory`.
        """

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def language_info(self) -> dict[str, Any]:
        return self._language_info

    async def start(self) -> None:
        async with self._lock:
            await self._launch()

    async def _launch(self) -> None:
        self._frames = _Inbox()
        try:
            self._channel = await self._spawn()
        except SandboxError:
            raise
        except Exception as exc:  # a backend bug must still read as a sandbox error
            log.exception("sandbox start failed")
            raise SandboxStartError(f"The sandbox could not be started: {exc}") from exc
        self._generation += 1
        self._launched_at = time.monotonic()
        self._reader = asyncio.create_task(self._read_frames(self._channel, self._frames))
        try:
            ready = await asyncio.wait_for(self._next_message({"ready"}), self.start_timeout)
        except asyncio.TimeoutError:
            await self._discard()
            raise SandboxStartError(
                f"The sandbox did not become ready within {self.start_timeout:g} s."
            ) from None
        except _Ended as ended:
            await self._discard()
            raise SandboxStartError(f"The sandbox stopped while starting: {ended.error}") from None
        if ready.problem:
            log.warning("%s", ready.problem)
        info = ready.body.get("language_info")
        if isinstance(info, dict) and info:
            self._language_info = {"name": self.language.name, **info}

    async def _discard(self) -> None:
        """Forget the current sandbox and destroy it."""
        reader, channel = self._reader, self._channel
        self._reader = self._channel = None
        if reader:
            reader.cancel()
        if channel:
            try:
                await channel.close()
            except Exception:  # noqa: BLE001 - closing a dead stream may fail any way
                log.debug("closing channel failed", exc_info=True)
        try:
            await self._kill()
        except Exception:  # noqa: BLE001
            log.warning("destroying the sandbox failed", exc_info=True)

    async def _replace(self, reason: str) -> None:
        """Swap a dead or stuck sandbox for a fresh one; the next cell is told ``reason``."""
        await self._discard()
        if self._closed:
            return
        self._notice = reason
        try:
            await self._launch()
        except SandboxError as exc:
            self._notice = f"{reason}\nStarting a new sandbox failed too: {exc}"

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            try:
                await asyncio.wait_for(self._channel.write(encode_message({"type": "shutdown"})), 1)
            except Exception:  # noqa: BLE001 - the sandbox is going away regardless
                pass
        await self._discard()

    # -- reading ------------------------------------------------------------------------------

    async def _read_frames(self, channel: AgentChannel, queue: _Inbox) -> None:
        decoder = FrameDecoder()
        state = {"ready": False}
        try:
            while True:
                chunk = await channel.read()
                if isinstance(chunk, StreamGap):
                    decoder = FrameDecoder()  # a frame may have been cut: start afresh
                    notice = (
                        f"[sandbox] {chunk.lost:,} bytes of output were lost while the connection "
                        "to the sandbox was down.\n"
                    )
                    queue.put_output("stderr", notice.encode(), self.output_batch)
                    continue
                if not chunk:
                    break
                for frame in decoder.feed(chunk):
                    try:
                        self._admit(frame, queue, state)
                    except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the reader
                        log.exception("handling a frame from the agent failed")
                        self._gate.malformed(f"a message from the sandbox could not be handled ({type(exc).__name__})")
        except ProtocolError as exc:
            log.error("agent broke the protocol: %s", exc)
            queue.put(_Ended(ProtocolError(f"The sandbox sent malformed data ({exc}) and was restarted.")))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a dropped stream is a lost sandbox
            log.warning("agent stream failed", exc_info=True)
            queue.put(_Ended(SandboxLost(f"The connection to the sandbox failed: {exc}")))
            return
        if self._closed:
            return
        try:
            reason = await self._lost_reason()
        except Exception as exc:  # noqa: BLE001
            reason = SandboxLost(f"The sandbox stopped unexpectedly ({exc}).")
        queue.put(_Ended(reason))

    def _admit(self, frame: Message | Output, queue: _Inbox, state: dict[str, bool]) -> None:
        """Queue ``frame`` if it is needed and within the output limits; drop it otherwise.

        Control messages (``ready``, ``done``, ``error``, the replies) always get through when
        someone waits for them, and are dropped silently when no one does (a late reply, a
        ``done`` between cells). Output goes through :class:`OutputGate`.
        """
        gate = self._gate
        if isinstance(frame, Output):
            keep = gate.stream(len(frame.data))
            if keep:
                queue.put_output(frame.stream, frame.data[:keep], self.output_batch)
            return
        message = check(frame)
        kind, ident = message.type, message.body.get("id")
        if kind == "ready":
            if not state["ready"]:  # only the first one means anything
                state["ready"] = True
                queue.put(message)
            return
        if kind == "usage_reply":  # answered at once, also while a cell runs (see usage())
            waiter = self._usage_waiters.pop(ident, None) if ident is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            return
        if kind in ("complete_reply", "inspect_reply", "is_complete_reply"):
            if ident is not None and ident == self._ask_id:
                if message.problem:
                    log.warning("%s", message.problem)
                queue.put(message)
            return
        if kind not in OUTPUT and kind not in ("done", "error"):
            return  # a type nothing reads
        cell = self._cell_id
        if cell is None or ident not in (None, cell):
            # No cell is running, or a late frame of an earlier cell (a background thread).
            if kind in OUTPUT:
                gate.drop(message.size)
            return
        tally = gate.tally
        if kind == "done":
            queue.put(message)
            return
        if kind == "error" and not tally.error_seen:
            tally.error_seen = True  # the cell's own error always gets through; more are output
            queue.put(message)
            return
        if message.problem:
            gate.malformed(message.problem)
            return
        if kind == "result" and not tally.result_seen:
            tally.result_seen = True  # the cell's value always gets through (at most 1 MiB)
            queue.put(message)
            return
        if gate.message(message.size):
            queue.put(message)

    async def _next_message(self, types: set[str], request_id: str | None = None) -> Message:
        while True:
            frame = await self._frames.get()
            if isinstance(frame, _Ended):
                self._frames.put(frame)  # stays visible to whoever asks next
                raise frame
            if isinstance(frame, Message) and frame.type in types and (
                request_id is None or frame.body.get("id") == request_id
            ):
                return frame

    async def _send(self, body: dict[str, Any]) -> None:
        if self._channel is None:
            raise SandboxLost("The sandbox is not running.")
        await self._channel.write(encode_message(body))

    async def _ensure_running(self) -> None:
        if self._channel is None and not self._closed:
            async with self._lock:
                if self._channel is None:
                    await self._launch()

    # -- cells --------------------------------------------------------------------------------

    async def execute(self, code: str) -> AsyncGenerator[Event, None]:  # type: ignore[override]
        """Run one cell (see :meth:`SandboxSession.execute`). Never raises: whatever goes wrong
        while the sandbox's frames are handled ends the cell with an :class:`ErrorOutput`, so
        the kernel can always send the cell's ``execute_reply``."""
        cell = self._execute(code)
        try:
            async for event in cell:
                yield event
        except Exception as exc:  # noqa: BLE001 - turned into the cell's error below
            log.exception("running a cell failed")
            if isinstance(exc, SandboxError):
                error: SandboxError = exc
            elif isinstance(exc, OSError):
                error = SandboxLost(f"The connection to the sandbox failed ({exc}); a new sandbox was started.")
            else:
                error = ProtocolError(
                    f"The kernel could not handle what the sandbox sent ({type(exc).__name__}: {exc}); "
                    "a new sandbox was started."
                )
            try:
                # The agent's state is unknown now (it may still run the cell): start afresh.
                await self._replace(f"The previous sandbox was replaced after an error ({error.ename}).")
                self._notice = None
            except Exception:  # noqa: BLE001
                log.exception("replacing the sandbox failed")
            yield ErrorOutput(error.ename, clean_text(str(error)), [clean_text(f"{error.ename}: {error}")])
        finally:
            await cell.aclose()

    async def _execute(self, code: str) -> AsyncGenerator[Event, None]:
        if self._notice:
            yield Stream("stderr", f"[sandbox] {self._notice}\n")
            self._notice = None
        try:
            await self._ensure_running()
        except SandboxError as exc:
            yield ErrorOutput.from_exception(exc)
            return
        request_id = f"c{next(_ids)}"
        limit = self.limits.output_bytes
        timeout = self.timeout
        self._running = True
        self._cell_id = request_id
        between = self._gate.start_cell()
        tally = self._gate.tally
        self._interrupt_requested_at = None
        started = time.monotonic()
        timed_out = False
        output = _CellOutput()
        pending: list[_Chunk] = []  # output received but not yet published
        pending_bytes = 0
        last_flush = float("-inf")
        try:
            notice = _between_cells_notice(between, limit)
            if notice:
                yield Stream("stderr", notice)
            await self._send({"type": "execute", "id": request_id, "code": code, "output_limit": limit})
            while True:
                now = time.monotonic()
                wait = None
                if self._interrupt_requested_at is not None:
                    wait = self._interrupt_requested_at + self.limits.interrupt_grace - now
                elif timeout and not timed_out:
                    wait = started + timeout - now
                if wait is not None and wait <= 0:
                    if self._interrupt_requested_at is None:
                        # The time limit is up: ask the agent to stop, like the stop button does.
                        timed_out = True
                        await self._request_interrupt()
                        continue
                    # The agent ignored the interrupt (a tight loop it cannot break): replace it.
                    for event in output.events(pending):
                        yield event
                    pending = []
                    for summary in self._cell_summary(tally, 0, limit):
                        yield summary
                    lost = "the cell did not stop when interrupted, so the sandbox was replaced; variables from earlier cells are gone."
                    if timed_out:
                        yield ErrorOutput.from_exception(CellTimeout(timeout))
                    else:
                        yield ErrorOutput("KeyboardInterrupt", "Interrupted", [f"KeyboardInterrupt: {lost}"])
                    await self._replace(f"The previous sandbox was replaced: {lost}")
                    self._notice = None  # already told in this cell
                    return
                if pending:
                    # Publish pending output once the interval since the last message is over:
                    # a flood costs one message per interval, a lone line goes out at once.
                    due = last_flush + self.output_interval - now
                    if due <= 0 or pending_bytes >= self.output_batch:
                        for event in output.events(pending):
                            yield event
                        pending, pending_bytes = [], 0
                        last_flush = time.monotonic()
                        continue
                    wait = due if wait is None else min(wait, due)
                frame = await self._frames.get(wait)
                if frame is None or frame is _WAKE:
                    continue
                if isinstance(frame, _Chunk):
                    # Take everything already queued too.
                    pending.append(frame)
                    pending_bytes += len(frame.data)
                    while pending_bytes < self.output_batch and isinstance(self._frames.peek(), _Chunk):
                        more = self._frames.get_nowait()
                        pending.append(more)
                        pending_bytes += len(more.data)
                    continue
                # Anything else comes after the output before it.
                for event in output.events(pending):
                    yield event
                pending, pending_bytes = [], 0
                if isinstance(frame, _Ended):
                    for summary in self._cell_summary(tally, 0, limit):
                        yield summary
                    yield ErrorOutput.from_exception(frame.error)
                    await self._replace(f"A new sandbox was started after the last one was lost ({frame.error.ename}).")
                    self._notice = None
                    return
                if not isinstance(frame, Message):
                    continue
                body = frame.body  # checked by messages.check: every field has its type
                kind = frame.type
                if body.get("id") not in (None, request_id):
                    continue  # a late reply to an earlier request
                if kind == "display":
                    yield DisplayData(body["data"], body["metadata"])
                elif kind == "result":
                    yield ExecuteResult(body["data"], body["metadata"])
                elif kind == "error":
                    if timed_out:
                        yield ErrorOutput.from_exception(CellTimeout(timeout))
                    elif frame.problem:
                        yield ErrorOutput.from_exception(ProtocolError(_sentence(frame.problem)))
                    else:
                        yield ErrorOutput(body["ename"], body["evalue"], body["traceback"])
                elif kind == "done":
                    for event in output.finish():
                        yield event
                    for summary in self._cell_summary(tally, body["truncated"], limit):
                        yield summary
                    if frame.problem:
                        yield ErrorOutput.from_exception(ProtocolError(_sentence(frame.problem)))
                    elif timed_out and body["status"] == "ok":
                        yield ErrorOutput.from_exception(CellTimeout(timeout))
                    return
                # update_display: counted and checked, but there is no event for it yet.
        finally:
            self._running = False
            self._cell_id = None
            self._gate.end_cell()
            self._interrupt_requested_at = None

    def _cell_summary(self, tally: _Tally, truncated: int, limit: int) -> list[Event]:
        """The end of a cell: one notice for all output dropped, one error for malformed messages."""
        events: list[Event] = []
        dropped = tally.dropped_bytes + truncated  # the agent's count: bytes it never sent
        if dropped or tally.dropped_messages:
            what = f"{dropped} more bytes"
            if tally.dropped_messages:
                what += f" (in all, {tally.dropped_messages} output messages)"
            rate = self._gate.rate if tally.dropped_messages else 0
            if not rate:
                why = f"limit {limit} bytes per cell; see Sandbox.output_limit"
            elif not limit:
                why = f"limit {rate} messages per second; see Sandbox.output_rate"
            else:
                why = f"limits: {limit} bytes per cell, Sandbox.output_limit; {rate} messages per second, Sandbox.output_rate"
            events.append(Stream("stderr", f"\n[sandbox] output truncated: {what} were dropped ({why})\n"))
        if tally.malformed:
            events.append(ErrorOutput.from_exception(ProtocolError(_malformed_sentence(tally))))
        return events

    async def _request_interrupt(self) -> None:
        if self._interrupt_requested_at is None:
            self._interrupt_requested_at = time.monotonic()
            self._frames.put(_WAKE)
        try:
            await self._send({"type": "interrupt"})
        except Exception:  # noqa: BLE001 - the grace timer replaces the sandbox anyway
            log.debug("sending interrupt failed", exc_info=True)

    async def interrupt(self) -> None:
        if self._running:
            await self._request_interrupt()

    async def _ask(self, body: dict[str, Any], reply: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """Send a request and wait for its reply; ``None`` when the sandbox cannot answer."""
        if self._running:
            return None
        try:
            await self._ensure_running()
            request_id = f"q{next(_ids)}"
            self._ask_id = request_id
            await self._send({**body, "id": request_id})
            message = await asyncio.wait_for(self._next_message({reply}, request_id), timeout)
            return message.body
        except (asyncio.TimeoutError, SandboxError, _Ended):
            return None
        except Exception:  # noqa: BLE001 - a broken pipe, say: no answer
            log.warning("request to the sandbox failed", exc_info=True)
            return None
        finally:
            self._ask_id = None

    async def usage(self) -> "Usage | None":
        """The sandbox's cgroup as the agent reads it (``usage`` in PROTOCOL.md): the agent's
        supervisor answers at once, also while a cell runs. ``None`` without a running agent;
        a Usage with a reason when it did not answer within a second (an older agent)."""
        from .usage import Usage

        if self._channel is None or self._closed:
            return None
        request_id = f"u{next(_ids)}"
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._usage_waiters[request_id] = waiter
        try:
            await self._send({"type": "usage", "id": request_id})
            body = (await asyncio.wait_for(waiter, 1.0)).body
        except (asyncio.TimeoutError, SandboxError, OSError):
            return Usage(memory_limit=self.limits.memory_bytes, cpu_limit=self.limits.cpu_cores,
                         reason="the sandbox's agent did not report its usage")
        finally:
            self._usage_waiters.pop(request_id, None)
        limit = body.get("memory_limit")
        if not limit or limit > self.limits.memory_bytes:
            limit = self.limits.memory_bytes  # the cgroup says "unlimited": the configured limit holds
        cgroup = body.get("cgroup")
        return Usage(
            memory=body.get("memory"),
            memory_limit=limit,
            memory_peak=body.get("memory_peak"),
            cpu_seconds=body.get("cpu_seconds"),
            cpu_limit=self.limits.cpu_cores,
            uptime=time.monotonic() - self._launched_at,
            source=f"cgroup v{cgroup}, read by the agent" if cgroup else "agent",
            reason=None if cgroup else "the agent found no cgroup to read",
        )

    def cell_usage_end(self, wall: float) -> "CellUsage":
        from .usage import CellUsage

        return CellUsage(wall, memory_limit=self.limits.memory_bytes, reason=(
            f"CPU and peak memory per cell are not measured on the {self.backend} backend (the "
            "sandbox's cgroup is read-only inside it, so its peak cannot be reset per cell); "
            "%sandbox usage shows the sandbox's figures now"))

    async def complete(self, code: str, cursor_pos: int) -> Completion:
        body = await self._ask({"type": "complete", "code": code, "cursor_pos": cursor_pos}, "complete_reply")
        if not body:
            return Completion([], cursor_pos, cursor_pos)
        start, end = body.get("cursor_start"), body.get("cursor_end")
        return Completion(
            list(body.get("matches") or []),
            cursor_pos if start is None else start,
            cursor_pos if end is None else end,
        )

    async def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> Inspection:
        body = await self._ask(
            {"type": "inspect", "code": code, "cursor_pos": cursor_pos, "detail_level": detail_level},
            "inspect_reply",
        )
        if not body or not body.get("found"):
            return Inspection(False, {})
        return Inspection(True, body["data"])

    async def is_complete(self, code: str) -> tuple[str, str]:
        body = await self._ask({"type": "is_complete", "code": code}, "is_complete_reply")
        if not body:
            return ("unknown", "")
        return (body["status"], body["indent"])


def _sentence(problem: str) -> str:
    return f"The sandbox sent a {problem[0].lower()}{problem[1:]}" if problem.startswith("malformed") else problem


def _malformed_sentence(tally: _Tally) -> str:
    first = tally.problem or "malformed message"
    if tally.malformed == 1:
        return f"The sandbox sent a {first}; it was dropped."
    return f"The sandbox sent {tally.malformed} malformed messages, which were dropped; the first: {first}."


def _between_cells_notice(tally: _Tally, limit: int) -> str | None:
    """One notice for what was dropped while no cell ran (told at the start of the next cell)."""
    parts = []
    if tally.dropped_bytes or tally.dropped_messages:
        what = f"{tally.dropped_bytes} bytes of output"
        if tally.dropped_messages:
            what += f" ({tally.dropped_messages} display messages, which only a running cell can show)"
        keep = f"at most {limit} bytes are kept for the next cell (Sandbox.output_limit)" if limit else ""
        parts.append(f"{what} produced between cells were dropped" + (f"; {keep}" if keep else ""))
    if tally.malformed:
        parts.append(_malformed_sentence(tally).rstrip("."))
    if not parts:
        return None
    return "[sandbox] " + ". ".join(parts) + ".\n"


class _CellOutput:
    """One cell's stdout/stderr on its way to the frontend: UTF-8 decoding (the reader has
    already applied the output limit)."""

    def __init__(self) -> None:
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }

    def events(self, frames: list[_Chunk]) -> list[Stream]:
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
