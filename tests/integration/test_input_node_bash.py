"""input() for Sandbox (Node.js) and `read` for Sandbox (Bash) through jupyter_client, on the local
backend (issue 9, item 6): the frontend is asked (input_request on the stdin channel), a
frontend that does not allow stdin gets the clear error, and an interrupt ends the wait.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from kernels import running_kernel

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-node") as (km, kc):
        yield km, kc


def cell(kc: Any, code: str, **kwargs: Any) -> tuple[dict[str, Any], str]:
    """Run a cell; return (reply content, its stdout)."""
    seen: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, output_hook=seen.append, timeout=60, **kwargs)
    out = "".join(m["content"]["text"] for m in seen if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    return reply["content"], out


def answer_with(kc: Any, value: str, prompts: list[dict[str, Any]]) -> Any:
    def hook(msg: dict[str, Any]) -> None:
        prompts.append(msg["content"])
        kc.input(value)

    return hook


def test_node_input_and_getpass_are_answered_by_the_frontend(node: tuple[Any, Any]) -> None:
    _, kc = node
    prompts: list[dict[str, Any]] = []
    reply, out = cell(
        kc,
        "const name = input('Your name? ');\nconsole.log('hello', name)",
        allow_stdin=True,
        stdin_hook=answer_with(kc, "Ada ✓", prompts),
    )
    assert reply["status"] == "ok", reply
    assert prompts == [{"prompt": "Your name? ", "password": False}]
    assert "hello Ada ✓" in out

    prompts.clear()
    reply, out = cell(
        kc,
        "const secret = getpass();\nconsole.log(secret.length)",
        allow_stdin=True,
        stdin_hook=answer_with(kc, "s3cret", prompts),
    )
    assert reply["status"] == "ok", reply
    assert prompts == [{"prompt": "Password: ", "password": True}]
    assert out == "6\n"

    # Two in one cell, the second after an await; end of input (Ctrl-D) is null.
    prompts.clear()
    reply, out = cell(
        kc,
        "const a = input('a? ');\nawait new Promise((r) => setTimeout(r, 10));\nconsole.log(a, input('b? '))",
        allow_stdin=True,
        stdin_hook=answer_with(kc, "\x04", prompts),
    )
    assert reply["status"] == "ok", reply
    assert [p["prompt"] for p in prompts] == ["a? ", "b? "] and out == "null null\n"


def test_node_input_without_stdin_is_the_clear_error(node: tuple[Any, Any]) -> None:
    _, kc = node
    reply, _ = cell(kc, "input('Your name? ')", allow_stdin=False)
    assert reply["status"] == "error" and reply["ename"] == "StdinNotImplementedError", reply
    assert "this frontend does not answer input requests" in reply["evalue"]


def test_node_interrupt_while_waiting_for_input_keeps_the_state(node: tuple[Any, Any]) -> None:
    km, kc = node
    cell(kc, "var kept = 42")
    asked: list[float] = []
    reply, _ = cell(
        kc,
        "input('wait? ')",
        allow_stdin=True,
        stdin_hook=lambda msg: (asked.append(time.monotonic()), km.interrupt_kernel()),
    )
    assert asked and reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    reply, out = cell(kc, "console.log(kept)")
    assert reply["status"] == "ok" and out == "42\n", (reply, out)


@pytest.fixture(scope="module")
def bash() -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-bash") as (km, kc):
        yield km, kc


def test_bash_read_asks_the_frontend(bash: tuple[Any, Any]) -> None:
    _, kc = bash
    prompts: list[dict[str, Any]] = []
    reply, out = cell(
        kc,
        "read -r -p 'Your name? ' name; echo \"hello $name\"",
        allow_stdin=True,
        stdin_hook=answer_with(kc, 'Ada ✓ \\ "q"', prompts),
    )
    assert reply["status"] == "ok", reply
    assert prompts == [{"prompt": "Your name? ", "password": False}]
    assert out == 'hello Ada ✓ \\ "q"\n'

    prompts.clear()
    reply, out = cell(
        kc,
        "read -s -p 'PIN: ' pin; echo ${#pin}; read a b <<<'x y'; echo $b; echo z | { read c; echo $c; }",
        allow_stdin=True,
        stdin_hook=answer_with(kc, "1234", prompts),
    )
    assert reply["status"] == "ok", reply
    assert prompts == [{"prompt": "PIN: ", "password": True}]  # the other reads read their own stdin
    assert out == "4\ny\nz\n"

    reply, out = cell(kc, "read x; echo status=$?", allow_stdin=True, stdin_hook=answer_with(kc, "\x04", prompts))
    assert out == "status=1\n", out


def test_bash_read_without_stdin_is_the_clear_error(bash: tuple[Any, Any]) -> None:
    _, kc = bash
    seen: list[dict[str, Any]] = []
    reply = kc.execute_interactive("read x; echo status=$?", output_hook=seen.append, timeout=60, allow_stdin=False)
    err = "".join(m["content"]["text"] for m in seen if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    out = "".join(m["content"]["text"] for m in seen if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    assert reply["content"]["status"] == "ok" and out == "status=1\n"
    assert "this frontend does not answer input requests" in err


def test_bash_interrupt_while_waiting_in_read_keeps_the_state(bash: tuple[Any, Any]) -> None:
    km, kc = bash
    cell(kc, "kept=42")
    asked: list[float] = []
    reply, _ = cell(
        kc, "read x", allow_stdin=True, stdin_hook=lambda msg: (asked.append(time.monotonic()), km.interrupt_kernel())
    )
    assert asked and reply["status"] == "error" and reply["ename"] == "Interrupted", reply
    prompts: list[dict[str, Any]] = []
    reply, out = cell(kc, "read y; echo $kept $y", allow_stdin=True, stdin_hook=answer_with(kc, "next", prompts))
    assert reply["status"] == "ok" and out == "42 next\n", (reply, out)
