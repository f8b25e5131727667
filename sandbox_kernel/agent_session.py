"""The agent-driving half every backend shares: :class:`AgentSession`.

It implements :class:`~sandbox_kernel.session.SandboxSession` for any backend that can give it
a byte stream to an in-sandbox agent (see ``agents/PROTOCOL.md``): it frames requests, decodes
and checks replies (``messages.py``), applies the output limits as frames arrive
(``output_gate.py``), enforces the per-cell time limit, escalates an interrupt that is not
obeyed, and replaces a sandbox that died. A backend subclasses it and supplies only
:meth:`AgentSession._spawn`, :meth:`AgentSession._kill` and :meth:`AgentSession._lost_reason`.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import time
from typing import Any, AsyncGenerator

from .agent_requests import AgentRequests
from .cell import STUCK, Cell
from .config import Limits
from .errors import ProtocolError, SandboxError, SandboxLost, SandboxStartError
from .languages import Language
from .messages import COMM, OUTPUT, STDIN, check
from .output_gate import Chunk, Inbox, OutputGate, Tally, between_cells_notice
from .protocol import FrameDecoder, Message, Output, encode_message
from .session import (
    AgentChannel,
    Completion,
    ErrorOutput,
    Event,
    InputRequest,
    Inspection,
    SandboxSession,
    Stream,
    StreamGap,
)

log = logging.getLogger("sandbox_kernel")


class _Ended(Exception):
    """The agent stream ended; carries the reason as a SandboxError."""

    def __init__(self, error: SandboxError) -> None:
        self.error = error


_ids = itertools.count(1)
_WAKE = object()  # put on the frame queue to make a waiting execute() re-check its deadlines


class AgentSession(AgentRequests, SandboxSession):
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
        self._frames = Inbox()  # of Message, Chunk, _Ended and _WAKE
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
        self._cell: Cell | None = None  # the running cell or frontend comm request
        self._wake = _WAKE
        self._comms_supported = False  # the agent said so in its ready message
        self._binary_files = False  # file_write chunks as `bin` frames (ready: binary_files)

    @property
    def generation(self) -> int:
        return self._generation

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
        self._frames = Inbox()
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
            raise SandboxStartError(f"The sandbox did not become ready within {self.start_timeout:g} s.") from None
        except _Ended as ended:
            await self._discard()
            hint = ended.error.hint if isinstance(ended.error, SandboxStartError) else None  # its own next step
            raise SandboxStartError(f"The sandbox stopped while starting: {ended.error}", hint=hint) from None
        if ready.problem:
            log.warning("%s", ready.problem)
        info = ready.body.get("language_info")
        if isinstance(info, dict) and info:
            self._language_info = {"name": self.language.name, **info}
        if self.language.name == "python":
            # IPython mode (Sandbox.ipython): the agent starts IPython now, while the kernel finishes starting.
            try:
                await self._send({"type": "setup", "ipython": self.limits.ipython})
            except Exception:  # noqa: BLE001 - a broken stream shows at the first cell, as a cell's error
                log.warning("sending setup to the agent failed", exc_info=True)
        self._comms_supported = ready.body.get("comms") is True
        self._binary_files = ready.body.get("binary_files") is True
        await self._after_ready()

    async def _after_ready(self) -> None:
        """Called once the agent of a new sandbox is ready (at start and after a replacement):
        a backend's last step of a start (Kubernetes copies the notebook's directory in)."""

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

    async def _read_frames(self, channel: AgentChannel, queue: Inbox) -> None:
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

    def _admit(self, frame: Message | Output, queue: Inbox, state: dict[str, bool]) -> None:
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
        if kind in ("usage_reply", "file_reply"):  # answered at once, also while a cell runs (see usage())
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
        if kind in COMM or kind in STDIN:
            self._admit_comm(message, queue)
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
            tally.result_seen = True  # the cell's value always gets through (at most one frame, 2 MiB)
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
            if (
                isinstance(frame, Message)
                and frame.type in types
                and (request_id is None or frame.body.get("id") == request_id)
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

    async def _execute(self, request: dict[str, Any]) -> AsyncGenerator[Event, None]:
        """The steps of one cell (or frontend comm message, ``request``): start a sandbox if there
        is none, send the request, then handle what comes back (:class:`~sandbox_kernel.cell.Cell`)
        until it is done, its sandbox is lost, or a cell that ignores its interrupt is given up."""
        is_cell = request["type"] == "execute"
        if self._notice and is_cell:
            yield Stream("stderr", f"[sandbox] {self._notice}\n")
            self._notice = None
        try:
            await self._ensure_running()
        except SandboxError as exc:
            yield ErrorOutput.from_exception(exc)
            return
        cell, between = self._begin_cell(is_cell)
        try:
            notice = between_cells_notice(between, cell.limit) if is_cell else None
            if notice:
                yield Stream("stderr", notice)
            await self._send({**request, "id": cell.request_id, "output_limit": cell.limit})
            while True:
                now = time.monotonic()
                wait = cell.time_left(now, self._interrupt_requested_at, self.limits.interrupt_grace)
                if wait is not None and wait <= 0:
                    if self._interrupt_requested_at is None:
                        # The time limit is up: ask the agent to stop, like the stop button does.
                        cell.timed_out = True
                        await self._request_interrupt()
                        continue
                    # The agent ignored the interrupt (a tight loop it cannot break): replace it.
                    for event in cell.stuck_end():
                        yield event
                    await self._replace(f"The previous sandbox was replaced: {STUCK}")
                    self._notice = None  # already told in this cell
                    return
                if cell.pending:
                    # Publish pending output once the interval since the last message is over:
                    # a flood costs one message per interval, a lone line goes out at once.
                    due = cell.last_flush + self.output_interval - now
                    if due <= 0 or cell.pending_bytes >= self.output_batch:
                        for event in cell.flush():
                            yield event
                        cell.last_flush = time.monotonic()
                        continue
                    wait = due if wait is None else min(wait, due)
                frame = await self._frames.get(wait)
                if frame is None or frame is _WAKE:
                    continue
                if isinstance(frame, Chunk):
                    self._take_output(cell, frame)
                    continue
                # Anything else comes after the output before it.
                for event in cell.flush():
                    yield event
                if isinstance(frame, _Ended):
                    for event in cell.lost_end(frame.error):
                        yield event
                    await self._replace(f"A new sandbox was started after the last one was lost ({frame.error.ename}).")
                    self._notice = None
                    return
                if isinstance(frame, Message):
                    for event in cell.message(frame):
                        if isinstance(event, InputRequest) and cell.input_since is None:
                            cell.input_since = time.monotonic()  # the user is asked: not timed
                        yield event
                    if cell.done:
                        return
        finally:
            self._end_cell(between if not is_cell else None)

    def _begin_cell(self, is_cell: bool = True) -> tuple[Cell, Tally]:
        """A cell (or a frontend comm request) starts: its state, and the tally of what the gate
        dropped since the last cell (for a comm request: the tally that goes on after it)."""
        prefix = "c" if is_cell else "m"
        cell = Cell(f"{prefix}{next(_ids)}", self.limits.output_bytes, self._gate.rate, self.timeout, time.monotonic())
        self._running = True
        self._cell_id = cell.request_id
        self._cell = cell
        between = self._gate.start_cell() if is_cell else self._gate.start_request()
        cell.tally = self._gate.tally
        self._interrupt_requested_at = None
        return cell, between

    def _end_cell(self, saved: Tally | None = None) -> None:
        self._running = False
        self._cell_id = None
        self._cell = None
        if saved is None:
            self._gate.end_cell()
        else:
            self._gate.end_request(saved)
        self._interrupt_requested_at = None

    def _take_output(self, cell: Cell, chunk: Chunk) -> None:
        """Stream output arrived: keep it pending, with everything already queued behind it."""
        cell.add(chunk)
        while cell.pending_bytes < self.output_batch and isinstance(self._frames.peek(), Chunk):
            cell.add(self._frames.get_nowait())

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
