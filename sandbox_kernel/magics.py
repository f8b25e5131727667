"""``%load_ext sandbox_kernel``: ``%%sandbox`` cells in an ordinary IPython kernel.

::

    %%sandbox [python|node|bash] [--timeout S] [--memory M] [--cpu C]
    ...code that runs in the sandbox...

    %sandbox status            # the sandboxes this kernel runs, with their usage
    %sandbox stop [LANGUAGE]   # close one (or every) sandbox; its variables are gone

Each language gets one sandbox session, built by :func:`~sandbox_kernel.sessions.make_session`
with the same backends and settings as a Sandbox kernel (``c.Sandbox.*`` and
``c.SandboxKernel.backend`` from ``sandbox_kernel_config.py`` or the IPython profile, env
``SANDBOX_KERNEL_BACKEND``). It lives across ``%%sandbox`` cells, so variables persist, until
``%sandbox stop`` or the host kernel exits. A cell may ask for *stricter* limits than the
configured ones: a lower ``--timeout`` lowers the session's time limit for that cell only;
``--memory`` and ``--cpu`` need cgroups or a pod of their own, so that cell runs in a one-off
sandbox that is destroyed afterwards.

Threads: every session lives on one daemon thread with its own event loop
(``magic_thread.py`` says why); the cell's thread only submits coroutines to it and relays the
events it gets back. Ctrl-C (SIGINT, delivered to the main thread) becomes
``session.interrupt()``. The per-cell limits are checked in ``magic_limits.py``.
"""

from __future__ import annotations

import asyncio
import queue
import shlex
import sys
from typing import Any, Coroutine, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from traitlets.config import Config

from . import output_policy
from .config import Sandbox, check_timeout
from .errors import TIMEOUT_HINT, ConfigError, SandboxError
from .languages import LANGUAGES, get_language
from .magic_limits import CellLimits, check_cell_limits, one_off_config
from .magic_thread import SessionThread, at_exit
from .session import ClearOutput, DisplayData, ErrorOutput, ExecuteResult, ReportTopic, SandboxSession, Stream
from .sessions import chosen_backend, make_session

T = TypeVar("T")

CLOSE_TIMEOUT = 60.0
"""Seconds to wait for sandboxes to be destroyed at ``%sandbox stop`` and at exit."""


# ---------------------------------------------------------------------------------------------
# What the host shows for a failed sandbox cell.


class SandboxCellError(Exception):
    """A ``%%sandbox`` cell failed. IPython shows :meth:`_render_traceback_` (the sandbox's own
    traceback) instead of a host traceback through this module."""

    def __init__(self, error: ErrorOutput) -> None:
        super().__init__(error.evalue)
        self.error = error

    def _render_traceback_(self) -> list[str]:
        return list(self.error.traceback) or [f"{self.error.ename}: {self.error.evalue}"]


_error_classes: dict[str, type[SandboxCellError]] = {}


def cell_error(error: ErrorOutput) -> SandboxCellError:
    """The exception to raise for ``error``; its class is named after the sandbox's error
    (``ZeroDivisionError``, ``CellTimeout``, …) so the execute reply carries that name too."""
    cls = _error_classes.get(error.ename)
    if cls is None:
        cls = type(error.ename, (SandboxCellError,), {"__module__": "sandbox"})
        _error_classes[error.ename] = cls
    return cls(error)


class SandboxResult:
    """The value of the cell's last expression in the sandbox, shown as the host cell's result."""

    def __init__(self, result: ExecuteResult) -> None:
        self.data = result.data
        self.metadata = result.metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", ""))


def _for_magic(error: ErrorOutput, one_off_memory: str | None = None) -> ErrorOutput:
    """Reword the Sandbox kernel's advice for a host kernel: ``%timeout`` means nothing here,
    and a one-off sandbox (``--memory``/``--cpu``) had no variables of earlier cells to lose."""
    if one_off_memory is not None and error.ename == "OutOfMemory":
        text = (
            f"This cell's one-off sandbox ran out of memory (limit {one_off_memory}). Use less memory, or a "
            "larger --memory (at most c.Sandbox.memory_limit, environment variable SANDBOX_MEMORY_LIMIT)."
        )
        return ErrorOutput(error.ename, text, [f"{error.ename}: {text}"])
    better = "Use a larger %%sandbox --timeout (at most c.Sandbox.timeout, environment variable SANDBOX_TIMEOUT) to allow longer cells."
    if TIMEOUT_HINT not in error.evalue:
        return error
    return ErrorOutput(
        error.ename,
        error.evalue.replace(TIMEOUT_HINT, better),
        [line.replace(TIMEOUT_HINT, better) for line in error.traceback],
    )


# ---------------------------------------------------------------------------------------------
# The magics.


