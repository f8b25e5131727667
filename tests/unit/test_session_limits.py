"""A bounded kernel at the byte-stream seam: output limits enforced before queueing, and
malformed frames that end the cell in a protocol error instead of raising (issue 11, item 3).

Reuses the fake agent channel of ``test_session.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from sandbox_kernel.messages import check
from sandbox_kernel.protocol import Message, encode
from sandbox_kernel.output_gate import OutputGate
from sandbox_kernel.session import DisplayData, ErrorOutput, ExecuteResult, Stream
from test_session import FakeChannel, FakeSession, done, run


def msg(**body: Any) -> bytes:
    """A msg frame; lone surrogates are written as JSON escapes, as Node's JSON.stringify does."""
    return encode("msg", json.dumps(body, separators=(",", ":")).encode("ascii"))


def publishable(events: list) -> None:
    """Every event survives what jupyter_client does to it (JSON without NaN, UTF-8)."""
    for event in events:
        json.dumps(event.__dict__, ensure_ascii=False, allow_nan=False).encode("utf-8")


def raw_msg(text: str) -> bytes:
    """A msg frame with exactly this JSON text (for things encode_message would not write)."""
    return encode("msg", text.encode("utf-8"))


def one_cell(script_for_execute, **limits: object) -> list:
    def script(req: dict) -> bytes | None:
        return script_for_execute(req) if req["type"] == "execute" else None

    async def main() -> list:
        session = FakeSession(script, **limits)
        await session.start()
        return await run(session)

    return asyncio.run(main())


# -- malformed frames ------------------------------------------------------------------------

