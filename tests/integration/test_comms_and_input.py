"""Comms (widgets) and input() through jupyter_client, on real Sandbox (Python) kernels on the
local backend (issue 9, items 5 and 6).

The sandbox runs the kernel's Python environment, where ``import comm`` gives the ``comm``
package with the agent's ``create_comm`` / ``get_comm_manager`` (test_agent_comms.py drives
ipywidgets and tqdm through the agent, and the agent's own ``comm`` module where the package is
missing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernels import running_kernel

pytestmark = pytest.mark.usefixtures("local_kernelspecs")

LAYOUT = (
    "{'_model_module': '@jupyter-widgets/base', '_model_name': 'LayoutModel', '_view_module': '@jupyter-widgets/base'}"
)


@pytest.fixture(scope="module")
def kernel(local_kernelspecs: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-python") as (km, kc):
        yield km, kc


def iopub_until_idle(kc: Any, parent_id: str, timeout: float = 20) -> list[dict[str, Any]]:
    """The IOPub messages of request ``parent_id`` up to its ``idle``."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != parent_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return found
        found.append(msg)


def send_comm(
    kc: Any,
    kind: str,
    content: dict[str, Any],
    buffers: list[bytes] | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Send a comm message as a frontend does (shell channel); return what the kernel published for it."""
    msg = kc.session.msg(kind, content, metadata=metadata)
    kc.session.send(kc.shell_channel.socket, msg, buffers=buffers or [])
    return iopub_until_idle(kc, msg["header"]["msg_id"])


def cell(kc: Any, code: str, **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a cell; return (reply content, every IOPub message it caused, with buffers)."""
    seen: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, output_hook=seen.append, timeout=60, **kwargs)
    return reply["content"], seen


def of(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["msg_type"] == kind]


def stderr(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in of(messages, "stream") if m["content"]["name"] == "stderr")


def stdout(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in of(messages, "stream") if m["content"]["name"] == "stdout")


def comm_info(kc: Any, target: str | None = None) -> dict[str, Any]:
    msg_id = kc.comm_info(target)
    while True:
        reply = kc.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["comms"]


def test_comm_opened_by_the_sandbox_sends_and_closes(kernel: tuple[Any, Any]) -> None:
    _, kc = kernel
    reply, seen = cell(
        kc,
        f"""import comm
c = comm.create_comm(target_name='jupyter.widget', data={{'state': {LAYOUT}}}, metadata={{'version': '2.1.0'}})
c.send({{'method': 'custom', 'content': {{'n': 1}}}}, buffers=[b'\\x00\\x01binary'])
print(c.comm_id)""",
    )
    assert reply["status"] == "ok", reply
    comm_id = stdout(seen).strip()
    [opened] = of(seen, "comm_open")
    assert opened["content"]["comm_id"] == comm_id and opened["content"]["target_name"] == "jupyter.widget"
    assert opened["content"]["data"]["state"]["_model_name"] == "LayoutModel"
    assert opened["metadata"] == {"version": "2.1.0"}  # a comm's metadata is the message's (Jupyter's comms)
    [sent] = of(seen, "comm_msg")
    assert sent["content"]["data"] == {"method": "custom", "content": {"n": 1}}
    assert [bytes(b) for b in sent["buffers"]] == [b"\x00\x01binary"]
    assert sent["parent_header"]["msg_id"] == opened["parent_header"]["msg_id"]  # the execute_request
    assert comm_info(kc) == {comm_id: {"target_name": "jupyter.widget"}}

    reply, seen = cell(kc, "c.close({'bye': True})")
    [closed] = of(seen, "comm_close")
    assert closed["content"] == {"comm_id": comm_id, "data": {"bye": True}}
    assert comm_info(kc) == {}


