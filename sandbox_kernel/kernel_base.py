"""The Jupyter protocol's bookkeeping for a kernel, without IPython: what ``ipykernel.kernelbase``
does for :class:`~sandbox_kernel.kernel.SandboxKernel` (which only says what requests mean).

``ipykernel.kernelbase`` imports IPython (``IPython.core.error``, and with it IPython's shell and
prompt_toolkit): ~0.45 s of a kernel's start, for a kernel whose cells never run in its own
process. This base does the same protocol work on one asyncio loop:

- **shell** requests one at a time, in order (ROUTER socket); around each a ``status``
  ``busy``/``idle`` on IOPub with the request as parent; ``execute_input`` and the execution
  count for a cell that is not silent; after a failed cell with ``stop_on_error``, every
  ``execute_request`` that was waiting when the cell's reply went out is answered ``aborted``
  (ipykernel 7's behaviour; what the frontend sends once it sees the error runs);
- **control** requests (interrupt, shutdown, kernel_info, usage) one at a time, and meanwhile
  the shell's cell keeps running: both channels are tasks of the same loop;
- **IOPub** is an XPUB socket: every new subscription gets an ``iopub_welcome`` (JEP 65, as
  ipykernel 7), so a client knows its subscription is in place;
- **shutdown**: the reply on the channel it came on, the same reply broadcast on IOPub, then
  :meth:`serve` returns.

Handlers have ipykernel's names and arguments (``execute_request(stream, ident, parent)``,
``do_execute(...)``, ``send_response``, ``set_parent``/``get_parent``), so the kernel reads like
any ipykernel kernel. Heartbeat and sockets are :mod:`.kernel_sockets`; signing :mod:`.wire`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from typing import Any

import zmq
from traitlets.config import Configurable

from .wire import PROTOCOL_VERSION, Session

log = logging.getLogger("sandbox_kernel")

SHUTDOWN_GRACE = 5.0
"""Seconds the shell's request gets to end after a shutdown was answered (its sandbox is closed by then)."""


