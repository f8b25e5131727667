"""The comm relay and the widget policy (sandbox_kernel/comms.py, widget_policy.py): pure checks."""

from __future__ import annotations

import base64

import pytest

from sandbox_kernel.comms import MAX_BUFFER_BYTES, CommRelay, Refused
from sandbox_kernel.session import CommEvent

SLIDER = {
    "_model_module": "@jupyter-widgets/controls",
    "_model_name": "IntSliderModel",
    "_view_module": "@jupyter-widgets/controls",
    "value": 3,
    "description": "n",
}


def open_event(comm_id: str, state: dict, target: str = "jupyter.widget") -> CommEvent:
    return CommEvent("comm_open", {"comm_id": comm_id, "target_name": target, "data": {"state": state}, "metadata": {}})


def test_a_widget_opens_updates_and_closes() -> None:
    relay = CommRelay()
    out = relay.from_sandbox(open_event("a1", SLIDER))
    assert out.msg_type == "comm_open" and out.content["data"]["state"]["value"] == 3
    assert relay.widget_models == frozenset({"a1"}) and relay.info() == {"a1": {"target_name": "jupyter.widget"}}
    update = relay.from_sandbox(
        CommEvent("comm_msg", {"comm_id": "a1", "data": {"method": "update", "state": {"value": 4}}})
    )
    assert update.content["data"]["state"] == {"value": 4}
    relay.from_sandbox(CommEvent("comm_close", {"comm_id": "a1", "data": {}}))
    assert relay.info() == {} and not relay.widget_models
    with pytest.raises(Refused, match="not open"):
        relay.from_sandbox(CommEvent("comm_msg", {"comm_id": "a1", "data": {"method": "update", "state": {}}}))


def test_what_the_sandbox_may_not_open_or_send() -> None:
    relay = CommRelay()
    with pytest.raises(Refused, match="target"):
        relay.from_sandbox(open_event("b1", SLIDER, target="bokeh.exec"))
    with pytest.raises(Refused, match="widget list"):
        relay.from_sandbox(open_event("b2", {**SLIDER, "_view_module": "https://evil.example/x.js"}))
    with pytest.raises(Refused, match="jslink"):
        relay.from_sandbox(
            open_event("b3", {**SLIDER, "_model_name": "LinkModel", "_model_module": "@jupyter-widgets/controls"})
        )
    with pytest.raises(Refused, match="comm id"):
        relay.from_sandbox(open_event("../../etc", SLIDER))
    relay.from_sandbox(open_event("b4", SLIDER))
    with pytest.raises(Refused, match="already open"):
        relay.from_sandbox(open_event("b4", SLIDER))
    with pytest.raises(Refused, match="base64"):
        relay.from_sandbox(CommEvent("comm_msg", {"comm_id": "b4", "data": {"method": "custom"}}, ["not base64!"]))
    big = base64.b64encode(b"x" * (MAX_BUFFER_BYTES + 1)).decode()
    with pytest.raises(Refused, match="buffers"):
        relay.from_sandbox(CommEvent("comm_msg", {"comm_id": "b4", "data": {"method": "custom"}}, [big]))
    with pytest.raises(Refused, match="method"):
        relay.from_sandbox(CommEvent("comm_msg", {"comm_id": "b4", "data": {"method": "exec"}}))
    assert set(relay.info()) == {"b4"}


def test_html_widgets_output_widgets_and_styles_are_cleaned() -> None:
    relay = CommRelay()
    html = relay.from_sandbox(
        open_event(
            "h1",
            {
                **SLIDER,
                "_model_name": "HTMLMathModel",
                "description_allow_html": True,
                "value": r"<i>x</i><script>alert(1)</script> $\href{javascript:alert(2)}{y}$",
            },
        )
    )
    state = html.content["data"]["state"]
    assert state["value"] == r"<i>x</i> $href{javascript:alert(2)}{y}$" and state["description_allow_html"] is False
    update = relay.from_sandbox(
        CommEvent(
            "comm_msg",
            {
                "comm_id": "h1",
                "data": {
                    "method": "update",
                    "state": {"value": "<img src=x onerror=alert(3)>", "_model_module": "evil"},
                },
            },
        )
    )
    assert update.content["data"]["state"] == {"value": "<img>"}

    relay.from_sandbox(
        open_event(
            "o1",
            {
                "_model_module": "@jupyter-widgets/output",
                "_model_name": "OutputModel",
                "_view_module": "@jupyter-widgets/output",
                "outputs": [],
            },
        )
    )
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "hi\n"},
        {
            "output_type": "display_data",
            "data": {"text/html": "<b onclick='x()'>b</b>", "application/javascript": "alert(4)"},
            "metadata": {},
        },
        {
            "output_type": "display_data",
            "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "h1"}},
            "metadata": {},
        },
    ]
    update = relay.from_sandbox(
        CommEvent("comm_msg", {"comm_id": "o1", "data": {"method": "update", "state": {"outputs": outputs}}})
    )
    kept = update.content["data"]["state"]["outputs"]
    assert kept[0]["text"] == "hi\n" and kept[1]["data"] == {"text/html": "<b>b</b>"}
    assert kept[2]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] == "h1"

    layout = relay.from_sandbox(
        open_event(
            "l1",
            {
                "_model_module": "@jupyter-widgets/base",
                "_model_name": "LayoutModel",
                "_view_module": "@jupyter-widgets/base",
                "width": "50%",
                "grid_area": "url(https://evil.example/track)",
            },
        )
    )
    assert layout.content["data"]["state"] == {
        "_model_module": "@jupyter-widgets/base",
        "_model_name": "LayoutModel",
        "_view_module": "@jupyter-widgets/base",
        "width": "50%",
    }


def test_active_content_allow_passes_widget_states_unchanged() -> None:
    relay = CommRelay("allow")
    out = relay.from_sandbox(
        open_event("x1", {**SLIDER, "_model_module": "my-widgets", "value": "<script>"}, target="my.target")
    )
    assert out.content["data"]["state"]["value"] == "<script>"


def test_frontend_comms_and_the_control_reply() -> None:
    relay = CommRelay()
    relay.from_sandbox(open_event("w1", SLIDER))
    assert relay.from_frontend(
        "comm_open", {"comm_id": "ctl", "target_name": "jupyter.widget.control", "data": {}}, [b"\x01"]
    ) == ["AQ=="]
    with pytest.raises(Refused, match="not open"):
        relay.from_frontend("comm_msg", {"comm_id": "nope", "data": {}}, [])
    with pytest.raises(Refused, match="over"):
        relay.from_frontend("comm_msg", {"comm_id": "ctl", "data": {"x": "y" * (1 << 20)}}, [])
    reply = relay.from_sandbox(
        CommEvent(
            "comm_msg",
            {
                "comm_id": "ctl",
                "data": {
                    "method": "update_states",
                    "buffer_paths": [["w1", "state", "b"], ["zz", "state", "b"]],
                    "states": {
                        "w1": {"model_name": "IntSliderModel", "state": {"value": 1}},
                        "zz": {"model_name": "Evil", "state": {}},
                    },
                },
            },
            [base64.b64encode(b"1").decode(), base64.b64encode(b"2").decode()],
        )
    )
    assert set(reply.content["data"]["states"]) == {"w1"} and reply.content["data"]["buffer_paths"] == [
        ["w1", "state", "b"]
    ]
    assert reply.buffers == [b"1"]
    assert [c.content["comm_id"] for c in relay.reset()] == ["w1", "ctl"] and relay.info() == {}
