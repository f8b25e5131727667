"""The kernel's five ZeroMQ sockets, bound where the connection file says, and its heartbeat.

The connection file (written by the frontend's kernel manager, ``-f FILE``) gives the transport,
address, ports, key and signature scheme, and with CurveZMQ keys (``curve_secretkey``) every
socket is a Curve server, as in ipykernel 7. Ports that are 0 or missing (a file the kernel
makes itself) are picked and written back. The heartbeat echoes on a thread and a ZeroMQ
context of its own (``zmq.proxy`` runs without the GIL), so a busy kernel still answers it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger("sandbox_kernel")

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
LINGER_MS = 1000
"""How long closing a socket may wait for its last messages (the shutdown reply) to go out."""


@dataclass
class Connection:
    """What the connection file says."""

    transport: str = "tcp"
    ip: str = "127.0.0.1"
    key: bytes = b""
    signature_scheme: str = "hmac-sha256"
    ports: dict[str, int] = field(default_factory=dict)
    curve_publickey: bytes | None = None
    curve_secretkey: bytes | None = None

    @classmethod
    def read(cls, path: str) -> Connection:
        info = json.loads(Path(path).read_text())
        public, secret = info.get("curve_publickey"), info.get("curve_secretkey")
        return cls(
            transport=str(info.get("transport", "tcp")),
            ip=str(info.get("ip", "127.0.0.1")),
            key=str(info.get("key", "")).encode(),
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            ports={name: int(info.get(f"{name}_port") or 0) for name in CHANNELS},
            curve_publickey=public.encode() if public else None,
            curve_secretkey=secret.encode() if secret else None,
        )

    def write(self, path: str) -> None:
        """Write (or complete) the connection file, owner-only as jupyter_client writes it."""
        target = Path(path)
        info = json.loads(target.read_text()) if target.exists() else {}
        info.update({f"{name}_port": port for name, port in self.ports.items()})
        info.update(transport=self.transport, ip=self.ip, key=self.key.decode(), signature_scheme=self.signature_scheme)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(info, out, indent=2)

    @classmethod
    def new(cls) -> Connection:
        return cls(key=secrets.token_hex(16).encode())

    def url(self, port: int) -> str:
        return f"{self.transport}://{self.ip}" + (f":{port}" if self.transport == "tcp" else f"-{port}")

    def secure(self, socket: zmq.Socket[Any]) -> None:
        socket.linger = LINGER_MS
        if self.curve_secretkey is not None:
            socket.curve_secretkey = self.curve_secretkey
            socket.curve_publickey = self.curve_publickey
            socket.curve_server = True

    def bind(self, socket: zmq.Socket[Any], name: str) -> None:
        """Bind ``socket`` to its port (a free one when the port is 0), and record the port."""
        self.secure(socket)
        port = self.ports.get(name, 0)
        if port:
            socket.bind(self.url(port))
        elif self.transport == "tcp":
            port = socket.bind_to_random_port(f"tcp://{self.ip}")
        else:
            port = 1
            while Path(f"{self.ip}-{port}").exists():
                port += 1
            socket.bind(self.url(port))
        self.ports[name] = port


class Sockets:
    """The bound sockets: ``shell``, ``control``, ``iopub`` (zmq.asyncio, for the kernel's loop),
    ``stdin`` (blocking: input requests wait for the frontend in a thread) and the heartbeat."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.context = zmq.asyncio.Context()
        self.stdin_context = zmq.Context()
        self.sockets: dict[str, Any] = {
            "shell": self.context.socket(zmq.ROUTER),
            "control": self.context.socket(zmq.ROUTER),
            "iopub": self.context.socket(zmq.XPUB),
            "stdin": self.stdin_context.socket(zmq.ROUTER),
        }
        for name in ("shell", "control", "stdin"):
            # ipykernel's workaround for zeromq reconnect problems (ipython/ipykernel#270).
            self.sockets[name].router_handover = 1
        for name, socket in self.sockets.items():
            connection.bind(socket, name)
        self.heartbeat = Heartbeat(connection)
        self.heartbeat.start()
        self.heartbeat.bound.wait(10)
        if self.heartbeat.error is not None:
            raise self.heartbeat.error

    @property
    def ports(self) -> dict[str, int]:
        return {f"{name}_port": port for name, port in self.connection.ports.items()}

    def close(self) -> None:
        """Close the sockets (each waits up to LINGER_MS for what it still has to send)."""
        for socket in self.sockets.values():
            socket.close()
        self.context.term()
        self.stdin_context.term()
        self.heartbeat.stop()


class Heartbeat(threading.Thread):
    """Echo every heartbeat ping (a ROUTER proxied onto itself, as ipykernel's Heartbeat)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(name="Heartbeat", daemon=True)
        self.connection = connection
        self.context = zmq.Context()
        self.bound = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        socket = self.context.socket(zmq.ROUTER)
        try:
            self.connection.bind(socket, "hb")
        except Exception as exc:  # noqa: BLE001 - handed to the thread that started us
            self.error = exc
            socket.close()
            self.bound.set()
            return
        self.bound.set()
        try:
            zmq.proxy(socket, socket)
        except zmq.ZMQError:
            pass  # the context was terminated: the kernel is exiting
        finally:
            socket.close(linger=0)

    def stop(self) -> None:
        self.context.term()
