"""The thread the ``%%sandbox`` magics' sessions live on, and the exit hook that closes them.

Sessions are asyncio objects, but the host's main thread is busy running the cell (ipykernel
already has an event loop there, terminal IPython may not). So every session lives on one
daemon thread with its own event loop; the cell's thread only submits coroutines to it. The
thread lasts as long as the process on purpose: bubblewrap's ``--die-with-parent`` fires when
the *thread* that started it ends.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import time
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


class SessionThread:
    """A daemon thread running the event loop that owns every sandbox session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sandbox-sessions", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the session loop and wait for its result (Ctrl-C cancels it)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise

    def finish(self, coro: Coroutine[Any, Any, Any], timeout: float) -> None:
        """Run clean-up ``coro`` to the end even through Ctrl-C, so no sandbox is left half-closed."""
        future = self.submit(coro)
        deadline = time.monotonic() + timeout
        interrupted = False
        while True:
            try:
                future.result(max(0.0, deadline - time.monotonic()))
                break
            except KeyboardInterrupt:
                interrupted = True
            except concurrent.futures.TimeoutError:
                future.cancel()
                break
        if interrupted:
            raise KeyboardInterrupt


def at_exit(func: Any) -> None:
    """Call ``func`` when the interpreter exits, while it can still start threads for work.

    Closing a sandbox runs blocking clean-up (removing cgroups) in the event loop's default
    executor, and ``concurrent.futures`` refuses new work once its own exit hook has run, which
    is before plain ``atexit`` handlers. ``threading._register_atexit`` hooks run earlier (last
    registered first); it is private, so fall back to ``atexit`` where it is missing.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(func)
            return
    except RuntimeError:  # already shutting down
        return
    atexit.register(func)
