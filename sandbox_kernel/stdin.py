"""``input()`` and ``getpass()`` in the sandbox, answered by the frontend over Jupyter's stdin channel.

The agent sends an ``input_request`` while its cell waits; the kernel sends the frontend an
``input_request`` on the stdin socket, waits for the ``input_reply`` in a thread (the socket is
a plain zmq socket, and the shell event loop must keep reading the sandbox meanwhile), and hands
the value back. The wait ends early when the cell ends (interrupted, timed out, the sandbox
lost): :meth:`StdinRequest.cancel`. A reply longer than :data:`MAX_REPLY_CHARS` is refused
with a clear error in the cell instead of being cut.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import zmq

log = logging.getLogger("sandbox_kernel")

MAX_REPLY_CHARS = 256 << 10
"""Longest answer to ``input()`` passed to the sandbox (characters)."""

EOF = "\x04"
"""What a frontend sends for end of input (Ctrl-D): ``input()`` raises EOFError, as in ipykernel."""


class StdinRequest:
    """One question to the frontend, waited for in a thread."""

    def __init__(self, session: Any, socket: Any, ident: Any, parent: Any) -> None:
        self._session, self._socket, self._ident, self._parent = session, socket, ident, parent
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    async def ask(self, prompt: str, password: bool) -> str | None:
        """The frontend's answer, or ``None`` if cancelled or the socket failed."""
        return await asyncio.get_running_loop().run_in_executor(None, self._ask, prompt, password)

    def _ask(self, prompt: str, password: bool) -> str | None:
        socket = self._socket
        try:
            while True:  # stale replies (an earlier, interrupted question)
                socket.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._session.send(
            socket, "input_request", {"prompt": prompt, "password": password}, self._parent, ident=self._ident
        )
        while not self._cancelled.is_set():
            try:
                readable, _, failed = zmq.select([socket], [], [socket], 0.05)
                if readable or failed:
                    _, reply = self._session.recv(socket)
                    if reply is not None and reply["header"].get("msg_type") == "input_reply":
                        value = reply["content"].get("value", "")
                        return value if isinstance(value, str) else ""
            except Exception:  # noqa: BLE001 - a bad message; keep waiting, as ipykernel does
                log.warning("invalid message on the stdin channel", exc_info=True)
        return None


def check_reply(value: str) -> tuple[str | None, str | None]:
    """``(value, error)`` to send the sandbox for the frontend's answer ``value``."""
    if len(value) > MAX_REPLY_CHARS:
        return None, (
            f"the answer to input() has {len(value)} characters; at most {MAX_REPLY_CHARS} are passed to the sandbox"
        )
    return value, None