MALFORMED = {
    "traceback not a list": lambda i: msg(type="error", id=i, ename="E", evalue="v", traceback="oops"),
    "traceback items not strings": lambda i: msg(type="error", id=i, ename="E", evalue="v", traceback=["a", 1, None]),
    "ename not a string": lambda i: msg(type="error", id=i, ename=5, evalue="v", traceback=[]),
    "display data a list": lambda i: msg(type="display", id=i, data=[1, 2], metadata={}),
    "display data value a number": lambda i: msg(type="display", id=i, data={"text/plain": 5}),
    "display metadata a string": lambda i: msg(type="display", id=i, data={"text/plain": "x"}, metadata="m"),
    "result data a string": lambda i: msg(type="result", id=i, data="42"),
    "id a number": lambda i: msg(type="display", id=5, data={"text/plain": "x"}),
    "nested too deep": lambda i: raw_msg(
        '{"type":"display","id":"%s","data":{"application/json":%s}}' % (i, "[" * 200 + "]" * 200)
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_message_ends_the_cell_in_a_protocol_error(case: str) -> None:
    events = one_cell(lambda req: encode("out", b"before\n") + MALFORMED[case](req["id"]) + done(req))
    publishable(events)
    assert [e.text for e in events if isinstance(e, Stream)] == ["before\n"]
    assert isinstance(events[-1], ErrorOutput) and events[-1].ename == "ProtocolError", events
    assert "malformed" in events[-1].evalue
    assert len([e for e in events if isinstance(e, ErrorOutput)]) == 1


@pytest.mark.parametrize(
    "done_body",
    [
        {"truncated": "lots"},
        {"truncated": -1},
        {"truncated": True},
        {"truncated": 1.5},
        {"status": "sideways"},
        {"status": ["ok"]},
    ],
)
def test_a_malformed_done_still_ends_the_cell(done_body: dict) -> None:
    events = one_cell(lambda req: encode("out", b"x") + msg(type="done", id=req["id"], **{"status": "ok", **done_body}))
    publishable(events)
    assert isinstance(events[-1], ErrorOutput) and events[-1].ename == "ProtocolError"
    assert "'done'" in events[-1].evalue


def test_lone_surrogates_become_replacement_characters_everywhere() -> None:
    lone = "a\ud800b\udfffc"
    events = one_cell(
        lambda req: (
            msg(type="display", id=req["id"], data={"text/plain": lone, lone: "k"}, metadata={"m": [lone]})
            + msg(type="error", id=req["id"], ename=lone, evalue=lone, traceback=[lone])
            + done(req, status="error")
        )
    )
    publishable(events)
    display = next(e for e in events if isinstance(e, DisplayData))
    assert display.data["text/plain"] == "a\ufffdb\ufffdc" and "a\ufffdb\ufffdc" in display.data
    assert display.metadata == {"m": ["a\ufffdb\ufffdc"]}
    assert events[-1] == ErrorOutput("a\ufffdb\ufffdc", "a\ufffdb\ufffdc", ["a\ufffdb\ufffdc"])


def test_non_finite_numbers_become_null() -> None:
    events = one_cell(
        lambda req: (
            raw_msg('{"type":"result","id":"%s","data":{"application/json":{"x":NaN,"y":[Infinity,1.5]}}}' % req["id"])
            + done(req)
        )
    )
    publishable(events)
    assert events[-1] == ExecuteResult({"application/json": {"x": None, "y": [None, 1.5]}}, {})


def test_many_malformed_messages_give_one_error() -> None:
    events = one_cell(lambda req: b"".join(msg(type="display", id=req["id"], data=7) for _ in range(1000)) + done(req))
    errors = [e for e in events if isinstance(e, ErrorOutput)]
    assert len(errors) == 1 and "1000 malformed messages" in errors[0].evalue


def test_check_is_pure_and_keeps_good_messages_as_they_are() -> None:
    body = {
        "type": "display",
        "id": "c1",
        "data": {"text/html": ["<b>", "x</b>"], "application/json": {"a": [1, None]}},
        "metadata": {},
    }
    checked = check(Message(body))
    assert checked.problem is None
    assert checked.body["data"] == {"text/html": "<b>x</b>", "application/json": {"a": [1, None]}}
    assert check(Message({"type": "mystery", "id": [1]})).problem is None  # unknown: ignored, not an error
    assert check(Message({"type": "complete_reply", "id": "q1", "matches": "abc"})).problem


def test_a_failing_write_ends_the_cell_with_an_error_instead_of_raising() -> None:
    class BrokenPipeChannel(FakeChannel):
        async def write(self, data: bytes) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    class Session(FakeSession):
        async def _spawn(self):  # type: ignore[override]
            channel = BrokenPipeChannel(self.script)
            self.spawned.append(channel)
            return channel

    async def main() -> list:
        session = Session(lambda req: None)
        await session.start()
        return await run(session)

    events = asyncio.run(main())
    assert isinstance(events[-1], ErrorOutput) and events[-1].ename == "SandboxLost"


def test_a_bug_while_handling_output_ends_the_cell_with_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox_kernel import output_gate

    def boom(self: Any, frames: list) -> list:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(output_gate.CellOutput, "events", boom)
    events = one_cell(lambda req: encode("out", b"x") + done(req))
    assert isinstance(events[-1], ErrorOutput) and events[-1].ename == "ProtocolError"
    assert "unexpected" in events[-1].evalue


# -- output limits ---------------------------------------------------------------------------


def tiny_displays(req: dict, n: int) -> bytes:
    return b"".join(msg(type="display", id=req["id"], data={"text/plain": str(i)}, metadata={}) for i in range(n))


def test_100000_tiny_displays_are_capped_with_one_notice() -> None:
    started = time.monotonic()
    events = one_cell(
        lambda req: (
            tiny_displays(req, 100_000) + msg(type="result", id=req["id"], data={"text/plain": "42"}) + done(req)
        )
    )
    elapsed = time.monotonic() - started
    displays = [e for e in events if isinstance(e, DisplayData)]
    notices = [e.text for e in events if isinstance(e, Stream) and "output truncated" in e.text]
    # 1000 per second through the rate limit (a bucket of one second's worth, refilled at 1000/s):
    # never more than that in the time the flood took, however loaded the machine is.
    assert 1000 <= len(displays) <= 1000 * (1 + elapsed) + 1
    assert len(notices) == 1 and f"{100_000 - len(displays)} output messages" in notices[0]
    assert "Sandbox.output_rate" in notices[0]
    assert ExecuteResult({"text/plain": "42"}, {}) in events  # control still flows


def test_display_bytes_count_against_the_output_limit_with_streams() -> None:
    big = "y" * 10_000
    sizes: list[int] = []

    def script(req: dict) -> bytes:
        payload = json.dumps({"type": "display", "id": req["id"], "data": {"text/plain": big}}).encode()
        sizes.append(len(payload))
        display = encode("msg", payload)
        return encode("out", b"x" * 30_000) + display * 20 + encode("out", b"z" * 10_000) + done(req)

    events = one_cell(script, output_limit="64Ki", output_rate=0)
    displays = [e for e in events if isinstance(e, DisplayData)]
    stdout = "".join(e.text for e in events if isinstance(e, Stream) and e.name == "stdout")
    assert len(displays) == 3  # 30,000 + 3 x ~10 KB fit in 64 KiB, the fourth does not
    assert stdout.startswith("x" * 30_000) and set(stdout[30_000:]) == {"z"}
    assert len(stdout) + 3 * sizes[0] == 64 * 1024  # the last stream output is cut at the limit
    notices = [e.text for e in events if isinstance(e, Stream) and e.name == "stderr"]
    assert len(notices) == 1 and "17 output messages" in notices[0] and "65536 bytes per cell" in notices[0]


def test_rate_limit_drops_messages_over_the_rate() -> None:
    events = one_cell(lambda req: tiny_displays(req, 100) + done(req), output_rate=10)
    displays = [e for e in events if isinstance(e, DisplayData)]
    assert 10 <= len(displays) <= 12
    notices = [e.text for e in events if isinstance(e, Stream) and e.name == "stderr"]
    assert len(notices) == 1 and "10 messages per second" in notices[0]


def test_the_gate_refills_one_rate_per_second() -> None:
    now = [0.0]
    gate = OutputGate(limit=0, rate=5, clock=lambda: now[0])
    gate.start_cell()
    assert [gate.message(10) for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] += 0.4
    assert [gate.message(10) for _ in range(3)] == [True, True, False]
    now[0] += 100
    assert sum(gate.message(10) for _ in range(20)) == 5  # the bucket holds one second's worth
    assert gate.tally.dropped_messages == 2 + 1 + 15


def test_errors_results_and_done_get_through_a_flood() -> None:
    events = one_cell(
        lambda req: (
            encode("out", b"x" * 5000)
            + tiny_displays(req, 500)
            + msg(type="error", id=req["id"], ename="ValueError", evalue="bad", traceback=["ValueError: bad"])
            + done(req, status="error")
        ),
        output_limit="1Ki",
        output_rate=5,
    )
    assert [e for e in events if isinstance(e, ErrorOutput)] == [ErrorOutput("ValueError", "bad", ["ValueError: bad"])]
    assert len([e for e in events if isinstance(e, DisplayData)]) == 0  # the 1 KiB went to stdout
    assert "output truncated" in events[-1].text


def test_output_between_cells_is_bounded_and_told_once() -> None:
    calls = {"n": 0}

    def script(req: dict) -> bytes | None:
        if req["type"] != "execute":
            return None
        calls["n"] += 1
        return encode("out", f"cell {calls['n']}\n".encode()) + done(req)

    async def main() -> tuple[list, list, int, int]:
        session = FakeSession(script, output_limit="64Ki")
        await session.start()
        first = await run(session)
        channel = session.spawned[-1]
        # A background thread floods between cells: streams, displays of the last cell and none,
        # replies no one asked for, and a forged done.
        flood = (
            b"".join(encode("out", b"o" * 4000) for _ in range(2500))  # 10 MB
            + b"".join(msg(type="display", id=None, data={"text/plain": "d"}) for _ in range(3000))
            + b"".join(msg(type="display", id="c1", data={"text/plain": "d"}) for _ in range(3000))
            + b"".join(msg(type="complete_reply", id="q9", matches=["x"] * 100) for _ in range(1000))
            + msg(type="done", id=None, status="ok")
        )
        for at in range(0, len(flood), 65536):
            channel.inbox.put_nowait(flood[at : at + 65536])
        while not channel.inbox.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        held = sum(len(item.data) for item in session._frames._items if hasattr(item, "data"))
        items = len(session._frames)
        second = await run(session)
        return first, second, held, items

    first, second, held, items = asyncio.run(main())
    assert held <= 64 * 1024 and items <= 2  # the kernel holds one cell's worth, joined
    notices = [e.text for e in second if isinstance(e, Stream) and "between cells" in e.text]
    assert len(notices) == 1
    assert "6000 display messages" in notices[0] and "at most 65536 bytes" in notices[0]
    assert second[0].text == notices[0]  # told first
    stdout = "".join(e.text for e in second if isinstance(e, Stream) and e.name == "stdout")
    assert stdout == "o" * (64 * 1024) + "cell 2\n"  # the forged done did not end cell 2 early
    assert not [e for e in second if isinstance(e, (DisplayData, ErrorOutput))]


def test_replies_nobody_asked_for_are_dropped_and_the_real_one_gets_through() -> None:
    def script(req: dict) -> bytes | None:
        if req["type"] == "complete":
            forged = b"".join(msg(type="complete_reply", id=f"old{i}", matches=["forged"]) for i in range(2000))
            return forged + msg(type="complete_reply", id=req["id"], matches=["print"], cursor_start=0, cursor_end=2)
        return None

    async def main() -> tuple[Any, int]:
        session = FakeSession(script)
        await session.start()
        completion = await session.complete("pr", 2)
        await asyncio.sleep(0.05)
        return completion, len(session._frames)

    completion, left = asyncio.run(main())
    assert completion.matches == ["print"] and (completion.cursor_start, completion.cursor_end) == (0, 2)
    assert left == 0  # nothing forged was kept


def test_a_malformed_reply_degrades_to_an_empty_answer() -> None:
    def script(req: dict) -> bytes | None:
        if req["type"] == "complete":
            return msg(type="complete_reply", id=req["id"], matches="abc", cursor_start="x")
        return None

    async def main() -> Any:
        session = FakeSession(script)
        await session.start()
        return await session.complete("pr", 2)

    completion = asyncio.run(main())
    assert completion.matches == [] and (completion.cursor_start, completion.cursor_end) == (2, 2)
