"""The requests an :class:`~sandbox_kernel.agent_session.AgentSession` runs like cells, a mixin.

Files (``file_write`` / ``file_read``) and the sandbox's ``usage`` are answered at once by the
agent's supervisor, also while a cell runs. A cell (``execute``) and a comm message of the frontend (``comm``) are each sent to the agent as
a request that ends with its ``done``; ``_guarded`` turns whatever goes wrong meanwhile into the
request's error. Comm messages of the sandbox join the running request's output in order (or go
to the kernel's ``idle_comm_sink`` between requests); an ``input_request`` of the running cell
is answered with ``input_reply``. See ``agents/PROTOCOL.md``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from typing import Any, AsyncGenerator, Awaitable, Callable

from .cell import Cell, comm_event
from .config import Limits
from .errors import ProtocolError, SandboxError, SandboxLost
from .messages import COMM, clean_text
from .output_gate import Inbox, OutputGate
from .protocol import Message, encode, encode_file_write
from .session import AgentChannel, CommEvent, ErrorOutput, Event
from .usage import CellUsage, Usage

log = logging.getLogger("sandbox_kernel")
_file_ids = itertools.count(1)
_usage_ids = itertools.count(1)


class AgentRequests:
    """Cells, frontend comm messages and input() for an agent-driven session (see the module's docstring)."""

    # Provided by AgentSession (declared here for the type checker only: nothing is defined at runtime).
    _comms_supported: bool
    _binary_files: bool
    _gate: OutputGate
    _cell_id: str | None
    _cell: Cell | None
    _frames: Inbox
    _wake: object
    idle_comm_sink: Callable[[CommEvent], None] | None
    _notice: str | None
    _usage_waiters: dict[str, "asyncio.Future[Message]"]
    _channel: "AgentChannel | None"
    _closed: bool
    _launched_at: float
    limits: Limits
    backend: str
    _execute: Callable[[dict[str, Any]], AsyncGenerator[Event, None]]
    _send: Callable[[dict[str, Any]], Awaitable[None]]
    _replace: Callable[[str], Awaitable[None]]
    _ensure_running: Callable[[], Awaitable[None]]

    async def file_request(self, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a ``file_write`` / ``file_read`` (PROTOCOL.md) and return its ``file_reply``; the
        agent's supervisor answers at once, also while a cell runs. Raises SandboxError when the
        sandbox does not answer (it is started first if there is none)."""
        await self._ensure_running()
        request_id = f"f{next(_file_ids)}"
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._usage_waiters[request_id] = waiter
        try:
            await self._send({**body, "id": request_id})
            return (await asyncio.wait_for(waiter, timeout)).body
        except asyncio.TimeoutError:
            raise SandboxLost(
                f"The sandbox did not answer a {body.get('type')} request within {timeout:g} s."
            ) from None
        except OSError as exc:
            raise SandboxLost(f"The connection to the sandbox failed ({exc}).") from exc
        finally:
            self._usage_waiters.pop(request_id, None)

    async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Message]":
        """Like :meth:`file_request`, but returns once the request is sent: the future is its
        reply (so chunks can be pipelined). The caller awaits it (with a timeout)."""
        request_id = f"f{next(_file_ids)}"
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._usage_waiters[request_id] = waiter
        waiter.add_done_callback(lambda _: self._usage_waiters.pop(request_id, None))
        try:
            data = body.get("data")
            if isinstance(data, bytes) and self._channel is not None:
                # A file_write's chunk, raw: a `bin` frame when the agent takes them (PROTOCOL.md),
                # else base64, spliced in (nothing to escape; json.dumps of it costs more than
                # the base64 itself).
                meta = {**{k: v for k, v in body.items() if k != "data"}, "id": request_id}
                if self._binary_files:
                    frame = encode_file_write(meta, data)
                else:
                    text = json.dumps(meta, separators=(",", ":")).encode("ascii")
                    frame = encode("msg", text[:-1] + b',"data":"' + base64.b64encode(data) + b'"}')
                await self._channel.write(frame)
            else:
                await self._send({**body, "id": request_id})
        except OSError as exc:
            waiter.cancel()
            raise SandboxLost(f"The connection to the sandbox failed ({exc}).") from exc
        return waiter

    @property
    def supports_comms(self) -> bool:
        return self._comms_supported

    def _admit_comm(self, message: Message, queue: Inbox) -> None:
        """Comm messages and input requests (see :meth:`_admit`). While a cell or comm request
        runs, comm messages join its output in order, within its output limits, whichever
        request they name; between requests they go to :attr:`idle_comm_sink` at once. Only the
        running cell may ask for input."""
        gate = self._gate
        if message.problem:
            gate.malformed(message.problem)
            return
        running = self._cell_id
        if message.type == "input_request":
            if running is not None and message.body.get("id") == running:
                queue.put(message)
            return
        if not gate.comm(message.size):
            return
        if running is not None:
            queue.put(message)
        elif self.idle_comm_sink is not None:
            self.idle_comm_sink(comm_event(message))

    async def comm(
        self, kind: str, content: dict[str, Any], buffers: list[str], parent: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """Deliver a frontend comm message (see :meth:`SandboxSession.comm`): the agent runs its
        handlers like a cell (same limits, interrupt, ``done``). Never raises."""
        if kind not in COMM:
            raise ValueError(f"not a comm message: {kind!r}")
        request: dict[str, Any] = {
            "type": kind,
            "comm_id": content.get("comm_id"),
            "data": content.get("data") or {},
            "metadata": content.get("metadata") or {},
            "buffers": buffers,
        }
        if kind == "comm_open":
            request["target_name"] = content.get("target_name")
        if parent:
            request["parent"] = parent
        async for event in self._guarded(self._execute(request)):
            yield event

    async def input_reply(self, seq: int, value: str | None, error: str | None = None) -> None:
        cell = self._cell
        if cell is None:
            return  # the cell is over
        cell.input_answered(time.monotonic())
        self._frames.put(self._wake)  # its time limit runs again
        body: dict[str, Any] = {"type": "input_reply", "id": cell.request_id, "seq": seq}
        if error is not None:
            body["error"] = error
        else:
            body["value"] = value or ""
        await self._send(body)

    async def execute(
        self, code: str, cell_number: int | None = None, *, allow_stdin: bool = False, parent: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """Run one cell (see :meth:`SandboxSession.execute`). Never raises: whatever goes wrong
        while the sandbox's frames are handled ends the cell with an :class:`ErrorOutput`, so
        the kernel can always send the cell's ``execute_reply``."""
        request: dict[str, Any] = {"type": "execute", "code": code, "allow_stdin": bool(allow_stdin)}
        if cell_number is not None:
            request["cell"] = cell_number  # names the cell in tracebacks (PROTOCOL.md)
        if parent:
            request["parent"] = parent
        async for event in self._guarded(self._execute(request)):
            yield event

    async def _guarded(self, cell: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
        """``cell``'s events; whatever goes wrong ends it with an :class:`ErrorOutput` instead."""
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
            failure = ErrorOutput.from_exception(error)
            yield ErrorOutput(
                failure.ename, clean_text(failure.evalue), [clean_text(line) for line in failure.traceback]
            )
        finally:
            await cell.aclose()

    async def usage(self) -> Usage | None:
        """The sandbox's cgroup as the agent reads it (``usage`` in PROTOCOL.md): the agent's
        supervisor answers at once, also while a cell runs. ``None`` without a running agent;
        a Usage with a reason when it did not answer within a second (an older agent)."""
        if self._channel is None or self._closed:
            return None
        request_id = f"u{next(_usage_ids)}"
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._usage_waiters[request_id] = waiter
        try:
            await self._send({"type": "usage", "id": request_id})
            body = (await asyncio.wait_for(waiter, 1.0)).body
        except (asyncio.TimeoutError, SandboxError, OSError):
            return Usage(
                memory_limit=self.limits.memory_bytes,
                cpu_limit=self.limits.cpu_cores,
                reason="the sandbox's agent did not report its usage",
            )
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

    def cell_usage_end(self, wall: float) -> CellUsage:
        return CellUsage(
            wall,
            memory_limit=self.limits.memory_bytes,
            reason=(
                f"CPU and peak memory per cell are not measured on the {self.backend} backend (the "
                "sandbox's cgroup is read-only inside it, so its peak cannot be reset per cell); "
                "%sandbox usage shows the sandbox's figures now"
            ),
        )
