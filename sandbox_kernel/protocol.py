"""The framed byte protocol spoken between the kernel and an in-sandbox agent.

The format is specified in ``agents/PROTOCOL.md``. In short, a frame is an ASCII header
``<kind> <length>\\n`` followed by ``length`` payload bytes, where ``kind`` is ``msg`` (a JSON
object), ``out`` or ``err`` (raw bytes the user's code wrote to stdout or stderr).

This module is pure: :func:`encode` builds frames and :class:`FrameDecoder` turns an arbitrary
chunking of bytes back into frames, so both are tested without processes.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Union

from .errors import ProtocolError

MAX_PAYLOAD = 2 << 20
"""Largest payload a frame may carry (2 MiB): a message with a 1 MiB image (base64, 4/3 of its
size, in JSON) fits in one frame. What a cell may output in all is ``Sandbox.output_limit``."""

MAX_HEADER = 32
"""Longest header line accepted, newline included."""

PROTOCOL_VERSION = 2

Kind = Literal["msg", "out", "err"]
KINDS: tuple[str, ...] = ("msg", "out", "err")


@dataclass(frozen=True)
class Message:
    """A decoded ``msg`` frame: one JSON object with a ``type``."""

    body: dict[str, Any]
    size: int = field(default=0, compare=False)
    """Bytes of the frame's payload (what the output limits count)."""
    problem: str | None = field(default=None, compare=False)
    """Set by :func:`sandbox_kernel.messages.check` when a field broke the rules: what was wrong."""

    @property
    def type(self) -> str:
        return str(self.body.get("type", ""))


@dataclass(frozen=True)
class Output:
    """A decoded ``out``/``err`` frame: raw bytes from the user's code."""

    stream: Literal["stdout", "stderr"]
    data: bytes


Frame = Union[Message, Output]


def encode(kind: Kind, payload: bytes) -> bytes:
    """Return one frame carrying ``payload``."""
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"%s %d\n" % (kind.encode("ascii"), len(payload)) + payload


def encode_file_write(body: dict[str, Any], data: bytes) -> bytes:
    """Return a ``bin`` frame (kernel to agent only, for an agent whose ``ready`` said
    ``binary_files``): a ``file_write`` whose chunk travels as raw bytes after its JSON line, with
    no base64 (a third less to send, nothing to encode or decode)."""
    meta = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    payload = meta + b"\n" + data
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"bin %d\n" % len(payload) + payload


def encode_message(body: dict[str, Any]) -> bytes:
    """Return a ``msg`` frame carrying ``body`` as JSON."""
    if not isinstance(body.get("type"), str):
        raise ValueError("a message needs a string 'type'")
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a frontend may send one in a cell's code)
        payload = re.sub("[\ud800-\udfff]", "\ufffd", text).encode("utf-8")
    return encode("msg", payload)


class FrameDecoder:
    """Incrementally decode frames from chunks of bytes.

    Feed it whatever the stream delivers; it yields complete frames and keeps the rest.
    Any violation of the format raises :class:`~sandbox_kernel.errors.ProtocolError`, after
    which the decoder is unusable (the stream cannot be trusted to resynchronise).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need: tuple[str, int] | None = None  # (kind, length) of the frame being read
        self._broken: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Frame]:
        if self._broken:
            raise self._broken
        self._buf += data
        try:
            yield from self._frames()
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _frames(self) -> Iterator[Frame]:
        while True:
            if self._need is None:
                newline = self._buf.find(b"\n", 0, MAX_HEADER)
                if newline < 0:
                    if len(self._buf) >= MAX_HEADER:
                        raise ProtocolError(f"frame header too long: {bytes(self._buf[:MAX_HEADER])!r}")
                    return
                header = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                self._need = _parse_header(header)
            kind, length = self._need
            if len(self._buf) < length:
                return
            payload = bytes(self._buf[:length])
            del self._buf[:length]
            self._need = None
            yield _frame(kind, payload)


def _parse_header(header: bytes) -> tuple[str, int]:
    parts = header.split(b" ")
    if len(parts) != 2 or parts[0].decode("ascii", "replace") not in KINDS or not parts[1].isdigit():
        raise ProtocolError(f"malformed frame header {header!r}")
    length = int(parts[1])
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    return parts[0].decode("ascii"), length


def _frame(kind: str, payload: bytes) -> Frame:
    if kind == "out":
        return Output("stdout", payload)
    if kind == "err":
        return Output("stderr", payload)
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"message frame is not UTF-8 JSON: {exc}") from exc
    except RecursionError:
        raise ProtocolError("message frame is JSON nested too deeply") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError("message frame is not a JSON object with a string 'type'")
    return Message(body, size=len(payload))


# ---------------------------------------------------------------------------------------------
# Resuming a re-opened stream (PROTOCOL.md, "Resuming after a dropped stream").


@dataclass(frozen=True)
class ResumePoint:
    """What the agent's ``resume`` line says."""

    start: int
    """Output offset the agent replays from (more than asked for: the bytes in between are lost)."""
    received: int
    """Frames the agent has read from the kernel, the ``resume`` included."""


