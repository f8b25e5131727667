"""The Jupyter side: one ``Kernel`` that relays every request to a sandbox session.

The kernel knows Jupyter messages and nothing about bubblewrap or Kubernetes; the session
(``session.py``) knows sandboxes and nothing about Jupyter. The protocol's bookkeeping is
:mod:`.kernel_base` (ipykernel's, without IPython). Interrupt and shutdown requests hand their
work to the loop the session lives on with ``run_coroutine_threadsafe`` (from a worker thread:
they also work when the control channel is served by another loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from traitlets import Any as AnyTrait
from traitlets import Enum, Instance, Unicode

from . import __version__, output_policy, start_progress
from .network_hint import network_hint
from .errors import ConfigError, SandboxError
from .kernel_base import KernelBase
from .kernel_comms import _msg_id
from .kernel_magics import MAGIC, CellMagics
from .languages import LANGUAGES
from .session import (
    ClearOutput,
    CommEvent,
    DisplayData,
    ErrorOutput,
    Event,
    ExecuteResult,
    InputRequest,
    SandboxSession,
    Stream,
)
from .sessions import DEFAULT_BACKEND, chosen_backend, make_session, sandbox_settings
from .stream_merge import merged_streams

log = logging.getLogger("sandbox_kernel")

KERNEL_INFO_WAIT = 3.0
"""Most seconds a ``kernel_info_request`` waits for the sandbox (whose agent gives the real
language_info). Frontends send no cell before its reply, and a slow start (an image pull, a busy
cluster) should show its progress in the first cell rather than keep the kernel "connecting"."""
IS_COMPLETE_WAIT = 0.7
"""Seconds an is_complete_request waits for the sandbox (jupyter console gives up after 1 s)."""
_EXIT_WORDS = {
    "python": ("exit", "quit", "exit()", "quit()"),
    "node": ("exit", "quit", ".exit"),
    "bash": ("exit", "logout"),
}


class SandboxKernel(CellMagics):
    """A Jupyter kernel whose cells run in a sandbox."""

    implementation = "sandbox_kernel"
    # Comm messages from the frontend (widgets) are relayed to the sandbox (see _comm_from_frontend).
    msg_types = [*KernelBase.msg_types, "comm_open", "comm_msg", "comm_close"]
    implementation_version = __version__
    help_links = [{"text": "Sandbox Kernel", "url": "https://pypi.org/project/sandbox-kernel/"}]

    backend = Unicode(
        DEFAULT_BACKEND,
        help="Where cells run: 'local' (bubblewrap on this machine, the default) or 'kubernetes' "
        "(a locked-down namespace per kernel). Env: SANDBOX_KERNEL_BACKEND (wins over config).",
    ).tag(config=True)

    language_name = Enum(
        list(LANGUAGES),
        default_value="python",
        help="Language of the sandbox: python, node or bash (set by the kernelspec).",
    ).tag(config=True)

    session_obj = Instance(SandboxSession, allow_none=True)  # abstract class
    early_start = AnyTrait(None, allow_none=True, help="The task already starting session_obj (kernelapp.py), if any.")

    @property
    def language_info(self) -> dict[str, Any]:  # type: ignore[override]
        if self.session_obj is not None and len(self.session_obj.language_info) > 1:
            return cast("dict[str, Any]", self.session_obj.language_info)
        language = LANGUAGES[self.language_name]  # the sandbox has not said yet: what is known without it
        return {"name": language.name, "mimetype": language.mimetype, "file_extension": language.file_extension}

    @property
    def banner(self) -> str:  # type: ignore[override]
        if self.session_obj is not None:
            return cast("str", self.session_obj.banner())
        return "Sandbox kernel"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = chosen_backend(self.backend)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None
        self._start_began = time.monotonic()
        self._stderr_tail = ""
        self._start_error: SandboxError | None = None
        # Validate the configuration before any sandbox exists. A bad setting does not kill the
        # kernel (a frontend would only say "kernel died"): every cell reports it instead.
        self._config_error: SandboxError | None = None
        self.active_content = "block"  # a bad setting never weakens the policy
        try:
            self.active_content = sandbox_settings(self.config, self).active_content
        except ConfigError as exc:
            self._config_error = exc
        if self.active_content == "allow":
            log.warning(
                "Sandbox.active_content = 'allow': the sandbox's output reaches the browser unfiltered, "
                "scripts included; only for code you trust"
            )
        try:
            if self.session_obj is None:
                self.session_obj = make_session(self.backend, self.language_name, config=self.config, parent=self)
        except SandboxError as exc:
            log.info("%s", exc)  # every cell reports it (not at WARNING: see _start_session)
            self._config_error = self._config_error or exc
        self._init_comms()  # comms (widgets) and stdin (input()): kernel_comms.py
        self._init_usage()  # per-cell usage and usage_request: kernel_usage.py

    # -- starting -------------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        if self.session_obj is None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        early, self.early_start = self.early_start, None
        self._starting = loop.create_task(self._start_session(early))

    def interrupt_from_signal(self) -> None:
        """SIGINT to the kernel process: interrupt the running cell, as an interrupt_request does."""
        if self.session_obj is not None and self._loop is not None:
            asyncio.ensure_future(self.session_obj.interrupt())

    async def _start_session(self, early: Any = None) -> None:
        """Start the session, or wait for the start kernelapp.py began before the kernel existed."""
        assert self.session_obj is not None
        if early is None:  # else it began before this kernel existed (__init__ set the time)
            self._start_began = time.monotonic()
        try:
            await (early if early is not None else self.session_obj.start())
            self._start_error = None
        except SandboxError as exc:
            # The next cell reports it. Not at WARNING: the kernel's stderr is `jupyter console`'s
            # terminal, which would show it twice (once more per retry).
            log.info("%s", exc)
            self._start_error = exc

    async def _ready(self) -> SandboxSession:
        if self._config_error is not None:
            raise self._config_error
        running = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = running
        elif self._loop is not running:
            # Called from the control thread (kernel_info may come on either channel).
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._ready(), self._loop))
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_session())
        await asyncio.shield(self._starting)
        if self._start_error is not None:
            # Try once more on the next request: the cause (e.g. the cluster) may be fixed now.
            error, self._start_error = self._start_error, None
            self._starting = None
            raise error
        assert self.session_obj is not None
        return cast("SandboxSession", self.session_obj)

    async def _ready_showing_progress(self, silent: bool) -> SandboxSession:
        """:meth:`_ready`, with a line in the cell saying what a slow start waits for (start_progress.py)."""
        starting, session = self._starting, self.session_obj
        if not silent and starting is not None and not starting.done() and session is not None:
            await start_progress.show_while_starting(
                starting, self._start_began, lambda: session.start_progress, self._publish
            )
        return await self._ready()

    async def kernel_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        try:
            await asyncio.wait_for(self._ready(), KERNEL_INFO_WAIT)
        except (SandboxError, asyncio.TimeoutError):
            pass  # kernel_info must still answer; the first cell shows the start's progress, or its error
        await super().kernel_info_request(stream, ident, parent)

    # -- cells ----------------------------------------------------------------------------------

    def _publish_error(self, error: ErrorOutput) -> None:
        self._publish("error", {"ename": error.ename, "evalue": error.evalue, "traceback": error.traceback})

    def _relay(self, event: Event, silent: bool) -> ErrorOutput | None:
        """Publish one (already filtered) event of a cell; return it if it is the cell's error."""
        if isinstance(event, CommEvent):
            self._publish_comm(event, None)
            return None
        if isinstance(event, InputRequest):
            self._start_input(event)
            return None
        if isinstance(event, Stream) and event.name == "stderr":
            self._stderr_tail = (self._stderr_tail + event.text)[-4096:]
        if isinstance(event, ErrorOutput):
            event = self._with_network_hint(event)
            if not silent:
                self._publish_error(event)
            return event
        if silent:
            return None
        if isinstance(event, Stream):
            self._publish("stream", {"name": event.name, "text": event.text})
        elif isinstance(event, ExecuteResult):
            self._publish(
                "execute_result",
                {"execution_count": self.execution_count, "data": event.data, "metadata": event.metadata},
            )
        elif isinstance(event, DisplayData):
            kind = "update_display_data" if event.update else "display_data"
            self._publish(kind, {"data": event.data, "metadata": event.metadata, "transient": event.transient})
        elif isinstance(event, ClearOutput):
            self._publish("clear_output", {"wait": event.wait})
        return None

    def _with_network_hint(self, error: ErrorOutput) -> ErrorOutput:
        """``error`` with one line saying the sandbox has no network, when it failed for that
        reason and no egress is allowed (network_hint.py)."""
        session = self.session_obj
        if session is None:
            return error
        egress = getattr(session, "egress", None)  # the local backend's allow list, if any
        if egress is not None and egress.enabled:
            return error
        hint = network_hint(error.ename, error.evalue, error.traceback, self._stderr_tail, session.backend)
        if hint is None:
            return error
        return ErrorOutput(error.ename, error.evalue, [*error.traceback, hint])

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
        async with self._requests():
            self._last_parent = self.get_parent("shell")
            self._cell_allow_stdin = bool(allow_stdin)
            self._comm_refusals = 0
            try:
                return await self._execute_cell(code, silent, store_history)
            finally:
                self._cell_allow_stdin = False
                await self._end_input()

    async def _execute_cell(self, code: str, silent: bool, store_history: bool = True) -> dict[str, Any]:
        if code.strip() in _EXIT_WORDS.get(self.language_name, ()):
            # What ipykernel does for exit/quit: ask the frontend (jupyter console) to close.
            return {
                "status": "ok",
                "execution_count": self.execution_count,
                "payload": [{"source": "ask_exit", "keepkernel": False}],
                "user_expressions": {},
            }
        failure: ErrorOutput | None = None
        self._stderr_tail = ""  # the end of this cell's stderr, for network_hint
        try:
            session = await self._ready_showing_progress(silent)
            code = await self._run_magics(code, session, silent)
            if code.strip():
                try:
                    session.cell_usage_start()
                except Exception:  # noqa: BLE001 - accounting must never fail a cell
                    log.warning("per-cell accounting failed", exc_info=True)
                started = time.perf_counter()
                try:
                    # aclosing: if publishing fails, the session's cell ends now, not at garbage collection.
                    number = self.execution_count if store_history and not silent else None
                    async with (
                        contextlib.aclosing(
                            session.execute(
                                code, number, allow_stdin=self._cell_allow_stdin, parent=_msg_id(self._last_parent)
                            )
                        ) as cell_events,
                        contextlib.aclosing(merged_streams(cell_events)) as produced_events,
                    ):
                        async for produced in produced_events:
                            # Everything a sandbox outputs is untrusted: the output policy first.
                            for event in self._guard(produced):
                                failure = self._relay(event, silent) or failure
                finally:
                    self._account(session, time.perf_counter() - started, silent)
        except SandboxError as exc:
            failure = ErrorOutput.from_exception(exc)
            if not silent:
                self._publish_error(failure)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the cell with a reply
            log.exception("cell failed inside the kernel")
            failure = ErrorOutput(
                "SandboxKernelError",
                f"internal error in the sandbox kernel: {exc!r}",
                [f"SandboxKernelError: internal error in the sandbox kernel: {exc!r} (see the kernel log)"],
            )
            if not silent:
                self._publish_error(failure)
        if failure is not None:
            return {
                "status": "error",
                "execution_count": self.execution_count,
                "ename": failure.ename,
                "evalue": failure.evalue,
                "traceback": failure.traceback,
            }
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        try:
            session = await self._ready()
            result = await session.complete(code, cursor_pos)
            matches, start, end = result.matches, result.cursor_start, result.cursor_end
        except SandboxError:
            matches, start, end = [], cursor_pos, cursor_pos
        return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": end, "metadata": {}}

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        try:
            session = await self._ready()
            result = await session.inspect(code, cursor_pos, detail_level)
            found, data = result.found, result.data
            if self.active_content != "allow":
                data = output_policy.filter_bundle(data).data  # the help pane renders it too
        except SandboxError:
            found, data = False, {}
        return {"status": "ok", "found": found, "data": data, "metadata": {}}

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        if MAGIC.match(code.split("\n", 1)[0]) and "\n" not in code.strip():
            return {"status": "complete"}
        try:
            # A console waits 1 s, then stops asking for good: "unknown" (run it) while the sandbox starts.
            session = await asyncio.wait_for(self._ready(), IS_COMPLETE_WAIT)
            status, indent = await session.is_complete(code)
        except (SandboxError, asyncio.TimeoutError):
            status, indent = "unknown", ""
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = indent
        return reply

    # -- control thread -------------------------------------------------------------------------

    def _on_shell_loop(self, coro: Any, timeout: float) -> None:
        """Run ``coro`` on the shell event loop from a worker thread (see the module's docstring)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            future.result(timeout)
        except Exception:  # noqa: BLE001 - report, but never take the control thread down
            log.warning("sandbox request failed", exc_info=True)

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        if self.session_obj is not None:
            session = self.session_obj
            await asyncio.get_running_loop().run_in_executor(None, self._on_shell_loop, session.interrupt(), 5)
        if self.session is not None:
            self.session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        if self.session_obj is not None:
            session = self.session_obj
            await asyncio.get_running_loop().run_in_executor(
                None, self._on_shell_loop, session.close(), session.close_timeout
            )
        return {"status": "ok", "restart": restart}