def _cell_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="%%sandbox", add_help=False)
    parser.add_argument("language", nargs="?", default="python", help="python (default), node or bash")
    parser.add_argument("--timeout", type=str, help="seconds this cell may run (stricter than Sandbox.timeout)")
    parser.add_argument("--memory", help="memory for this cell, e.g. 64Mi (a one-off sandbox)")
    parser.add_argument("--cpu", help="CPU for this cell, e.g. 250m (a one-off sandbox)")
    return parser


@magics_class
class SandboxMagics(Magics):
    """``%%sandbox`` cells and the ``%sandbox status|stop`` line magic."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)  # type: ignore[no-untyped-call]
        self.sessions: dict[str, SandboxSession] = {}
        self._thread: SessionThread | None = None
        self._parser = _cell_parser()
        # ipykernel's shutdown_request sets exit_now: close the sandboxes while the kernel is
        # still whole. Terminal IPython and other exits go through at_exit instead.
        shell.observe(self._on_exit_now, names="exit_now")
        at_exit(self.close_all)

    # -- configuration ----------------------------------------------------------------------------

    def config_for_sandboxes(self) -> Config:
        """``sandbox_kernel_config.py`` from the Jupyter config path, then the shell's own config
        (``c.Sandbox.*`` in the IPython profile) on top: what a Sandbox kernel would read."""
        from jupyter_core.paths import jupyter_config_path
        from traitlets.config.loader import ConfigFileNotFound, PyFileConfigLoader

        config = Config()
        for path in reversed(jupyter_config_path()):
            try:
                config.merge(PyFileConfigLoader("sandbox_kernel_config.py", path=path).load_config())
            except ConfigFileNotFound:
                continue
        assert self.shell is not None
        config.merge(self.shell.config)
        return config

    def backend(self, config: Config) -> str:
        return chosen_backend(str(config.SandboxKernel.get("backend", "") or ""))

    # -- the session thread -----------------------------------------------------------------------

    @property
    def thread(self) -> SessionThread:
        if self._thread is None:
            self._thread = SessionThread()
        return self._thread

    async def _session(self, language: str, config: Config, backend: str) -> SandboxSession:
        session = self.sessions.get(language)
        if session is None:
            session = make_session(backend, language, config=config)
            try:
                await session.start()
            except BaseException:  # a SandboxError, or Ctrl-C while starting: leave nothing
                await asyncio.shield(session.close())
                raise
            self.sessions[language] = session
        return session

    async def _one_off(self, language: str, config: Config, backend: str) -> SandboxSession:
        session = make_session(backend, language, config=config)
        try:
            await session.start()
        except BaseException:
            await asyncio.shield(session.close())
            raise
        return session

    # -- %%sandbox ------------------------------------------------------------------------------

    @line_cell_magic  # type: ignore[untyped-decorator]
    def sandbox(self, line: str, cell: str | None = None) -> Any:
        """Run a cell in a sandbox, or manage the sandboxes.

        ::

            %%sandbox [python|node|bash] [--timeout S] [--memory M] [--cpu C]
            %sandbox status
            %sandbox stop [python|node|bash]

        A session per language keeps its variables across ``%%sandbox`` cells until
        ``%sandbox stop`` or the end of this kernel. ``--timeout``, ``--memory`` and ``--cpu``
        may only be stricter than the configured ``Sandbox.*`` limits; ``--memory``/``--cpu``
        run the cell in a one-off sandbox without the session's variables.
        """
        if cell is None:
            return self._line(line)
        args = self._parser.parse_args(shlex.split(line))
        try:
            language = get_language(args.language, setting="%%sandbox").name
            config = self.config_for_sandboxes()
            asked = CellLimits(
                timeout=check_timeout(args.timeout) if args.timeout is not None else None,
                memory=args.memory,
                cpu=args.cpu,
            )
            strict = check_cell_limits(asked, Sandbox(config=config))
            backend = self.backend(config)
        except ConfigError as exc:
            raise cell_error(ErrorOutput.from_exception(exc)) from None
        if not cell.strip():
            return None
        if strict.memory is not None or strict.cpu is not None:
            return self._run_one_off(language, one_off_config(config, strict), backend, cell)
        return self._run_in_session(language, config, backend, cell, strict.timeout)

    def _run_in_session(self, language: str, config: Config, backend: str, code: str, timeout: float | None) -> Any:
        session = self._call(self._session(language, config, backend))
        if timeout is None:
            return self._relay(session, code)
        saved = session.timeout
        session.timeout = timeout
        try:
            return self._relay(session, code)
        finally:
            session.timeout = saved

    def _run_one_off(self, language: str, config: Config, backend: str, code: str) -> Any:
        session = self._call(self._one_off(language, config, backend))
        try:
            return self._relay(session, code, one_off=True)
        finally:
            self.thread.finish(session.close(), CLOSE_TIMEOUT)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the session thread; a SandboxError fails the cell with its message."""
        try:
            return self.thread.call(coro)
        except SandboxError as exc:
            raise cell_error(ErrorOutput.from_exception(exc)) from None

    def _relay(self, session: SandboxSession, code: str, one_off: bool = False) -> Any:
        """Run ``code`` and relay its events to this thread's stdout, stderr and displays as they
        come; return the sandbox's result (shown as the cell's value) or raise its error."""
        from IPython.display import publish_display_data

        events: queue.Queue[Any] = queue.Queue()
        done = object()

        try:
            mode = Sandbox(config=self.config_for_sandboxes()).active_content
        except Exception:  # noqa: BLE001 - a bad value never weakens the policy
            mode = "block"

        async def pump() -> None:
            try:
                async for produced in session.execute(code):
                    # The sandbox's output is untrusted: the output policy before the browser.
                    for event in output_policy.guard(produced, mode):
                        events.put(event)
            except SandboxError as exc:
                events.put(ErrorOutput.from_exception(exc))
            except BaseException as exc:  # noqa: BLE001 - hand any bug to the cell's thread
                events.put(exc)
            finally:
                events.put(done)

        self.thread.submit(pump())
        result: SandboxResult | None = None
        failure: ErrorOutput | None = None
        while True:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                # Ctrl-C or the stop button: stop the sandbox cell, then keep relaying until it
                # has ended (within interrupt_grace, even if the sandbox must be replaced).
                self.thread.submit(session.interrupt())
                continue
            if event is done:
                break
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Stream):
                stream = sys.stderr if event.name == "stderr" else sys.stdout
                stream.write(event.text)
                stream.flush()
            elif isinstance(event, DisplayData):
                publish_display_data(
                    data=event.data, metadata=event.metadata, transient=event.transient or None, update=event.update
                )
            elif isinstance(event, ClearOutput):
                from IPython.display import clear_output

                clear_output(wait=event.wait)
            elif isinstance(event, ExecuteResult):
                result = SandboxResult(event)
            elif isinstance(event, ErrorOutput):
                failure = event
        if failure is not None:
            raise cell_error(_for_magic(failure, session.limits.memory if one_off else None))
        return result

    # -- %sandbox status | stop -----------------------------------------------------------------

    def _line(self, line: str) -> None:
        words = line.split()
        command = words[0] if words else "status"
        rest = words[1:]
        if command == "stop":
            names = [get_language(rest[0], setting="%sandbox stop").name] if rest else list(self.sessions)
            if len(rest) > 1:
                raise UsageError("%sandbox stop takes at most one language")
            for name in names:
                if self.close(name):
                    print(f"Stopped the {name} sandbox; its variables are gone.")
                else:
                    print(f"No {name} sandbox is running.")
            if not names:
                print("No sandbox is running.")
            return
        if command == "status":
            if rest:
                raise UsageError("%sandbox status takes no arguments")
            print(self.status())
            return
        raise UsageError(
            f"unknown %sandbox command {command!r}; use '%sandbox status', '%sandbox stop [LANGUAGE]' "
            f"or a %%sandbox [{'|'.join(LANGUAGES)}] cell"
        )

    def status(self) -> str:
        if not self.sessions:
            return "No sandbox is running; a %%sandbox cell starts one."

        async def report(session: SandboxSession) -> str:
            # A Kubernetes report calls the API server (blocking): keep the loop free.
            return await asyncio.get_running_loop().run_in_executor(None, session.report, ReportTopic.STATUS.value)

        parts = []
        for name, session in self.sessions.items():
            parts.append(f"[{name}] {session.backend} backend\n{self.thread.call(report(session), 30)}")
        return "\n\n".join(parts)

    # -- closing -------------------------------------------------------------------------------

    def close(self, language: str) -> bool:
        """Destroy the sandbox of ``language``; False when there was none."""
        session = self.sessions.pop(language, None)
        if session is None:
            return False
        self.thread.finish(session.close(), CLOSE_TIMEOUT)
        return True

    def _on_exit_now(self, change: Any) -> None:
        if change["new"]:
            self.close_all()

    def close_all(self) -> None:
        """Destroy every sandbox. Called at exit (atexit) and when the extension is unloaded."""
        if self._thread is None or not self.sessions:
            return
        sessions, self.sessions = list(self.sessions.values()), {}

        async def close_them() -> None:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

        try:
            self._thread.call(close_them(), CLOSE_TIMEOUT)
        except Exception:  # noqa: BLE001 - at exit nobody is left to tell
            pass


_magics: SandboxMagics | None = None


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%sandbox`` / ``%sandbox`` (``%load_ext sandbox_kernel``)."""
    global _magics
    if _magics is None or _magics.shell is not ipython:
        _magics = SandboxMagics(ipython)
    ipython.register_magics(_magics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext sandbox_kernel``: destroy every sandbox this kernel started."""
    global _magics
    if _magics is not None:
        _magics.close_all()
        if _magics.shell is not None:
            _magics.shell.unobserve(_magics._on_exit_now, names="exit_now")
        _magics = None
