"""The framed protocol: encoding, decoding under any chunking, and rejection of bad frames."""

from __future__ import annotations

import json

import pytest

from sandbox_kernel.errors import ProtocolError
from sandbox_kernel.protocol import (
    MAX_PAYLOAD,
    FrameDecoder,
    Message,
    Output,
    ResumePoint,
    ResumeScanner,
    SentFrames,
    encode,
    encode_message,
)


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


# -- resuming a re-opened stream ----------------------------------------------------------------

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("chunk", [1, 5, 40, 1000])
def test_resume_scanner_drops_everything_before_its_line_under_any_chunking(chunk: int) -> None:
    live = b"ut 3\nabcmsg 2\n{}" + b"resume 0000000000000000ffffffffffffffff 1 2\n"  # another token: not ours
    stream = live + b"resume %s 1234 7\n" % TOKEN.encode() + b"out 1\nx"
    scanner = ResumeScanner(TOKEN)
    found = None
    rest = b""
    for i in range(0, len(stream), chunk):
        if found is None:
            found = scanner.feed(stream[i : i + chunk])
            if found is not None:
                rest = found[1]
        else:
            rest += stream[i : i + chunk]
    assert found is not None and found[0] == ResumePoint(1234, 7)
    assert rest == b"out 1\nx"
    assert scanner.dropped == len(live)


@pytest.mark.parametrize("line", [b"resume %s 12\n", b"resume %s a b\n", b"resume %s " + b"9" * 60])
def test_a_malformed_resume_line_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResumeScanner(TOKEN).feed(line.replace(b"%s", TOKEN.encode()))


def test_sent_frames_names_the_requests_a_broken_stream_swallowed() -> None:
    sent = SentFrames()
    for name in (b"a", b"b", b"c", b"d"):
        sent.record(name)
    resume = sent.record_resume()
    sent.record(b"e")  # written on the new stream before the agent answered
    assert resume == 4
    lost, forgotten = sent.lost_before(resume, received=3)  # the agent read a, b and the resume
    assert (lost, forgotten) == ([b"c", b"d"], 0)
    for frame in lost:
        sent.record(frame)
    # The agent now counts: a b resume e c d.
    assert sent.count == 6
    assert sent.lost_before(sent.record_resume(), received=7) == ([], 0)


def test_sent_frames_reports_requests_too_old_to_send_again() -> None:
    sent = SentFrames(keep=2)
    for name in (b"a", b"b", b"c"):
        sent.record(name)
    assert sent.lost_before(sent.record_resume(), received=1) == ([b"b", b"c"], 1)
    assert SentFrames().lost_before(0, received=1) == ([], 0)  # nothing lost


def test_a_file_write_in_a_bin_frame_carries_its_chunk_raw_and_the_kernel_never_takes_one() -> None:
    from sandbox_kernel.protocol import encode_file_write

    chunk = b"\x00msg 3\n{}\xff" * 10
    frame = encode_file_write({"type": "file_write", "id": "f1", "path": "a b\n.bin", "offset": 0}, chunk)
    header, _, payload = frame.partition(b"\n")
    assert header == b"bin %d" % len(payload)
    meta, _, raw = payload.partition(b"\n")
    assert json.loads(meta) == {"type": "file_write", "id": "f1", "path": "a b\n.bin", "offset": 0} and raw == chunk
    with pytest.raises(ValueError, match="exceeds"):
        encode_file_write({"type": "file_write"}, b"x" * MAX_PAYLOAD)
    with pytest.raises(ProtocolError):  # agent -> kernel: an unknown kind
        list(FrameDecoder().feed(frame))
