"""The Python agent's comms with the real ``comm`` package, ipywidgets and tqdm (issue 9, item 5).

The agent runs under the kernel's own interpreter here (``sys.executable``: the test extras
install ipywidgets and tqdm there), as a plain subprocess spoken to in frames like the other
agent tests (test_agent_python.py). ``import comm`` gives the real package with the agent's
``create_comm`` / ``get_comm_manager``, which is what ipywidgets uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from agents import AGENTS, Agent, Cell

AGENT = AGENTS / "python_agent.py"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def ok(cell: Cell) -> Cell:
    assert cell.status == "ok", (cell.error, cell.stderr)
    return cell


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    import ipywidgets  # noqa: F401  - in the test extras; its absence is a failure, not a skip
    import tqdm  # noqa: F401

    proc = Agent("python", tmp_path, command=[sys.executable, str(AGENT)], env=ENV)
    yield proc
    proc.close()


def opened_models(messages: list[dict[str, Any]]) -> dict[str, str]:
    return {m["comm_id"]: m["data"]["state"]["_model_name"] for m in messages if m["type"] == "comm_open"}


def test_a_slider_opens_its_models_and_follows_the_frontend(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            """import comm, ipywidgets as widgets
assert comm.create_comm.__module__ == '__main__' or 'agent' in repr(comm.create_comm), comm.create_comm
slider = widgets.IntSlider(value=3, description='n')
seen = []
slider.observe(lambda change: seen.append(change['new']), 'value')
display(slider)
print(slider.model_id)""",
            timeout=60,
        )
    )
    models = opened_models(cell.messages())
    slider_id = cell.stdout.split()[-1]
    assert models[slider_id] == "IntSliderModel" and {"LayoutModel", "SliderStyleModel"} <= set(models.values())
    [view] = cell.messages("display")
    assert view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] == slider_id
    # Every comm_open came before the display that shows the widget.
    kinds = cell.flow()
    assert kinds.index("display") > max(i for i, k in enumerate(kinds) if k == "comm_open")

    # The frontend moves the slider (between cells): the observer runs, ipywidgets echoes it.
    agent.send(
        {
            "type": "comm_msg",
            "id": "m1",
            "comm_id": slider_id,
            "parent": "frontend-msg-1",
            "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []},
            "metadata": {},
            "buffers": [],
        }
    )
    frames = [f.body for f in agent.collect(2.0) if hasattr(f, "body")]
    echo = [b for b in frames if b["type"] == "comm_msg"]
    assert echo and echo[0]["data"] == {"method": "echo_update", "state": {"value": 7}, "buffer_paths": []}
    assert frames[-1] == {"type": "done", "id": "m1", "status": "ok", "truncated": 0}
    assert ok(agent.execute("print(seen, slider.value)")).stdout == "[7] 7\n"

    # Closing from the sandbox.
    cell = ok(agent.execute("slider.close()"))
    assert [m["comm_id"] for m in cell.messages("comm_close")] == [slider_id]


def test_the_control_comm_returns_every_widget_state(agent: Agent) -> None:
    """A reloaded notebook asks for every widget through jupyter.widget.control (ipywidgets
    registers that target at import only under IPython; the agent does it after the cell)."""
    cell = ok(
        agent.execute(
            "import ipywidgets as widgets\nb = widgets.Button(description='go')\nprint(b.model_id)", timeout=60
        )
    )
    button = cell.stdout.split()[-1]
    agent.send(
        {
            "type": "comm_open",
            "id": "m1",
            "comm_id": "control-1",
            "target_name": "jupyter.widget.control",
            "data": {},
            "metadata": {"version": "1.0.0"},
            "buffers": [],
        }
    )
    assert agent.wait_message("done")["id"] == "m1"
    agent.send(
        {
            "type": "comm_msg",
            "id": "m2",
            "comm_id": "control-1",
            "data": {"method": "request_states"},
            "metadata": {},
            "buffers": [],
        }
    )
    reply = agent.wait_message("comm_msg")
    assert reply["comm_id"] == "control-1" and reply["data"]["method"] == "update_states"
    assert reply["data"]["states"][button]["state"]["description"] == "go"


def test_interact_and_the_output_widget_capture_by_the_request(agent: Agent) -> None:
    """interact() shows its function's output in an Output widget, which captures by the Jupyter
    message id of the request being handled (comm.kernel.get_parent())."""
    cell = ok(
        agent.execute(
            """from ipywidgets import interact
@interact(x=5)
def square(x):
    print('square', x * x)
""",
            timeout=60,
        )
    )
    models = opened_models(cell.messages())
    assert {"IntSliderModel", "OutputModel", "VBoxModel"} <= set(models.values())
    slider = next(cid for cid, name in models.items() if name == "IntSliderModel")
    agent.send(
        {
            "type": "comm_msg",
            "id": "m1",
            "comm_id": slider,
            "parent": "frontend-msg-2",
            "data": {"method": "update", "state": {"value": 6}, "buffer_paths": []},
            "metadata": {},
            "buffers": [],
        }
    )
    frames = agent.collect(2.0)
    updates = [f.body["data"]["state"] for f in frames if hasattr(f, "body") and f.body["type"] == "comm_msg"]
    assert {"msg_id": "frontend-msg-2"} in updates  # the Output widget captures this request's output
    assert b"square 36" in b"".join(f.data for f in frames if not hasattr(f, "body"))


def test_tqdm_notebook_drives_a_progress_bar(agent: Agent) -> None:
    cell = ok(
        agent.execute("from tqdm.notebook import tqdm\nfor i in tqdm(range(5), desc='work'):\n    pass", timeout=60)
    )
    models = opened_models(cell.messages())
    assert {"FloatProgressModel", "HTMLModel", "HBoxModel"} <= set(models.values())
    bar = next(cid for cid, name in models.items() if name == "FloatProgressModel")
    values = [m["data"]["state"].get("value") for m in cell.messages("comm_msg") if m["comm_id"] == bar]
    assert 5 in values
    # IPython's display() (which tqdm calls) shows the bar through the agent, also without IPython mode.
    [shown] = cell.messages("display")
    assert models[shown["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]] == "HBoxModel"


def test_without_the_comm_package_the_agent_provides_its_api(tmp_path: Path) -> None:
    """The system python3 has no ``comm`` package: ``import comm`` is the agent's module."""
    proc = Agent("python", tmp_path, command=["/usr/bin/python3", str(AGENT)], env=ENV)
    try:
        cell = ok(
            proc.execute(
                "import comm\nprint(comm.__doc__)\nc = comm.create_comm(target_name='t', data={'a': 1})\n"
                "print(comm.get_comm_manager().get_comm(c.comm_id) is c)"
            )
        )
        assert "the comm package is not installed" in cell.stdout and cell.stdout.endswith("True\n")
        [opened] = cell.messages("comm_open")
        assert opened["target_name"] == "t" and opened["data"] == {"a": 1}
    finally:
        proc.close()
