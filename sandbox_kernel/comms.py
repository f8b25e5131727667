"""Comm messages between the frontend and the sandbox (Jupyter's comms, which ipywidgets use).

The kernel relays comm messages both ways and keeps the one registry of open comms the frontend
can know of: comms the sandbox opened (and the kernel accepted) and comms the frontend opened.
:class:`CommRelay` holds it and applies the checks; it knows Jupyter message contents and
nothing of the kernel's sockets, so it is tested on its own.

From the sandbox (untrusted), each message must name a well-formed comm id (:data:`COMM_ID`),
carry JSON data and valid base64 buffers within :data:`MAX_BUFFER_BYTES`, and belong to an open
comm (``comm_msg``, ``comm_close``) or open a new one to a target on
``widget_policy.SANDBOX_TARGETS``; a ``target_module`` (which a frontend could load as code) is
never passed on. Widget states go through ``widget_policy`` (with ``Sandbox.active_content =
'block'``). Anything refused is not published, and the user is told in one line. The output
limits (count and bytes) were applied before, by the session's output gate.

From the frontend, a message must fit in one protocol frame to the sandbox
(:data:`MAX_FRONTEND_BYTES`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import widget_policy
from .session import CommEvent

COMM_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
"""Comm ids accepted from the sandbox (ipywidgets': 32 hex digits; uuids with dashes)."""

TARGET_NAME = re.compile(r"[A-Za-z0-9._:/@-]{1,128}\Z")

MAX_BUFFER_BYTES = 768 << 10
"""Most bytes of binary buffers (decoded) one comm message may carry, either way."""

MAX_FRONTEND_BYTES = (1 << 20) - 4096
"""Most bytes of JSON one frontend comm message may carry to the sandbox (one protocol frame)."""

WIDGET_METHODS = ("update", "echo_update", "custom")
"""The ``method``s of widget comm messages the frontend acts on."""


@dataclass
class Outgoing:
    """A comm message to publish on IOPub."""

    msg_type: str
    content: dict[str, Any]
    buffers: list[bytes] = field(default_factory=list)


class Refused(Exception):
    """A comm message of the sandbox that is not published; the text says why."""


class CommRelay:
    """The open comms of one kernel and the checks on the way out (see the module's docstring)."""

    def __init__(self, active_content: str = "block") -> None:
        self.active_content = active_content
        self.comms: dict[str, str] = {}
        """comm_id -> target_name of every open comm."""
        self.models: dict[str, str] = {}
        """comm_id -> _model_name of every widget model the sandbox opened."""

    @property
    def widget_models(self) -> frozenset[str]:
        """Ids of the widget models the kernel accepted (widget views of others are dropped)."""
        return frozenset(self.models)

    def reset(self) -> list[Outgoing]:
        """The sandbox was replaced: every comm is gone. The comm_close messages that tell the frontend."""
        closing = [Outgoing("comm_close", {"comm_id": comm_id, "data": {}}) for comm_id in self.comms]
        self.comms.clear()
        self.models.clear()
        return closing

    def info(self, target_name: str | None = None) -> dict[str, dict[str, str]]:
        """``comm_info_reply``'s ``comms``: the open comms, of ``target_name`` if given."""
        return {cid: {"target_name": t} for cid, t in self.comms.items() if not target_name or t == target_name}

    # -- from the frontend --------------------------------------------------------------------

    def from_frontend(self, kind: str, content: dict[str, Any], buffers: list[bytes]) -> list[str]:
        """Check a frontend comm message and note what it opens or closes; return its buffers as
        base64 for the sandbox. Raises :class:`Refused` for a message that cannot be forwarded."""
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str) or not COMM_ID.match(comm_id):
            raise Refused(f"comm id {str(comm_id)[:80]!r} is not accepted")
        size = sum(len(b) for b in buffers)
        if size > MAX_BUFFER_BYTES:
            raise Refused(f"its buffers hold {size} bytes; at most {MAX_BUFFER_BYTES} are forwarded to the sandbox")
        encoded = [base64.b64encode(b).decode("ascii") for b in buffers]
        try:
            body = len(json.dumps([content.get("data"), content.get("metadata")], allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise Refused(f"its data is not JSON ({exc})") from None
        if body + sum(len(b) for b in encoded) > MAX_FRONTEND_BYTES:
            raise Refused(f"it is over {MAX_FRONTEND_BYTES} bytes, the most one message to the sandbox may hold")
        if kind == "comm_open":
            target = content.get("target_name")
            if not isinstance(target, str) or not TARGET_NAME.match(target):
                raise Refused(f"target name {str(target)[:80]!r} is not accepted")
            self.comms[comm_id] = target
        elif comm_id not in self.comms:
            raise Refused(f"comm {comm_id} is not open")
        elif kind == "comm_close":
            self.comms.pop(comm_id, None)
            self.models.pop(comm_id, None)
        return encoded

    # -- from the sandbox ---------------------------------------------------------------------

    def from_sandbox(self, event: CommEvent) -> Outgoing:
        """What to publish for a comm message of the sandbox; raises :class:`Refused`."""
        content = event.content
        comm_id = content.get("comm_id", "")
        if not COMM_ID.match(comm_id):
            raise Refused(f"its comm id {comm_id[:80]!r} is not accepted (at most 128 letters, digits and ._:-)")
        buffers = _decode(event.buffers)
        data = content.get("data") or {}
        metadata = content.get("metadata") or {}
        check = self.active_content != "allow"
        if event.kind == "comm_open":
            target = content.get("target_name", "")
            if comm_id in self.comms:
                raise Refused(f"comm {comm_id} is already open")
            if not TARGET_NAME.match(target) or (check and target not in widget_policy.SANDBOX_TARGETS):
                raise Refused(
                    f"target {target[:80]!r} is not one the sandbox may open a comm to "
                    f"({', '.join(widget_policy.SANDBOX_TARGETS)})"
                )
            model = None
            if target == widget_policy.WIDGET_TARGET:
                state = data.get("state")
                if check:
                    checked = widget_policy.check_open(state, self.widget_models | {comm_id})
                    if checked.refused:
                        raise Refused(f"widget {comm_id} was refused: {checked.refused}")
                    data = {**data, "state": checked.state}
                model = str(state.get("_model_name", "")) if isinstance(state, dict) else ""
            self.comms[comm_id] = target
            if model is not None:
                self.models[comm_id] = model
            return Outgoing(
                "comm_open", {"comm_id": comm_id, "target_name": target, "data": data, "metadata": metadata}, buffers
            )
        target = self.comms.get(comm_id)
        if target is None:
            raise Refused(f"comm {comm_id} is not open")
        if event.kind == "comm_close":
            del self.comms[comm_id]
            self.models.pop(comm_id, None)
            return Outgoing("comm_close", {"comm_id": comm_id, "data": data, "metadata": metadata}, buffers)
        if check and target == widget_policy.WIDGET_TARGET:
            data = self._widget_message(comm_id, data)
        elif check and target == widget_policy.CONTROL_TARGET:
            data, buffers = self._control_reply(data, buffers)
        return Outgoing("comm_msg", {"comm_id": comm_id, "data": data, "metadata": metadata}, buffers)

    def _widget_message(self, comm_id: str, data: dict[str, Any]) -> dict[str, Any]:
        method = data.get("method")
        if method not in WIDGET_METHODS:
            raise Refused(f"widget message method {str(method)[:40]!r} is not one of {', '.join(WIDGET_METHODS)}")
        if method == "custom":
            return data
        checked = widget_policy.check_update(self.models.get(comm_id, ""), data.get("state"), self.widget_models)
        if checked.refused:
            raise Refused(f"an update of widget {comm_id} was refused: {checked.refused}")
        return {**data, "state": checked.state}

    def _control_reply(self, data: dict[str, Any], buffers: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        """ipywidgets' answer on the control comm: every model's state (kept: the accepted ones)."""
        states = data.get("states")
        if data.get("method") != "update_states" or not isinstance(states, dict):
            return data, buffers
        kept: dict[str, Any] = {}
        for model_id, entry in states.items():
            if model_id not in self.models or not isinstance(entry, dict):
                continue
            checked = widget_policy.check_update(self.models[model_id], entry.get("state"), self.widget_models)
            if not checked.refused:
                kept[model_id] = {**entry, "state": checked.state}
        paths, kept_buffers = [], []
        for index, path in enumerate(data.get("buffer_paths") or []):
            if isinstance(path, list) and path and path[0] in kept and index < len(buffers):
                paths.append(path)
                kept_buffers.append(buffers[index])
        return {**data, "states": kept, "buffer_paths": paths}, kept_buffers


def _decode(buffers: list[str]) -> list[bytes]:
    decoded, total = [], 0
    for text in buffers:
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise Refused("a buffer is not base64") from None
        total += len(raw)
        if total > MAX_BUFFER_BYTES:
            raise Refused(f"its buffers hold more than {MAX_BUFFER_BYTES} bytes")
        decoded.append(raw)
    return decoded
