"""The session seam: what the kernel asks of a sandbox, and the agent-driving half every backend shares.

:class:`SandboxSession` is the contract the kernel codes against; it knows nothing of Jupyter.
:class:`AgentSession` implements it for any backend that can give it a byte stream to an
in-sandbox agent (see ``agents/PROTOCOL.md``): it frames requests, decodes replies, enforces
the per-cell time and output limits, escalates an interrupt that is not obeyed, and replaces a
sandbox that died. A backend subclasses it and supplies only :meth:`AgentSession._spawn`,
:meth:`AgentSession._kill` and :meth:`AgentSession._lost_reason`.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Union

from .config import Limits
from .errors import CellTimeout, ProtocolError, SandboxError, SandboxLost, SandboxStartError
from .languages import Language
from .protocol import FrameDecoder, Message, Output, encode_message

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
    def execute(self, code: str) -> AsyncIterator[Event]:
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
        self._frames: asyncio.Queue[Message | Output | _Ended] = asyncio.Queue()
        self._language_info: dict[str, Any] = {"name": language.name}
        self._running = False
        self._interrupt_requested_at: float | None = None
        self._notice: str | None = None  # told to the user at the start of the next cell
        self._closed = False
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped every time a sandbox is replaced
        self._idle_bytes = 0

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
        self._frames = asyncio.Queue()
        try:
            self._channel = await self._spawn()
        except SandboxError:
            raise
        except Exception as exc:  # a backend bug must still read as a sandbox error
            log.exception("sandbox start failed")
            raise SandboxStartError(f"The sandbox could not be started: {exc}") from exc
        self._generation += 1
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
        info = ready.body.get("language_info")
        if isinstance(info, dict):
            self._language_info = info

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

    async def _read_frames(self, channel: AgentChannel, queue: asyncio.Queue[Any]) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                chunk = await channel.read()
                if isinstance(chunk, StreamGap):
                    decoder = FrameDecoder()  # a frame may have been cut: start afresh
                    notice = (
                        f"[sandbox] {chunk.lost:,} bytes of output were lost while the connection "
                        "to the sandbox was down.\n"
                    )
                    queue.put_nowait(Output("stderr", notice.encode()))
                    continue
                if not chunk:
                    break
                for frame in decoder.feed(chunk):
                    if isinstance(frame, Output) and not self._running:
                        # Output between cells (a background thread): keep at most one cell's worth.
                        self._idle_bytes += len(frame.data)
                        if self.limits.output_bytes and self._idle_bytes > self.limits.output_bytes:
                            continue
                    queue.put_nowait(frame)
        except ProtocolError as exc:
            log.error("agent broke the protocol: %s", exc)
            queue.put_nowait(_Ended(ProtocolError(f"The sandbox sent malformed data ({exc}) and was restarted.")))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a dropped stream is a lost sandbox
            log.warning("agent stream failed", exc_info=True)
            queue.put_nowait(_Ended(SandboxLost(f"The connection to the sandbox failed: {exc}")))
            return
        if self._closed:
            return
        try:
            reason = await self._lost_reason()
        except Exception as exc:  # noqa: BLE001
            reason = SandboxLost(f"The sandbox stopped unexpectedly ({exc}).")
        queue.put_nowait(_Ended(reason))

    async def _next_message(self, types: set[str], request_id: str | None = None) -> Message:
        while True:
            frame = await self._frames.get()
            if isinstance(frame, _Ended):
                self._frames.put_nowait(frame)  # stays visible to whoever asks next
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

    async def execute(self, code: str) -> AsyncIterator[Event]:  # type: ignore[override]
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
        self._idle_bytes = 0
        self._interrupt_requested_at = None
        started = time.monotonic()
        timed_out = False
        output = _CellOutput(limit)
        pending: list[Output] = []  # output received but not yet published
        pending_bytes = 0
        last_flush = float("-inf")
        try:
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
                try:
                    frame = await asyncio.wait_for(self._frames.get(), wait) if wait else await self._frames.get()
                except asyncio.TimeoutError:
                    continue
                if frame is _WAKE:
                    continue
                if isinstance(frame, Output):
                    # Take everything already queued too.
                    pending.append(frame)
                    pending_bytes += len(frame.data)
                    while not self._frames.empty() and pending_bytes < self.output_batch:
                        peek = self._frames._queue[0]  # type: ignore[attr-defined]
                        if not isinstance(peek, Output):
                            break
                        pending.append(self._frames.get_nowait())  # type: ignore[arg-type]
                        pending_bytes += len(peek.data)
                    continue
                # Anything else comes after the output before it.
                for event in output.events(pending):
                    yield event
                pending, pending_bytes = [], 0
                if isinstance(frame, _Ended):
                    yield ErrorOutput.from_exception(frame.error)
                    await self._replace(f"A new sandbox was started after the last one was lost ({frame.error.ename}).")
                    self._notice = None
                    return
                body = frame.body
                kind = frame.type
                if body.get("id") not in (None, request_id):
                    continue  # a late reply to an earlier request
                if kind == "display":
                    yield DisplayData(_bundle(body.get("data")), _dict(body.get("metadata")))
                elif kind == "result":
                    yield ExecuteResult(_bundle(body.get("data")), _dict(body.get("metadata")))
                elif kind == "error":
                    if timed_out:
                        yield ErrorOutput.from_exception(CellTimeout(timeout))
                    else:
                        yield ErrorOutput(
                            str(body.get("ename", "Error")),
                            str(body.get("evalue", "")),
                            [str(line) for line in body.get("traceback") or []],
                        )
                elif kind == "done":
                    for event in output.finish():
                        yield event
                    dropped = max(output.dropped, int(body.get("truncated") or 0))
                    if dropped:
                        yield Stream(
                            "stderr",
                            f"\n[sandbox] output truncated: {dropped} more bytes were dropped "
                            f"(limit {limit} bytes per cell; see Sandbox.output_limit)\n",
                        )
                    if timed_out and body.get("status") == "ok":
                        yield ErrorOutput.from_exception(CellTimeout(timeout))
                    return
        finally:
            self._running = False
            self._interrupt_requested_at = None

    async def _request_interrupt(self) -> None:
        if self._interrupt_requested_at is None:
            self._interrupt_requested_at = time.monotonic()
            self._frames.put_nowait(_WAKE)  # type: ignore[arg-type]
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
            await self._send({**body, "id": request_id})
            message = await asyncio.wait_for(self._next_message({reply}, request_id), timeout)
            return message.body
        except (asyncio.TimeoutError, SandboxError, _Ended):
            return None

    async def complete(self, code: str, cursor_pos: int) -> Completion:
        body = await self._ask({"type": "complete", "code": code, "cursor_pos": cursor_pos}, "complete_reply")
        if not body:
            return Completion([], cursor_pos, cursor_pos)
        return Completion(
            [str(m) for m in body.get("matches") or []],
            int(body.get("cursor_start", cursor_pos)),
            int(body.get("cursor_end", cursor_pos)),
        )

    async def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> Inspection:
        body = await self._ask(
            {"type": "inspect", "code": code, "cursor_pos": cursor_pos, "detail_level": detail_level},
            "inspect_reply",
        )
        if not body or not body.get("found"):
            return Inspection(False, {})
        return Inspection(True, _bundle(body.get("data")))

    async def is_complete(self, code: str) -> tuple[str, str]:
        body = await self._ask({"type": "is_complete", "code": code}, "is_complete_reply")
        if not body:
            return ("unknown", "")
        return (str(body.get("status", "unknown")), str(body.get("indent", "")))


class _CellOutput:
    """One cell's stdout/stderr on its way to the frontend: the output limit and UTF-8 decoding."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }

    def events(self, frames: list[Output]) -> list[Stream]:
        """Streams for ``frames``: consecutive frames of one stream joined, order kept."""
        runs: list[tuple[str, list[bytes]]] = []
        for frame in frames:
            if runs and runs[-1][0] == frame.stream:
                runs[-1][1].append(frame.data)
            else:
                runs.append((frame.stream, [frame.data]))
        events = []
        for name, parts in runs:
            chunk = b"".join(parts)
            if self.limit and self.sent + len(chunk) > self.limit:
                keep = max(0, self.limit - self.sent)
                self.dropped += len(chunk) - keep
                chunk = chunk[:keep]
            self.sent += len(chunk)
            text = self.decoders[name].decode(chunk)
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


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bundle(value: Any) -> dict[str, Any]:
    bundle = _dict(value)
    return bundle or {"text/plain": ""}