def test_comms_opened_by_the_frontend_reach_the_sandbox_between_cells(kernel: tuple[Any, Any]) -> None:
    _, kc = kernel
    reply, _ = cell(
        kc,
        """import comm
seen = []
def opened(c, msg):
    seen.append(('open', msg['content']['data'], msg['metadata']))
    c.on_msg(lambda m: (seen.append(('msg', m['content']['data'], [bytes(b) for b in m['buffers']])),
                        c.send({'echo': m['content']['data']}, buffers=m['buffers'])))
    c.on_close(lambda m: print('closed with', m['content']['data']))
    c.send({'hello': 'frontend'})
comm.get_comm_manager().register_target('test.echo', opened)""",
    )
    assert reply["status"] == "ok", reply

    published = send_comm(
        kc,
        "comm_open",
        {"comm_id": "front-1", "target_name": "test.echo", "data": {"x": 1}},
        metadata={"version": "1.0.0"},
    )
    [hello] = of(published, "comm_msg")
    assert hello["content"]["data"] == {"hello": "frontend"}
    assert comm_info(kc, "test.echo") == {"front-1": {"target_name": "test.echo"}}

    published = send_comm(kc, "comm_msg", {"comm_id": "front-1", "data": {"v": 2}}, buffers=[b"\xffbuf"])
    [echo] = of(published, "comm_msg")
    assert echo["content"]["data"] == {"echo": {"v": 2}} and [bytes(b) for b in echo["buffers"]] == [b"\xffbuf"]

    published = send_comm(kc, "comm_close", {"comm_id": "front-1", "data": {"why": "done"}})
    assert "closed with {'why': 'done'}" in stdout(published)
    assert comm_info(kc) == {}
    reply, seen = cell(kc, "print(seen)")
    assert "('open', {'x': 1}, {'version': '1.0.0'}), ('msg', {'v': 2}, [b'\\xffbuf'])" in stdout(seen)

    # A target the sandbox does not have: the comm is closed at once, as by ipykernel.
    published = send_comm(kc, "comm_open", {"comm_id": "front-2", "target_name": "no.such.target", "data": {}})
    assert [m["content"]["comm_id"] for m in of(published, "comm_close")] == ["front-2"]
    assert comm_info(kc) == {}


def test_a_failing_comm_handler_shows_its_traceback_and_the_kernel_goes_on(kernel: tuple[Any, Any]) -> None:
    _, kc = kernel
    cell(
        kc, "import comm\ncomm.get_comm_manager().register_target('test.fail', lambda c, m: c.on_msg(lambda m: 1 / 0))"
    )
    send_comm(kc, "comm_open", {"comm_id": "front-3", "target_name": "test.fail", "data": {}})
    published = send_comm(kc, "comm_msg", {"comm_id": "front-3", "data": {}})
    assert "ZeroDivisionError" in stderr(published)
    reply, seen = cell(kc, "print('still here')")
    assert reply["status"] == "ok"


def test_comm_messages_the_policy_refuses_are_not_published(kernel: tuple[Any, Any]) -> None:
    """Forged by user code (the comm API, and a frame written straight into the agent's channel):
    each is refused with a notice, and the cell still replies."""
    _, kc = kernel
    reply, seen = cell(
        kc,
        """import comm, gc, json
comm.create_comm(target_name='some.extension', data={})""",
    )
    assert reply["status"] == "ok" and not of(seen, "comm_open")
    assert "target 'some.extension' is not one the sandbox may open a comm to" in stderr(seen)

    reply, seen = cell(
        kc,
        "comm.create_comm(target_name='jupyter.widget', data={'state': "
        "{'_model_module': 'https://evil.example/widget.js', '_model_name': 'EvilModel'}})",
    )
    assert reply["status"] == "ok" and not of(seen, "comm_open")
    assert "is not on the widget list" in stderr(seen)

    reply, seen = cell(kc, "comm.create_comm(target_name='jupyter.widget', comm_id='x' * 300, data={'state': {}})")
    assert not of(seen, "comm_open") and "comm id" in stderr(seen)

    reply, seen = cell(
        kc,
        """h = comm.create_comm(target_name='jupyter.widget', data={'state': {
    '_model_module': '@jupyter-widgets/controls', '_model_name': 'HTMLModel', '_view_module': '@jupyter-widgets/controls',
    'value': '<b>bold</b><img src=x onerror=alert(1)><script>alert(2)</script>', 'description_allow_html': True}})
h.send({'method': 'update', 'state': {'value': '<a href="javascript:alert(3)">x</a>', '_view_module': 'evil'}})
h.send({'method': 'run_this', 'code': 'alert(4)'})""",
    )
    [opened] = of(seen, "comm_open")
    state = opened["content"]["data"]["state"]
    assert state["value"] == "<b>bold</b><img>" and state["description_allow_html"] is False
    [update] = of(seen, "comm_msg")
    assert (
        "javascript" not in update["content"]["data"]["state"]["value"]
        and "_view_module" not in update["content"]["data"]["state"]
    )
    assert "method 'run_this' is not one of" in stderr(seen)

    send = "next(o for o in gc.get_objects() if getattr(o, '__name__', None) == '_send_frame' and callable(o))"
    reply, seen = cell(
        kc,
        f"""send = {send}
send(b'msg', json.dumps({{'type': 'comm_msg', 'comm_id': 5, 'data': []}}).encode())
send(b'msg', json.dumps({{'type': 'comm_msg', 'comm_id': 'never-opened', 'data': {{}}}}).encode())
print('after')""",
    )
    assert reply["status"] == "ok" and not of(seen, "comm_msg")
    assert "ignored a message written into the agent's private channel (malformed comm_msg)" in stderr(seen)
    assert "comm never-opened is not open" in stderr(seen)

    # Over the output limit (Sandbox.output_limit, 4 MiB): dropped with the cell's truncation notice.
    reply, seen = cell(kc, "for i in range(12):\n    h.send({'method': 'custom', 'content': 'x' * 500000})")
    assert reply["status"] == "ok"
    assert 0 < len(of(seen, "comm_msg")) < 12
    assert "output truncated" in stderr(seen)
    reply, seen = cell(kc, "print('responsive')")
    assert reply["status"] == "ok" and "responsive" in stdout(seen)


