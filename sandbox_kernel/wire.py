"""Jupyter messages on the wire: signing, serialization and parsing, as the messaging spec says.

What ``jupyter_client.session.Session`` does for a kernel, without importing ``jupyter_client``
(its package imports its managers, clients and provisioners: ~0.1 s of a kernel's start). A
message is the frames ``[*identities, b"<IDS|MSG>", signature, header, parent_header,
metadata, content, *buffers]``; the signature is the HMAC (the connection file's
``signature_scheme``, ``hmac-sha256``) of the four JSON frames, hex-encoded. Received messages
with a missing or wrong signature, or a signature seen before (a replay), are refused, as by
``jupyter_client``: :meth:`Session.deserialize` raises :class:`ValueError`.
``tests/unit/test_wire.py`` checks both directions against ``jupyter_client``'s own Session.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import uuid
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("sandbox_kernel")

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.4"
"""The messaging protocol version this kernel speaks (``kernel_info_reply``, every header)."""

DIGEST_HISTORY = 1 << 16
"""How many signatures are remembered to refuse replays (jupyter_client's ``digest_history_size``)."""


def utcnow() -> str:
    """Now, as the ISO 8601 string jupyter_client writes into headers (``...Z``)."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has neither; jupyter_client's json_clean)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def pack(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_default)
    except ValueError:
        log.warning("a message had NaN or infinity in it; sent as null")
        text = json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, default=_default)
    return text.encode("utf-8", errors="surrogateescape")


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        obj = obj if obj.tzinfo else obj.replace(tzinfo=timezone.utc)
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, (bytes, memoryview)):
        import base64

        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def extract_header(parent: Any) -> dict[str, Any]:
    """The header of ``parent`` (a message, or a header itself); ``{}`` for none."""
    if not parent:
        return {}
    header = parent.get("header", parent)
    return dict(header) if isinstance(header, dict) else {}


class Session:
    """Signs, sends and parses the messages of one kernel (one key, one session id)."""

    def __init__(self, key: bytes, signature_scheme: str = "hmac-sha256", username: str = "kernel") -> None:
        scheme, _, digest = signature_scheme.partition("-")
        if scheme != "hmac" or digest not in hashlib.algorithms_available:
            raise ValueError(f"unsupported signature_scheme {signature_scheme!r}: only hmac-<hash> is")
        self.key = key
        self._auth = hmac.new(key, digestmod=digest) if key else None
        self.session = str(uuid.uuid4())
        self.username = username
        self._count = itertools.count()  # next() is atomic: stdin's thread sends too
        self._pid = os.getpid()
        self._seen: set[bytes] = set()

    # -- building -----------------------------------------------------------------------------

    def msg_header(self, msg_type: str) -> dict[str, Any]:
        msg_id = f"{self.session}_{self._pid}_{next(self._count)}"
        return {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": self.username,
            "session": self.session,
            "date": utcnow(),
            "version": PROTOCOL_VERSION,
        }

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        parent: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        header = self.msg_header(msg_type)
        return {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": msg_type,
            "parent_header": extract_header(parent),
            "content": {} if content is None else content,
            "metadata": dict(metadata or {}),
        }

    def sign(self, parts: list[bytes]) -> bytes:
        if self._auth is None:
            return b""
        h = self._auth.copy()
        for part in parts:
            h.update(part)
        return h.hexdigest().encode()

    def serialize(self, msg: dict[str, Any], ident: Any = None) -> list[bytes]:
        parts = [pack(msg["header"]), pack(msg["parent_header"]), pack(msg["metadata"]), pack(msg["content"])]
        idents = list(ident) if isinstance(ident, list) else ([] if ident is None else [ident])
        return [*idents, DELIM, self.sign(parts), *parts]

    def send(
        self,
        socket: Any,
        msg_or_type: Any,
        content: dict[str, Any] | None = None,
        parent: Any = None,
        ident: Any = None,
        buffers: Any = None,
        track: bool = False,
        header: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a message (``jupyter_client.Session.send``'s arguments); return it as a dict."""
        msg = msg_or_type if isinstance(msg_or_type, dict) else self.msg(msg_or_type, content, parent, metadata)
        frames: list[Any] = self.serialize(msg, ident)
        if buffers:
            frames.extend(buffers)
        sent = socket.send_multipart(frames)
        if sent is not None and hasattr(sent, "add_done_callback"):  # a zmq.asyncio socket's future
            sent.add_done_callback(_log_send_failure)
        return msg

    # -- parsing ------------------------------------------------------------------------------

    @staticmethod
    def feed_identities(frames: list[Any]) -> tuple[list[bytes], list[bytes]]:
        """Split the routing identities off a received message."""
        frames = [bytes(f) for f in frames]
        try:
            at = frames.index(DELIM)
        except ValueError:
            raise ValueError("a message without the <IDS|MSG> delimiter") from None
        return frames[:at], frames[at + 1 :]

    def deserialize(self, frames: list[bytes]) -> dict[str, Any]:
        """The message of ``frames`` (signature first), checked; ValueError if it is not sound."""
        if len(frames) < 5:
            raise ValueError(f"a malformed message: {len(frames)} frames, at least 5 are needed")
        if self._auth is not None:
            signature = frames[0]
            if not signature:
                raise ValueError("an unsigned message")
            if signature in self._seen:
                raise ValueError("a replayed message (a signature seen before)")
            if not hmac.compare_digest(signature, self.sign(frames[1:5])):
                raise ValueError("a message with an invalid signature")
            self._remember(signature)
        header = json.loads(frames[1])
        parent = json.loads(frames[2])
        metadata = json.loads(frames[3])
        content = json.loads(frames[4])
        if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str) or not isinstance(content, dict):
            raise ValueError("a message whose header or content is not what the spec says")
        return {
            "header": header,
            "msg_id": header.get("msg_id"),
            "msg_type": header["msg_type"],
            "parent_header": parent if isinstance(parent, dict) else {},
            "metadata": metadata if isinstance(metadata, dict) else {},
            "content": content,
            "buffers": [memoryview(b) for b in frames[5:]],
        }

    def _remember(self, signature: bytes) -> None:
        self._seen.add(signature)
        if len(self._seen) > DIGEST_HISTORY:  # forget a tenth, as jupyter_client does
            for old in list(self._seen)[: DIGEST_HISTORY // 10]:
                self._seen.discard(old)

    def recv(self, socket: Any, mode: int | None = None) -> tuple[list[bytes] | None, dict[str, Any] | None]:
        """One message from a (blocking) socket without waiting: ``(None, None)`` when there is none."""
        import zmq

        try:
            frames = socket.recv_multipart(zmq.NOBLOCK if mode is None else mode)
        except zmq.Again:
            return None, None
        idents, rest = self.feed_identities(frames)
        return idents, self.deserialize(rest)


def _log_send_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("sending a message failed: %s", future.exception())
