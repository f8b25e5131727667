"""Checking what an agent sends before the kernel trusts it: one pure function, :func:`check`.

Every ``msg`` frame from a sandbox passes through :func:`check` in the session's reader before
anything else looks at it. User code may be able to write frames of its own (and Node's
``display()`` produces lone UTF-16 surrogates without any forging), so nothing in a message is
assumed: each field of each message type is checked for its type, every string anywhere in the
message has lone surrogates replaced by U+FFFD (they cannot be encoded as UTF-8, so Jupyter's
message serialisation would raise on them), and non-finite numbers (``NaN``, which Python's
``json`` writes and Jupyter's refuses) become ``null``.

A message that breaks the rules comes back with :attr:`~sandbox_kernel.protocol.Message.problem`
set to a sentence naming the field. ``done`` and ``error`` are then still usable (the cell must
end, and it ends in a protocol error); a broken output message carries nothing but its type and
id, and the session drops it and reports the problem in the cell.
"""

from __future__ import annotations

import math
import re
from typing import Any, cast

from .protocol import Message

CONTROL = frozenset(
    {"ready", "done", "error", "complete_reply", "inspect_reply", "is_complete_reply", "usage_reply", "file_reply"}
)
"""Messages that steer the kernel; never dropped by the output limits (see session.py)."""

OUTPUT = frozenset({"display", "update_display", "result", "clear_output"})
"""Messages that carry output: counted against the output limits."""

COMM = frozenset({"comm_open", "comm_msg", "comm_close"})
"""Comm messages from the sandbox (widgets): counted against the output limits like output, and
checked once more by the kernel's comm policy (``comms.py``) before anything is published."""

STDIN = frozenset({"input_request"})
"""``input()`` / ``getpass()`` in a running cell: the kernel asks the frontend (stdin channel)."""

KNOWN = CONTROL | OUTPUT | COMM | STDIN

MAX_BUFFERS = 64
"""Most binary buffers one comm message may carry."""

MAX_DEPTH = 100
"""Deepest nesting of lists and objects accepted inside a message."""

DONE_STATUS = ("ok", "error", "interrupted")
IS_COMPLETE_STATUS = ("complete", "incomplete", "invalid", "unknown")

_SURROGATE = re.compile("[\ud800-\udfff]")


class _Bad(Exception):
    """A field breaks the rules; the text says which and how."""


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def clean_json(value: Any, where: str = "message", depth: int = 0) -> Any:
    """A copy of a decoded JSON value that Jupyter can always serialise."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        raise _Bad(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, list):
        return [clean_json(item, where, depth + 1) for item in value]
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item, where, depth + 1) for key, item in value.items()}
    raise _Bad(f"{where} holds a {type(value).__name__}, which is not JSON")  # not from json.loads


def _what(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _text(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, str):
        raise _Bad(f"'{name}' must be a string, not {_what(value)}")
    return clean_text(value)


def _integer(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"'{name}' must be a whole number of 0 or more, not {_what(value)} ({value!r:.40})")
    return value


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"'{name}' must be an object, not {_what(value)}")
    return cast("dict[str, Any]", clean_json(value, f"'{name}'"))


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"'{name}' must be a list of strings, not {_what(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _Bad(f"'{name}' must be a list of strings, but item {index} is {_what(item)}")
    return [clean_text(item) for item in value]


def _bundle(body: dict[str, Any], name: str = "data") -> dict[str, Any]:
    """A MIME bundle: an object whose values are strings, except for JSON types (``*json``)."""
    data = _object(body, name)
    for mime, value in data.items():
        if mime.endswith("json"):
            continue
        if isinstance(value, list) and all(isinstance(part, str) for part in value):
            data[mime] = "".join(value)  # nbformat's multi-line form
        elif not isinstance(value, str):
            raise _Bad(f"'{name}' entry {mime!r:.60} must be a string, not {_what(value)}")
    return data or {"text/plain": ""}


def _ident(body: dict[str, Any]) -> str | None:
    value = body.get("id")
    if value is None or isinstance(value, str):
        return value
    raise _Bad(f"'id' must be a string, not {_what(value)}")


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value not in choices:
        raise _Bad(f"'{name}' must be one of {', '.join(choices)}, not {clean_text(repr(value))[:40]}")
    return cast("str", value)


def _buffers(body: dict[str, Any]) -> list[str]:
    """A comm message's binary buffers: a list of base64 strings (decoded by the kernel)."""
    buffers = _strings(body, "buffers")
    if len(buffers) > MAX_BUFFERS:
        raise _Bad(f"'buffers' holds {len(buffers)} buffers; at most {MAX_BUFFERS} are accepted")
    return buffers