def answer_with(kc: Any, value: str, prompts: list[dict[str, Any]]) -> Any:
    def hook(msg: dict[str, Any]) -> None:
        prompts.append(msg["content"])
        kc.input(value)

    return hook


def test_input_and_getpass_are_answered_by_the_frontend(kernel: tuple[Any, Any]) -> None:
    _, kc = kernel
    prompts: list[dict[str, Any]] = []
    reply, seen = cell(
        kc,
        "name = input('Your name? ')\nprint('hello', name)",
        allow_stdin=True,
        stdin_hook=answer_with(kc, "Ada", prompts),
    )
    assert reply["status"] == "ok", reply
    assert prompts == [{"prompt": "Your name? ", "password": False}]
    assert "hello Ada" in stdout(seen)

    prompts.clear()
    reply, seen = cell(
        kc,
        "from getpass import getpass\nsecret = getpass()\nprint(len(secret))",
        allow_stdin=True,
        stdin_hook=answer_with(kc, "s3cret", prompts),
    )
    assert prompts == [{"prompt": "Password: ", "password": True}]
    assert "6" in stdout(seen)

    reply, seen = cell(kc, "input()", allow_stdin=True, stdin_hook=answer_with(kc, "\x04", prompts))
    assert reply["status"] == "error" and reply["ename"] == "EOFError"

    reply, seen = cell(kc, "input()", allow_stdin=True, stdin_hook=answer_with(kc, "y" * 300_000, prompts))
    assert reply["status"] == "error" and "at most 262144 are passed to the sandbox" in reply["evalue"]


def test_input_without_stdin_is_the_clear_error(kernel: tuple[Any, Any]) -> None:
    _, kc = kernel
    reply, seen = cell(kc, "input('Your name? ')", allow_stdin=False)
    assert reply["status"] == "error" and reply["ename"] == "StdinNotImplementedError"
    assert "this frontend does not answer input requests" in reply["evalue"]


def test_interrupt_while_waiting_for_input_and_no_timeout_meanwhile(kernel: tuple[Any, Any]) -> None:
    km, kc = kernel
    asked: list[float] = []
    reply, _ = cell(
        kc,
        "import time\nstart = time.monotonic()\ninput('wait? ')",
        allow_stdin=True,
        stdin_hook=lambda msg: (asked.append(time.monotonic()), km.interrupt_kernel()),
    )
    assert asked and reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply

    # The time limit does not run while the user is asked (here 1 s, answered after 1.5 s).
    def late(msg: dict[str, Any]) -> None:
        time.sleep(1.5)
        kc.input("late")

    reply, seen = cell(kc, "%timeout 1\nprint(input('slow? '))", allow_stdin=True, stdin_hook=late)
    assert reply["status"] == "ok", reply
    assert "late" in stdout(seen)
    reply, _ = cell(kc, "%timeout 30\nprint(1)")
    assert reply["status"] == "ok"


def test_stdin_request_parent_is_the_cell(kernel: tuple[Any, Any]) -> None:
    """The input_request goes to the frontend on the stdin channel with the cell as its parent."""
    _, kc = kernel
    parents: list[str] = []
    msg_id = kc.execute("print(input('?'))", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    parents.append(request["parent_header"]["msg_id"])
    kc.input("ok")
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    assert parents == [msg_id] and reply["content"]["status"] == "ok"


def test_kernels_without_comms_close_what_the_frontend_opens(local_kernelspecs: Path) -> None:
    """Node.js and Bash agents take no comms: a comm the frontend opens (JupyterLab's widget
    manager opens one on every kernel) is closed at once, and cells go on."""
    with running_kernel("sandbox-node") as (_km, kc):
        published = send_comm(
            kc, "comm_open", {"comm_id": "front-n", "target_name": "jupyter.widget.control", "data": {}}
        )
        assert [m["content"]["comm_id"] for m in of(published, "comm_close")] == ["front-n"]
        assert comm_info(kc) == {}
        reply, seen = cell(kc, "console.log(6 * 7)")
        assert reply["status"] == "ok" and "42" in stdout(seen)
