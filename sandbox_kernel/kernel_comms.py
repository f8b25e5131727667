"""The kernel's relay of comm messages (widgets) and of ``input()`` requests, a mixin of
:class:`~sandbox_kernel.kernel.SandboxKernel`.

Comm messages of the frontend are delivered to the sandbox one at a time, after the running cell
(the sandbox takes them between cells, as ipykernel 6 did), and what the sandbox's handlers produce is published with the frontend's message
as parent. Comm messages of the sandbox pass the comm policy (``comms.py``) first. An
``input_request`` of a cell that may ask goes to the frontend on the stdin channel
(``stdin.py``); the cell's answer comes back through the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .kernel_base import KernelBase

from . import comms, output_policy, stdin
from .errors import SandboxError
from .session import CommEvent, ErrorOutput, Event, InputRequest, SandboxSession

log = logging.getLogger("sandbox_kernel")


class CommsAndStdin(KernelBase):
    """Comm messages both ways, comm_info, and input() (see the module's docstring)."""

    # Provided by SandboxKernel:
    active_content: str
    session_obj: Any
    _loop: asyncio.AbstractEventLoop | None

    async def _ready(self) -> SandboxSession:
        raise NotImplementedError

    def _relay(self, event: Event, silent: bool) -> ErrorOutput | None:
        raise NotImplementedError

    def _guard(self, produced: Event) -> list[Event]:
        """The output policy, knowing which widget models were accepted."""
        return output_policy.guard(produced, self.active_content, widget_models=self._comms.widget_models)

    def _init_comms(self) -> None:
        """Called once the session exists."""
        self._comms = comms.CommRelay(self.active_content)
        self._comm_generation = 0
        self._comm_refusals = 0  # comm messages refused during the running request
        self._request_lock: asyncio.Lock | None = None  # cells and frontend comm messages, one at a time
        self._last_parent: Any = None  # the request that sandbox comm traffic between requests answers
        self._cell_allow_stdin = False
        self._stdin_request: stdin.StdinRequest | None = None
        self._stdin_task: asyncio.Future[None] | None = None
        if self.session_obj is not None:
            self.session_obj.idle_comm_sink = self._idle_comm

    def _requests(self) -> asyncio.Lock:
        """Held by every cell and every frontend comm message: the sandbox handles one at a time,
        in order (a kernel base that dispatches comm messages while a cell runs, as ipykernel 7
        does, must not interleave them)."""
        if self._request_lock is None:
            self._request_lock = asyncio.Lock()
        return self._request_lock

    async def comm_open(self, stream: Any, ident: Any, parent: Any) -> None:
        await self._on_session_loop(self._comm_from_frontend("comm_open", ident, parent))

    async def comm_msg(self, stream: Any, ident: Any, parent: Any) -> None:
        await self._on_session_loop(self._comm_from_frontend("comm_msg", ident, parent))

    async def comm_close(self, stream: Any, ident: Any, parent: Any) -> None:
        await self._on_session_loop(self._comm_from_frontend("comm_close", ident, parent))

    async def _on_session_loop(self, coro: Any) -> None:
        """Run ``coro`` on the loop the session lives on (the session's queues belong to one loop)."""
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            await coro
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def _comm_from_frontend(self, kind: str, ident: Any, parent: Any) -> None:
        """Deliver a frontend comm message to the sandbox, after the running cell, and publish
        what its handlers produce (a widget's callbacks) with this message as parent, as
        ipykernel does: ipywidgets' Output widget captures by that parent."""
        # In this task's context: its output's parent.
        self.set_parent(ident, parent, channel="shell")
        # A comm's metadata travels in the message's metadata, not its content (Jupyter's comms).
        content = {**(parent.get("content") or {}), "metadata": parent.get("metadata") or {}}
        buffers = [bytes(b) for b in parent.get("buffers") or []]
        async with self._requests():
            try:
                session = await self._ready()
            except SandboxError as exc:
                log.warning("a %s from the frontend was not delivered: %s", kind, exc)
                return
            self._check_generation()
            if not session.supports_comms:  # Node.js, Bash: no comms; close what the frontend opens
                if kind == "comm_open" and isinstance(content.get("comm_id"), str):
                    self._send_iopub("comm_close", {"comm_id": content["comm_id"], "data": {}}, parent, [])
                return
            try:
                encoded = self._comms.from_frontend(kind, content, buffers)
            except comms.Refused as refused:
                log.warning("a %s from the frontend was not forwarded to the sandbox: %s", kind, refused)
                return
            self._last_parent = parent
            self._comm_refusals = 0
            try:
                async with contextlib.aclosing(
                    session.comm(kind, content, encoded, _msg_id(parent))
                ) as produced_events:
                    async for produced in produced_events:
                        for event in self._guard(produced):
                            self._relay(event, silent=False)
            except Exception:  # noqa: BLE001 - a comm message must never take the kernel down
                log.exception("relaying a %s failed", kind)

    async def comm_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """The open comms, from the kernel's own registry (every comm either side opened)."""
        target = (parent.get("content") or {}).get("target_name")
        if self.session:
            comms_open = self._comms.info(target if isinstance(target, str) else None)
            self.session.send(stream, "comm_info_reply", {"status": "ok", "comms": comms_open}, parent, ident)

    def _idle_comm(self, event: CommEvent) -> None:
        """A comm message of the sandbox between requests (a thread updating a widget)."""
        self._publish_comm(event, self._last_parent)

    def _check_generation(self) -> None:
        """A new sandbox has none of the old one's comms: tell the frontend they closed."""
        generation = getattr(self.session_obj, "generation", 0)
        if generation != self._comm_generation:
            self._comm_generation = generation
            for closing in self._comms.reset():
                self._send_iopub(closing.msg_type, closing.content, None, [])

    def _publish_comm(self, event: CommEvent, parent: Any) -> None:
        """Publish a comm message of the sandbox if the comm policy lets it through; the first
        refusal of a request is told on stderr (the rest only in the log)."""
        self._check_generation()
        try:
            out = self._comms.from_sandbox(event)
        except comms.Refused as refused:
            log.warning("a %s from the sandbox was not published: %s", event.kind, refused)
            self._comm_refusals += 1
            if self._comm_refusals == 1:
                notice = f"[sandbox] a {event.kind} message from the sandbox was not published: {refused}\n"
                self._send_iopub("stream", {"name": "stderr", "text": notice}, parent, [])
            return
        self._send_iopub(out.msg_type, out.content, parent, out.buffers)

    def _send_iopub(self, msg_type: str, content: dict[str, Any], parent: Any, buffers: list[bytes]) -> None:
        """Publish; a comm message's ``metadata`` goes into the message's metadata (Jupyter's comms)."""
        if not self.session:
            return
        frames: Any = buffers or None
        content = dict(content)
        metadata = content.pop("metadata", None) if msg_type.startswith("comm_") else None
        if parent is None:
            parent = self.get_parent("shell")
        self.session.send(self.iopub_socket, msg_type, content, parent, buffers=frames, metadata=metadata)

    # -- stdin (stdin.py) -----------------------------------------------------------------------

    def _start_input(self, event: InputRequest) -> None:
        """The cell asks for input: ask the frontend, if it allows stdin (a request from a cell
        that may not ask, or a second one at once, is ignored: the agent never sends those)."""
        session = self.session_obj
        if (
            not self._cell_allow_stdin
            or session is None
            or (self._stdin_task is not None and not self._stdin_task.done())
        ):
            log.warning("ignored an input_request the cell may not send")
            return
        request = stdin.StdinRequest(
            self.session, self.stdin_socket, self.get_parent_ident("shell"), self.get_parent("shell")
        )
        self._stdin_request = request

        async def answer() -> None:
            value = await request.ask(event.prompt, event.password)
            if value is None:
                return
            checked, error = stdin.check_reply(value)
            try:
                await session.input_reply(event.seq, checked, error)
            except Exception:  # noqa: BLE001 - the cell may have ended meanwhile
                log.warning("passing the input to the sandbox failed", exc_info=True)

        self._stdin_task = asyncio.ensure_future(answer())

    async def _end_input(self) -> None:
        """The cell ended: stop waiting for the frontend's answer."""
        request, task = self._stdin_request, self._stdin_task
        self._stdin_request = self._stdin_task = None
        if request is not None:
            request.cancel()
        if task is not None:
            with contextlib.suppress(Exception):
                await task


def _msg_id(parent: Any) -> str | None:
    """The Jupyter message id of a request (``None`` without one)."""
    try:
        return str(parent["header"]["msg_id"])
    except (TypeError, KeyError):
        return None
