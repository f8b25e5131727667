"""The kernel's own message signing and parsing (wire.py) against jupyter_client's Session: what
one writes the other reads, with the same key; forged, tampered, unsigned and replayed messages
are refused."""

from __future__ import annotations

import math

import pytest
from jupyter_client.session import Session as ClientSession

from sandbox_kernel.wire import DELIM, PROTOCOL_VERSION, Session

KEY = b"0123456789abcdef0123456789abcdef"


def client_frames(
    client: ClientSession, msg_type: str, content: dict, buffers: list[bytes] | None = None
) -> tuple[dict, list[bytes]]:
    msg = client.msg(msg_type, content)
    frames = client.serialize(msg, ident=[b"client-id"])
    return msg, frames + list(buffers or [])


def test_a_request_signed_by_jupyter_client_is_read_with_its_header_content_and_buffers() -> None:
    client, kernel = ClientSession(key=KEY), Session(KEY)
    sent, frames = client_frames(client, "execute_request", {"code": "1", "silent": False}, [b"\x00\x01"])
    idents, rest = kernel.feed_identities(frames)
    got = kernel.deserialize(rest)
    assert idents == [b"client-id"]
    assert got["msg_type"] == "execute_request" and got["header"]["msg_id"] == sent["header"]["msg_id"]
    assert got["content"] == {"code": "1", "silent": False}
    assert [bytes(b) for b in got["buffers"]] == [b"\x00\x01"]


def test_a_reply_signed_by_the_kernel_is_read_by_jupyter_client_with_its_parent() -> None:
    client, kernel = ClientSession(key=KEY), Session(KEY)
    _, frames = client_frames(client, "kernel_info_request", {})
    request = kernel.deserialize(kernel.feed_identities(frames)[1])
    reply = kernel.msg("kernel_info_reply", {"status": "ok", "ratio": 0.5, "text": "é ✓"}, request, {"m": 1})
    wire = kernel.serialize(reply, ident=[b"client-id"])
    assert wire[:2] == [b"client-id", DELIM]
    got = client.deserialize(client.feed_identities(wire)[1])
    assert got["parent_header"]["msg_id"] == request["header"]["msg_id"]
    assert got["header"]["version"] == PROTOCOL_VERSION and got["header"]["session"] == kernel.session
    assert got["content"] == {"status": "ok", "ratio": 0.5, "text": "é ✓"} and got["metadata"] == {"m": 1}


def test_every_message_of_a_session_has_its_own_id() -> None:
    kernel = Session(KEY)
    ids = {kernel.msg("status", {})["header"]["msg_id"] for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize("damage", ["wrong key", "tampered content", "unsigned", "replayed", "too short"])
def test_a_message_that_is_not_sound_is_refused(damage: str) -> None:
    kernel = Session(KEY)
    signer = ClientSession(key=b"another key" if damage == "wrong key" else KEY)
    _, frames = client_frames(signer, "execute_request", {"code": "1"})
    rest = kernel.feed_identities(frames)[1]
    if damage == "tampered content":
        rest[4] = b'{"code": "import os"}'
    elif damage == "unsigned":
        rest[0] = b""
    elif damage == "replayed":
        kernel.deserialize(list(rest))
    elif damage == "too short":
        rest = rest[:4]
    with pytest.raises(ValueError):
        kernel.deserialize(rest)


def test_without_a_key_messages_are_unsigned_both_ways() -> None:
    client, kernel = ClientSession(key=b""), Session(b"")
    _, frames = client_frames(client, "execute_request", {"code": "1"})
    assert kernel.deserialize(kernel.feed_identities(frames)[1])["content"] == {"code": "1"}
    wire = kernel.serialize(kernel.msg("status", {"execution_state": "idle"}))
    assert (
        wire[1] == b"" and client.deserialize(client.feed_identities(wire)[1])["content"]["execution_state"] == "idle"
    )


def test_not_a_number_goes_out_as_null_instead_of_failing_the_message() -> None:
    client, kernel = ClientSession(key=KEY), Session(KEY)
    wire = kernel.serialize(kernel.msg("execute_result", {"data": {"x": math.nan, "y": [math.inf, 1.0]}}))
    assert client.deserialize(client.feed_identities(wire)[1])["content"] == {"data": {"x": None, "y": [None, 1.0]}}


def test_an_unknown_signature_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="signature_scheme"):
        Session(KEY, "rot13")