class KernelBase(Configurable):
    """A Jupyter kernel's protocol handling; subclasses implement the ``do_*`` methods."""

    implementation = "kernel"
    implementation_version = "0"
    banner = ""
    language_info: dict[str, Any] = {}
    help_links: list[dict[str, str]] = []

    msg_types = [
        "execute_request",
        "complete_request",
        "inspect_request",
        "history_request",
        "comm_info_request",
        "kernel_info_request",
        "connect_request",
        "shutdown_request",
        "is_complete_request",
        "interrupt_request",
    ]
    control_msg_types = [*msg_types, "usage_request"]

    execution_count = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session: Session | None = None
        self.shell_socket: Any = None
        self.control_socket: Any = None
        self.iopub_socket: Any = None
        self.stdin_socket: Any = None
        self.ident = str(uuid.uuid4())
        self._parents: dict[str, tuple[list[bytes], dict[str, Any]]] = {"shell": ([], {}), "control": ([], {})}
        self._channel: contextvars.ContextVar[str] = contextvars.ContextVar("channel", default="shell")
        self._aborting = False
        self._shell_busy = False
        self._queued_behind_error: list[Any] | None = None
        self._stopping: asyncio.Event | None = None
        self._ports: dict[str, int] = {}

    def attach(self, session: Session, sockets: dict[str, Any], ports: dict[str, int]) -> None:
        """Give the kernel its wire session and its sockets (``shell``, ``control``, ``iopub``:
        zmq.asyncio sockets of the loop :meth:`serve` runs on; ``stdin``: a blocking one)."""
        self.session = session
        self.shell_socket, self.control_socket = sockets["shell"], sockets["control"]
        self.iopub_socket, self.stdin_socket = sockets["iopub"], sockets["stdin"]
        self._ports = dict(ports)

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Called on the kernel's loop before the first request is read."""
        self._publish_status("starting", "shell")

    async def serve(self) -> None:
        """Answer requests until a ``shutdown_request`` has been answered."""
        self._stopping = asyncio.Event()
        self.start()
        shell, *others = tasks = [
            asyncio.ensure_future(c) for c in (self._shell_loop(), self._control_loop(), self._iopub_loop())
        ]
        stopped = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopped, *others]:
            task.cancel()
        if self._shell_busy:
            # The request being handled ends by itself (a cell ends once its sandbox is closed);
            # cancelled in the middle, its clean-up would run half-way.
            await asyncio.wait([shell], timeout=SHUTDOWN_GRACE)
        shell.cancel()
        await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("a channel of the kernel failed", exc_info=task.exception())

    async def _shell_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            frames = await self.shell_socket.recv_multipart()
            self._shell_busy = True
            try:
                await self._dispatch("shell", frames)
                queued, self._queued_behind_error = self._queued_behind_error, None
                if queued is not None:
                    self._aborting = True  # its cells are aborted, anything else is answered
                    try:
                        for frames in queued:
                            await self._dispatch("shell", frames)
                    finally:
                        self._aborting = False
            finally:
                self._shell_busy = False

    async def _take_queued(self) -> list[Any]:
        """The shell requests already waiting, taken without waiting (the futures of a
        non-blocking receive are done at once, so nothing else runs meanwhile)."""
        queued = []
        while True:
            try:
                queued.append(await self.shell_socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return queued

    async def _control_loop(self) -> None:
        self._channel.set("control")  # this task's context: get_parent() means control's
        while True:
            frames = await self.control_socket.recv_multipart()
            await self._dispatch("control", frames)

    async def _iopub_loop(self) -> None:
        """Welcome every new IOPub subscriber (an XPUB socket hears of subscriptions)."""
        while True:
            for frame in await self.iopub_socket.recv_multipart():
                if frame[:1] != b"\x01" or self.session is None:
                    continue
                topic = bytes(frame[1:])
                try:
                    subscription = topic.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                msg = self.session.msg("iopub_welcome", {"subscription": subscription})
                self.session.send(self.iopub_socket, msg, ident=[topic] if topic else None)

    async def _dispatch(self, channel: str, frames: list[Any]) -> None:
        assert self.session is not None
        try:
            idents, rest = self.session.feed_identities(frames)
            msg = self.session.deserialize(rest)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            log.error("refused a message on the %s channel: %s", channel, exc)
            return
        self.set_parent(idents, msg, channel)
        self._publish_status("busy", channel)
        msg_type = msg["header"]["msg_type"]
        stream = self.shell_socket if channel == "shell" else self.control_socket
        try:
            if channel == "shell" and msg_type == "execute_request" and self._aborting:
                self._send_abort_reply(stream, msg, idents)
                return
            allowed = self.msg_types if channel == "shell" else self.control_msg_types
            handler = getattr(self, msg_type, None) if msg_type in allowed else None
            if handler is None:
                log.warning("unknown message type on the %s channel: %r", channel, msg_type)
                return
            await handler(stream, idents, msg)
        except Exception:  # noqa: BLE001 - one bad request never takes the kernel down
            log.exception("handling a %s failed", msg_type)
        finally:
            self._publish_status("idle", channel)

    # -- parents and publishing ---------------------------------------------------------------------

    def set_parent(self, ident: list[bytes], parent: dict[str, Any], channel: str = "shell") -> None:
        """The request that outputs (IOPub) and replies belong to, and whom stdin asks."""
        self._parents[channel] = (ident, parent)

    def get_parent(self, channel: str | None = None) -> dict[str, Any]:
        return self._parents[channel or self._channel.get()][1]

    def get_parent_ident(self, channel: str | None = None) -> list[bytes]:
        return self._parents[channel or self._channel.get()][0]

    def send_response(
        self,
        stream: Any,
        msg_or_type: Any,
        content: dict[str, Any] | None = None,
        ident: Any = None,
        buffers: Any = None,
        track: bool = False,
        header: Any = None,
        metadata: dict[str, Any] | None = None,
        channel: str | None = None,
    ) -> Any:
        """Send a message whose parent is the request being handled."""
        if self.session is None:
            return None
        return self.session.send(
            stream, msg_or_type, content, self.get_parent(channel), ident, buffers, metadata=metadata
        )

    def _topic(self, topic: str) -> bytes:
        return f"kernel.{self.ident}.{topic}".encode()

    def _publish_status(self, status: str, channel: str) -> None:
        if self.session is not None and self.iopub_socket is not None:
            self.session.send(
                self.iopub_socket,
                "status",
                {"execution_state": status},
                self.get_parent(channel),
                ident=self._topic("status"),
            )

    # -- requests -----------------------------------------------------------------------------------

    def init_metadata(self, parent: dict[str, Any]) -> dict[str, Any]:
        from .wire import utcnow

        return {"started": utcnow()}

    def finish_metadata(self, parent: dict[str, Any], metadata: dict[str, Any], reply_content: Any) -> dict[str, Any]:
        return metadata

    async def execute_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        assert self.session is not None
        content = parent["content"]
        code = content.get("code")
        if not isinstance(code, str):
            log.error("an execute_request without code: %r", content)
            return
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent))
        stop_on_error = content.get("stop_on_error", True)
        metadata = self.init_metadata(parent)
        if not silent:
            self.execution_count += 1
            self.session.send(
                self.iopub_socket,
                "execute_input",
                {"code": code, "execution_count": self.execution_count},
                parent,
                ident=self._topic("execute_input"),
            )
        cell_meta = parent.get("metadata") or {}
        reply = await self.do_execute(
            code,
            silent,
            store_history,
            content.get("user_expressions") or {},
            bool(content.get("allow_stdin", False)),
            cell_meta=cell_meta,
            cell_id=cell_meta.get("cellId") if isinstance(cell_meta, dict) else None,
        )
        metadata = self.finish_metadata(parent, metadata, reply)
        if not silent and reply.get("status") == "error" and stop_on_error:
            # The requests sent before the frontend can have seen this reply: taken now, before
            # it is sent, so that what the frontend sends once it sees the error still runs.
            self._queued_behind_error = await self._take_queued()
        self.session.send(stream, "execute_reply", reply, parent, ident=ident, metadata=metadata)

    def _send_abort_reply(self, stream: Any, msg: dict[str, Any], idents: list[bytes]) -> None:
        assert self.session is not None
        log.info("aborting %s: %s", msg["header"].get("msg_id"), msg["header"]["msg_type"])
        status = {"status": "aborted"}
        metadata = self.finish_metadata(msg, self.init_metadata(msg), status)
        metadata.update(status)
        self.session.send(stream, "execute_reply", status, msg, ident=idents, metadata=metadata)

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: Any = None,
        cell_id: Any = None,
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def _reply(
        self, stream: Any, ident: list[bytes], parent: dict[str, Any], reply_type: str, content: dict[str, Any]
    ) -> None:
        assert self.session is not None
        self.session.send(stream, reply_type, content, parent, ident=ident)

    async def complete_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        c = parent["content"]
        await self._reply(stream, ident, parent, "complete_reply", await self.do_complete(c["code"], c["cursor_pos"]))

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        return {"status": "ok", "matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos, "metadata": {}}

    async def inspect_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        c = parent["content"]
        reply = await self.do_inspect(
            c["code"], c["cursor_pos"], c.get("detail_level", 0), set(c.get("omit_sections", []))
        )
        await self._reply(stream, ident, parent, "inspect_reply", reply)

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        return {"status": "ok", "data": {}, "metadata": {}, "found": False}

    async def is_complete_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(
            stream, ident, parent, "is_complete_reply", await self.do_is_complete(parent["content"]["code"])
        )

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        return {"status": "unknown"}

    async def history_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(stream, ident, parent, "history_reply", {"status": "ok", "history": []})

    async def connect_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(stream, ident, parent, "connect_reply", {**self._ports, "status": "ok"})

    @property
    def kernel_info(self) -> dict[str, Any]:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "implementation": self.implementation,
            "implementation_version": self.implementation_version,
            "language_info": self.language_info,
            "banner": self.banner,
            "help_links": self.help_links,
            "supported_features": [],
        }

    async def kernel_info_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(stream, ident, parent, "kernel_info_reply", {"status": "ok", **self.kernel_info})

    async def comm_info_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(stream, ident, parent, "comm_info_reply", {"status": "ok", "comms": {}})

    async def interrupt_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(stream, ident, parent, "interrupt_reply", {"status": "ok"})

    async def usage_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        await self._reply(stream, ident, parent, "usage_reply", {})

    async def shutdown_request(self, stream: Any, ident: list[bytes], parent: dict[str, Any]) -> None:
        assert self.session is not None
        restart = bool((parent.get("content") or {}).get("restart", False))
        content = await self.do_shutdown(restart)
        self.session.send(stream, "shutdown_reply", content, parent, ident=ident)
        # The same reply, under a message id of its own, for every client (as ipykernel).
        self.session.send(self.iopub_socket, "shutdown_reply", content, parent, ident=self._topic("shutdown"))
        if self._stopping is not None:
            self._stopping.set()

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        return {"status": "ok", "restart": restart}

    async def stop(self, why: str) -> None:
        """Shut down without a request (the frontend that started the kernel is gone): the
        sandbox is closed as on a ``shutdown_request``, then :meth:`serve` returns."""
        log.warning("%s: shutting down", why)
        await self.do_shutdown(False)
        if self._stopping is not None:
            self._stopping.set()
