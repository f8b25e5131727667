"""The framed protocol: encoding, decoding under any chunking, and rejection of bad frames."""

from __future__ import annotations

import json

import pytest

from sandbox_kernel.errors import ProtocolError
from sandbox_kernel.protocol import MAX_PAYLOAD, FrameDecoder, Message, Output, encode, encode_message


def test_encode_message_is_header_then_json() -> None:
    frame = encode_message({"type": "execute", "id": "c1", "code": "print(1)"})
    header, payload = frame.split(b"\n", 1)
    assert header == b"msg %d" % len(payload)
    assert json.loads(payload) == {"type": "execute", "id": "c1", "code": "print(1)"}


def test_output_payload_is_raw_bytes_even_if_it_looks_like_frames() -> None:
    nasty = b"msg 5\n{...}\x00\xff\xfeerr 3\n"
    frames = list(FrameDecoder().feed(encode("out", nasty) + encode("err", b"e")))
    assert frames == [Output("stdout", nasty), Output("stderr", b"e")]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 100000])
def test_any_chunking_yields_the_same_frames(chunk: int) -> None:
    stream = (
        encode_message({"type": "ready", "language_info": {"name": "python"}})
        + encode("out", "héllo\n".encode())
        + encode("out", b"")
        + encode_message({"type": "done", "id": "c1", "status": "ok"})
    )
    decoder = FrameDecoder()
    frames = []
    for i in range(0, len(stream), chunk):
        frames += list(decoder.feed(stream[i : i + chunk]))
    assert [type(f).__name__ for f in frames] == ["Message", "Output", "Output", "Message"]
    assert frames[1] == Output("stdout", "héllo\n".encode())
    assert isinstance(frames[3], Message) and frames[3].type == "done"
    assert decoder.pending == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello world this is not a frame header at all\n",
        b"msg -1\n",
        b"msg 1x\n",
        b"bogus 3\nabc",
        b"out 3 4\nabc",
        b"msg %d\n" % (MAX_PAYLOAD + 1),
    ],
)
def test_malformed_headers_are_protocol_errors(garbage: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        list(decoder.feed(garbage))
    # Once broken, the decoder refuses to continue: it never resynchronises.
    with pytest.raises(ProtocolError):
        list(decoder.feed(encode_message({"type": "ready"})))


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b'{"no_type": 1}', b"\xff\xfe"])
def test_message_payload_must_be_a_json_object_with_type(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(encode("msg", payload)))


def test_encoder_refuses_oversized_payloads_and_unknown_kinds() -> None:
    with pytest.raises(ValueError):
        encode("out", b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode("bogus", b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_message({"id": 1})