def _checked(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "id": _ident(body)}
    if kind in COMM:
        out["comm_id"] = _text(body, "comm_id")
        if kind == "comm_open":
            out["target_name"] = _text(body, "target_name")
        out["data"] = _object(body, "data")
        out["metadata"] = _object(body, "metadata")
        out["buffers"] = _buffers(body)
    elif kind == "input_request":
        out["prompt"] = _text(body, "prompt", "")
        password = body.get("password", False)
        if not isinstance(password, bool):
            raise _Bad(f"'password' must be true or false, not {_what(password)}")
        out["password"] = password
        out["seq"] = _integer(body, "seq", 0)
    elif kind in ("display", "update_display", "result"):
        out["data"] = _bundle(body)
        out["metadata"] = _object(body, "metadata")
        if kind != "result":
            out["transient"] = _object(body, "transient")
    elif kind == "clear_output":
        wait = body.get("wait", False)
        if not isinstance(wait, bool):
            raise _Bad(f"'wait' must be true or false, not {_what(wait)}")
        out["wait"] = wait
    elif kind == "error":
        out["ename"] = _text(body, "ename", "Error")
        out["evalue"] = _text(body, "evalue", "")
        out["traceback"] = _strings(body, "traceback")
    elif kind == "done":
        out["status"] = _choice(body, "status", DONE_STATUS, "ok")
        out["truncated"] = _integer(body, "truncated", 0)
    elif kind == "ready":
        info = _object(body, "language_info")
        out["language_info"] = info
        if not isinstance(info.get("name", ""), str):
            raise _Bad("'language_info.name' must be a string")
        out["agent"] = _text(body, "agent", "")
        out["protocol"] = _integer(body, "protocol", 0)
        out["comms"] = body.get("comms") is True
        out["binary_files"] = body.get("binary_files") is True
    elif kind == "complete_reply":
        out["matches"] = _strings(body, "matches")
        for name in ("cursor_start", "cursor_end"):  # absent: the session uses the request's cursor
            if body.get(name) is not None:
                out[name] = _integer(body, name, 0)
        out["metadata"] = _object(body, "metadata")
    elif kind == "inspect_reply":
        found = body.get("found", False)
        if not isinstance(found, bool):
            raise _Bad(f"'found' must be true or false, not {_what(found)}")
        out["found"] = found
        out["data"] = _bundle(body)
        out["metadata"] = _object(body, "metadata")
    elif kind == "is_complete_reply":
        out["status"] = _choice(body, "status", IS_COMPLETE_STATUS, "unknown")
        out["indent"] = _text(body, "indent", "")
    elif kind == "file_reply":  # file_write / file_read / file_list (workspace/transfer.py, writeback_remote.py)
        if body.get("error") is not None:
            out["error"] = _text(body, "error", "")[:1000]
        if body.get("size") is not None:
            out["size"] = _integer(body, "size", 0)
        data = body.get("data")
        if data is not None:
            if not isinstance(data, str):  # base64, decoded (and bounded) by workspace/transfer.py
                raise _Bad("'data' must be a base64 string")
            out["data"] = data
        for name in ("files", "skipped"):  # file_list: workspace/writeback_remote.py checks every entry
            if body.get(name) is not None:
                if not isinstance(body[name], list):
                    raise _Bad(f"'{name}' must be a list, not {_what(body[name])}")
                out[name] = body[name]
        truncated = body.get("truncated")
        if truncated is not None:
            if truncated is not False and not isinstance(truncated, str):
                raise _Bad(f"'truncated' must be false or a string, not {_what(truncated)}")
            out["truncated"] = truncated
    elif kind == "usage_reply":  # absent or null: not known in the sandbox
        for name in ("memory", "memory_limit", "memory_peak", "cgroup"):
            if body.get(name) is not None:
                out[name] = _integer(body, name, 0)
        cpu = body.get("cpu_seconds")
        if cpu is not None:
            if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not cpu >= 0 or not math.isfinite(cpu):
                raise _Bad(f"'cpu_seconds' must be a number of 0 or more, not {_what(cpu)}")
            out["cpu_seconds"] = float(cpu)
    return out


def _fallback(kind: str, body: dict[str, Any], problem: str) -> dict[str, Any]:
    """What stands in for a broken message: enough for the session to carry on."""
    ident = body.get("id")
    out: dict[str, Any] = {"type": kind, "id": clean_text(ident) if isinstance(ident, str) else None}
    if kind == "done":
        out.update(status="error", truncated=0)
    elif kind == "error":
        out.update(ename="ProtocolError", evalue=problem, traceback=[f"ProtocolError: {problem}"])
    elif kind == "ready":
        out.update(language_info={}, agent="", protocol=0)
    elif kind == "complete_reply":
        out.update(matches=[], metadata={})
    elif kind == "inspect_reply":
        out.update(found=False, data={"text/plain": ""}, metadata={})
    elif kind == "is_complete_reply":
        out.update(status="unknown", indent="")
    return out


def check(message: Message) -> Message:
    """Validate one agent→kernel message; return a clean copy (see the module's docstring).

    Unknown types come back as just ``type`` and ``id``: the session ignores them. Never raises.
    """
    kind = clean_text(message.type)
    body = message.body
    if kind not in KNOWN:
        return Message({"type": kind, "id": None}, size=message.size)
    try:
        return Message(_checked(kind, body), size=message.size)
    except _Bad as bad:
        problem = f"malformed {kind!r} message from the sandbox: {bad}"
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError: still only a bad message
        problem = f"malformed {kind!r} message from the sandbox ({type(exc).__name__})"
    return Message(_fallback(kind, body, problem), size=message.size, problem=problem)
