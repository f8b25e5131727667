"""update_display, clear_output and display ids from the agent (IPython.display) through the
session and the output policy, at the byte-stream seam."""

from __future__ import annotations

import asyncio

from test_session import FakeSession, done

from sandbox_kernel.messages import check
from sandbox_kernel.output_policy import guard
from sandbox_kernel.protocol import Message, encode_message
from sandbox_kernel.session import ClearOutput, DisplayData, ErrorOutput


def cell(frames: list[dict], count: int | None = 7) -> tuple[list, list[dict]]:
    def script(req: dict) -> bytes | None:
        if req["type"] != "execute":
            return None
        return b"".join(encode_message({"id": req["id"], **frame}) for frame in frames) + done(req)

    async def main() -> tuple[list, list[dict]]:
        session = FakeSession(script)
        await session.start()
        events = [event async for event in session.execute("x", count)]
        return events, session.spawned[0].sent

    return asyncio.run(main())


def test_display_ids_updates_and_clears_become_events_in_order() -> None:
    events, sent = cell(
        [
            {"type": "display", "data": {"text/plain": "1"}, "transient": {"display_id": "bar"}},
            {"type": "update_display", "data": {"text/plain": "2"}, "transient": {"display_id": "bar"}},
            {"type": "clear_output", "wait": True},
            {"type": "display", "data": {"text/plain": "3"}, "transient": {"display_id": 5, "other": "x"}},
        ]
    )
    assert events == [
        DisplayData({"text/plain": "1"}, {}, {"display_id": "bar"}),
        DisplayData({"text/plain": "2"}, {}, {"display_id": "bar"}, update=True),
        ClearOutput(wait=True),
        DisplayData({"text/plain": "3"}, {}, {}),  # only a string display_id is kept
    ]
    assert sent[-1]["cell"] == 7  # the kernel's number reaches the agent


def test_an_update_without_a_display_id_is_dropped_and_a_bad_clear_is_reported() -> None:
    events, sent = cell(
        [
            {"type": "update_display", "data": {"text/plain": "2"}},
            {"type": "update_display", "data": {"text/plain": "2"}, "transient": {"display_id": "x" * 1001}},
            {"type": "clear_output", "wait": "yes"},
        ],
        count=None,
    )
    assert not [e for e in events if isinstance(e, (DisplayData, ClearOutput))]
    (error,) = [e for e in events if isinstance(e, ErrorOutput)]
    assert "'wait' must be true or false" in error.evalue
    assert "cell" not in sent[-1]  # not stored in history (silent)


def test_the_output_policy_filters_updates_and_keeps_their_display_id() -> None:
    update = DisplayData(
        {"text/html": "<b onclick='x()'>hi</b>", "application/javascript": "x()"}, {}, {"display_id": "d"}, update=True
    )
    filtered, notice = guard(update, "block")
    assert isinstance(filtered, DisplayData) and filtered.update and filtered.transient == {"display_id": "d"}
    assert filtered.data == {"text/html": "<b>hi</b>"} and "application/javascript" in notice.text
    assert guard(ClearOutput(True), "block") == [ClearOutput(True)]


def test_clear_output_is_checked_like_any_output_message() -> None:
    good = check(Message({"type": "clear_output", "id": "c1", "wait": False}, size=40))
    assert good.problem is None and good.body == {"type": "clear_output", "id": "c1", "wait": False}
    assert check(Message({"type": "clear_output", "id": "c1", "wait": 1}, size=40)).problem


MATPLOTLIB_SVG_HEAD = (
    '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n'
    '  "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
)


def test_matplotlib_svg_keeps_its_figure_and_no_other_doctype_gets_through() -> None:
    from sandbox_kernel.output_policy import filter_bundle

    svg = MATPLOTLIB_SVG_HEAD + '<svg xmlns="http://www.w3.org/2000/svg"><path d="M 0 0 L 1 1" onload="x()"/></svg>'
    kept = filter_bundle({"image/svg+xml": svg})
    assert not kept.dropped and "<path" in kept.data["image/svg+xml"] and "onload" not in kept.data["image/svg+xml"]
    for bad in (
        '<!DOCTYPE svg PUBLIC "a" "b" [<!ENTITY x "y">]><svg xmlns="http://www.w3.org/2000/svg">&x;</svg>',
        '<!DOCTYPE svg SYSTEM "file:///etc/passwd"><svg xmlns="http://www.w3.org/2000/svg"/>',
        MATPLOTLIB_SVG_HEAD + '<!DOCTYPE svg [<!ENTITY x "y">]><svg xmlns="http://www.w3.org/2000/svg">&x;</svg>',
    ):
        assert filter_bundle({"image/svg+xml": bad}).dropped == ["image/svg+xml"]