_RESUME_FIELDS = 48  # room for two decimal numbers and a space, with plenty to spare


class ResumeScanner:
    """Find the agent's ``resume <token> <start> <received>`` line in what a re-opened stream delivers.

    Everything before the line is output the replay repeats and is dropped; :meth:`feed`
    returns the line's content and the bytes after it once the whole line has arrived.
    """

    def __init__(self, token: str) -> None:
        self._prefix = b"resume %s " % token.encode("ascii")
        self._buf = bytearray()
        self.dropped = 0
        """Bytes dropped so far (received before the line)."""

    def feed(self, data: bytes) -> tuple[ResumePoint, bytes] | None:
        self._buf += data
        at = self._buf.find(self._prefix)
        if at < 0:
            keep = len(self._prefix) - 1  # a prefix split over two chunks
            if len(self._buf) > keep:
                self.dropped += len(self._buf) - keep
                del self._buf[: len(self._buf) - keep]
            return None
        fields_at = at + len(self._prefix)
        end = self._buf.find(b"\n", fields_at, fields_at + _RESUME_FIELDS)
        if end < 0:
            if len(self._buf) - fields_at >= _RESUME_FIELDS:
                raise ProtocolError(f"malformed resume line {bytes(self._buf[at : at + 100])!r}")
            return None
        fields = bytes(self._buf[fields_at:end]).split(b" ")
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise ProtocolError(f"malformed resume line {bytes(self._buf[at:end])!r}")
        self.dropped += at
        rest = bytes(self._buf[end + 1 :])
        self._buf.clear()
        return ResumePoint(int(fields[0]), int(fields[1])), rest


class SentFrames:
    """The frames the kernel sent, numbered as the agent counts them (its input count).

    After a re-attach the agent says how many frames it has read; :meth:`lost_before` names
    those the kernel sent into the broken stream that never arrived, so they can be sent again.
    The caller serialises all calls (they run under the channel's send lock).
    """

    def __init__(self, keep: int = 256) -> None:
        self.count = 0
        """Frames sent, as the agent will have counted them once it has read them all."""
        self._keep = keep
        self._log: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=keep)

    def record(self, frame: bytes) -> None:
        """A frame was written to the stream."""
        self._log.append((self.count, frame))
        self.count += 1

    def record_resume(self) -> int:
        """A ``resume`` was written (it is never sent again); return its number."""
        self.count += 1
        return self.count - 1

    def lost_before(self, resume: int, received: int) -> tuple[list[bytes], int]:
        """Frames sent before ``resume`` that the agent never read, oldest first, and how many of
        those are no longer kept. They are forgotten, and later frames renumbered, so the caller
        should :meth:`record` each one again as it resends it."""
        missing = resume + 1 - received
        if missing <= 0:
            return [], 0
        first = resume - missing
        lost = [frame for i, frame in self._log if first <= i < resume]
        self._log = collections.deque(
            ((i - missing if i > resume else i, frame) for i, frame in self._log if not first <= i < resume),
            maxlen=self._keep,
        )
        self.count -= missing
        return lost, missing - len(lost)
