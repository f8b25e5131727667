"""``python -m sandbox_kernel.kernelapp -f CONNECTION_FILE``: what a kernelspec starts.

The kernel process imports neither IPython nor ipykernel: its cells run in the sandbox, so it
needs Jupyter's protocol (:mod:`.kernel_base`, :mod:`.wire`, :mod:`.kernel_sockets`), not a
Python shell. The start is ordered so that the sandbox starts while the process still imports:

1. the configuration: ``sandbox_kernel_config.py`` from every Jupyter config directory, then
   the command line (``--Class.trait=value``) on top;
2. the sandbox session is made and its start begins on the kernel's event loop (bubblewrap and
   the agent's interpreter start in processes of their own; a Kubernetes sandbox was already
   begun before any import, :mod:`.kubernetes.early`);
3. meanwhile, in a thread, the rest is imported (ZeroMQ, the kernel, the output policy), then
   the sockets are bound and requests are answered; the first cell or ``kernel_info_request``
   waits for the start that is already under way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any


PARENT_POLL_INTERVAL = 1.0
"""Seconds between two looks at whether the frontend that started the kernel is still there."""


def _may_be_kubernetes(argv: list[str]) -> bool:
    """Whether the backend could be Kubernetes, from what is known before any configuration is
    read (the environment wins, then the command line; otherwise a config file decides)."""
    given = [a.partition("=")[2] for a in argv if a.startswith("--SandboxKernel.backend=")]
    chosen = os.environ.get("SANDBOX_KERNEL_BACKEND") or (given[-1] if given else "")  # as config.chosen_backend
    return chosen in ("", "kubernetes")


if __name__ == "__main__" and _may_be_kubernetes(sys.argv[1:]):
    # Before anything else: a Kubernetes sandbox is created meanwhile (its pod takes a second
    # or more to run). See kubernetes/early.py.
    from sandbox_kernel.kubernetes import early

    early.begin(sys.argv[1:])

from jupyter_core.paths import jupyter_config_path  # noqa: E402
from traitlets import Unicode  # noqa: E402
from traitlets.config.application import Application  # noqa: E402

log = logging.getLogger("sandbox_kernel")


class SandboxKernelApp(Application):
    """The kernel process: reads ``sandbox_kernel_config.py`` and the command line, runs :class:`SandboxKernel`."""

    name = "sandbox-kernel"
    description = "A Jupyter kernel whose cells run in a sandbox."

    connection_file = Unicode(
        "",
        help="The connection file the frontend wrote (ports, key); made with free ports when it does not exist.",
    ).tag(config=True)

    aliases = {"f": "SandboxKernelApp.connection_file", "log-level": "Application.log_level"}
    flags = {"debug": ({"Application": {"log_level": logging.DEBUG}}, "Log at DEBUG level.")}

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        # Settings live with the rest of Jupyter's configuration, e.g.
        # ~/.jupyter/sandbox_kernel_config.py, lowest priority first.
        for path in reversed(jupyter_config_path()):
            super().load_config_file("sandbox_kernel_config.py", path=path)

    def initialize(self, argv: Any = None) -> None:
        self.parse_command_line(argv)
        cli = self.cli_config
        self.load_config_file()
        self.update_config(cli)  # the command line wins over the files

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()  # without waiting for worker threads still blocked (asyncio.run would)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        session, starting = self._begin_sandbox()
        # The sandbox's start goes on on this loop while a thread imports the rest.
        modules = await loop.run_in_executor(None, _import_the_rest)
        kernel_sockets, kernel_module, wire = modules
        from pathlib import Path

        connection = (
            kernel_sockets.Connection.read(self.connection_file)
            if self.connection_file and Path(self.connection_file).exists()
            else kernel_sockets.Connection.new()
        )
        sockets = kernel_sockets.Sockets(connection)
        if not self.connection_file or not Path(self.connection_file).exists():
            connection.write(self.connection_file or "kernel-sandbox.json")
        kernel = kernel_module.SandboxKernel(config=self.config, session_obj=session, early_start=starting)
        kernel.attach(wire.Session(connection.key, connection.signature_scheme), sockets.sockets, sockets.ports)
        # SIGINT interrupts the running cell, like an interrupt_request. (A handler, not
        # SIG_IGN: an ignored signal stays ignored across exec, and the sandbox's processes
        # could then never be interrupted.)
        loop.add_signal_handler(signal.SIGINT, kernel.interrupt_from_signal)
        parent = _parent_pid()
        watcher = asyncio.ensure_future(_watch_parent(kernel, parent)) if parent else None
        try:
            await kernel.serve()
        finally:
            if watcher is not None:
                watcher.cancel()
            loop.remove_signal_handler(signal.SIGINT)
            sockets.close()

    def _begin_sandbox(self) -> tuple[Any, Any]:
        """The kernel's session and the task starting it, made from the configuration alone
        (``(None, None)`` if that fails: the kernel then reports the error itself)."""
        from .errors import SandboxError
        from .sessions import chosen_backend, make_session

        kernel = self.config.SandboxKernel
        try:
            session = make_session(
                chosen_backend(str(kernel.get("backend", "") or "")),
                str(kernel.get("language_name", "python")),
                config=self.config,
            )
        except (SandboxError, ValueError):
            return None, None
        return session, asyncio.ensure_future(session.start())


def _parent_pid() -> int | None:
    """The process that started the kernel, as jupyter_client tells it (``JPY_PARENT_PID``), if
    it is still the kernel's parent (not init: an orphan at start cannot be watched)."""
    try:
        parent = int(os.environ.get("JPY_PARENT_PID", ""))
    except ValueError:
        return None
    return parent if parent > 1 and os.getppid() == parent else None


async def _watch_parent(kernel: Any, parent: int) -> None:
    """Like ipykernel's parent poller: once the frontend process that started the kernel is
    gone (killed, crashed), the kernel shuts down and closes its sandbox instead of living on
    as an orphan holding it."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_POLL_INTERVAL)
    await kernel.stop(f"the process that started the kernel ({parent}) has exited")


def _import_the_rest() -> tuple[Any, Any, Any]:
    from . import kernel, kernel_sockets, wire

    return kernel_sockets, kernel, wire


def main() -> None:
    app = SandboxKernelApp()
    app.initialize(sys.argv[1:])
    level = int(app.log_level)  # type: ignore[call-overload]
    if level < logging.WARNING:  # --debug; otherwise warnings and errors go to stderr as they are
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s %(asctime)s %(name)s] %(message)s"))
        log.addHandler(handler)
        log.setLevel(level)
    app.start()


if __name__ == "__main__":
    main()
