"""IPython mode through jupyter_client (issue 9, item 3): a real Sandbox (Python) kernel on the
local backend, whose sandbox runs the kernel's own Python environment (IPython is in it), so
cells run through IPython's shell by default (``Sandbox.ipython = 'auto'``); and plain mode
(``'off'``, or a Python without IPython), where IPython syntax gets a clear message, not a
SyntaxError. test_agent_ipython.py drives the agent alone; this is what a notebook gets.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernels import errors, result, run_cell, running_kernel, text

pytestmark = pytest.mark.usefixtures("local_kernelspecs")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kc(local_kernelspecs: Path) -> Iterator[Any]:
    with running_kernel("sandbox-python") as (_km, client):
        yield client


def plain_text(outputs: list[dict[str, Any]]) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text(outputs))


def of(outputs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in outputs if o["type"] == kind]


def test_cells_run_through_ipython(kc: Any) -> None:
    reply, out = run_cell(kc, "type(get_ipython()).__mro__[1].__name__")
    assert reply["status"] == "ok" and result(out) == "'InteractiveShell'"


def test_line_and_cell_magics(kc: Any) -> None:
    reply, out = run_cell(kc, "%time total = sum(range(10))")
    assert reply["status"] == "ok" and "Wall time" in text(out)
    reply, out = run_cell(kc, "%timeit -n 3 -r 2 total + 1")
    assert reply["status"] == "ok" and "loops each" in text(out)
    # The notebook's directory is read-only by default (Sandbox.workspace): the sandbox's /tmp is its own.
    reply, out = run_cell(kc, "%%writefile /tmp/notes.txt\nwritten by a cell magic\n")
    assert reply["status"] == "ok" and "Writing /tmp/notes.txt" in text(out)
    assert result(run_cell(kc, "open('/tmp/notes.txt').read()")[1]) == "'written by a cell magic\\n'"
    reply, out = run_cell(kc, "%who")
    assert reply["status"] == "ok" and "total" in text(out).split()


def test_shell_commands(kc: Any) -> None:
    reply, out = run_cell(kc, "!echo out; echo err >&2")
    assert reply["status"] == "ok" and text(out) == "out\n" and text(out, "stderr") == "err\n"
    _, out = run_cell(kc, "files = !printf 'a\\nb\\n'\nfiles.l")
    assert result(out) == "['a', 'b']"


def test_help_with_question_marks(kc: Any) -> None:
    reply, out = run_cell(kc, "len?")
    assert reply["status"] == "ok" and "Return the number of items in a container" in plain_text(out)
    run_cell(kc, "def documented():\n    'Says hello.'\n    return 1")
    shown = plain_text(run_cell(kc, "documented??")[1])
    assert "Says hello." in shown and "return 1" in shown and "Source:" in shown


def test_underscore_and_out_follow_the_kernels_count(kc: Any) -> None:
    reply, out = run_cell(kc, "6 * 7")
    count = reply["execution_count"]
    assert result(out) == "42" and [o["execution_count"] for o in of(out, "execute_result")] == [count]
    _, out = run_cell(kc, f"_ + 1, _{count}, Out[{count}], In[{count}]")
    assert result(out) == "(43, 42, 42, '6 * 7')"


def test_ipython_display_objects(kc: Any) -> None:
    reply, out = run_cell(
        kc,
        "from IPython.display import HTML, Markdown, Image, display, clear_output, update_display\n"
        "display(HTML('<b>one</b>'), display_id='progress')\n"
        "display(Markdown('*md*'))\n"
        "update_display(HTML('<b>two</b>'), display_id='progress')\n"
        "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + b'0' * 16, format='png'))\n"
        "clear_output(wait=True)\n"
        "print('after clear')",
    )
    assert reply["status"] == "ok", out
    shown = of(out, "display_data")
    assert shown[0]["data"]["text/html"] == "<b>one</b>" and shown[0]["transient"] == {"display_id": "progress"}
    assert shown[1]["data"]["text/markdown"] == "*md*"
    assert base64.b64decode(shown[2]["data"]["image/png"]).startswith(PNG)
    assert [o["type"] for o in out if o["type"] != "stream"] == ["display_data", "display_data", "display_data"]


def test_update_display_and_clear_output_messages(kc: Any) -> None:
    """update_display and clear_output are Jupyter messages of their own (run_cell's hook only
    collects outputs): read them from IOPub."""
    msg_id = kc.execute(
        "from IPython.display import display, update_display, clear_output\n"
        "display('first', display_id='d1')\nupdate_display('second', display_id='d1')\nclear_output()"
    )
    seen = []
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        seen.append(msg)
    kinds = [m["msg_type"] for m in seen if m["msg_type"] not in ("status", "execute_input")]
    assert kinds == ["display_data", "update_display_data", "clear_output"], kinds
    update = seen[[m["msg_type"] for m in seen].index("update_display_data")]["content"]
    assert update["data"]["text/plain"] == "'second'" and update["transient"] == {"display_id": "d1"}


def test_matplotlib_inline_magic_and_plots(kc: Any) -> None:
    reply, out = run_cell(kc, "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert reply["status"] == "ok", out
    [figure] = of(out, "display_data")
    assert base64.b64decode(figure["data"]["image/png"]).startswith(PNG)


def test_a_1_mib_plot_reaches_the_notebook_whole(kc: Any) -> None:
    # A figure of noise does not compress: its PNG is over 1 MiB, and travels as base64 (4/3 of it)
    # in one agent frame (PROTOCOL.md: up to 2 MiB) and through the output policy's PNG check.
    code = (
        "import numpy as np, matplotlib.pyplot as plt, io\n"
        "fig = plt.figure(figsize=(6, 6), dpi=100)\n"
        "ax = fig.add_axes([0, 0, 1, 1]); ax.axis('off')\n"
        "ax.imshow(np.random.default_rng(1).random((600, 600, 3)), interpolation='nearest')\n"
        "buf = io.BytesIO(); fig.savefig(buf, format='png'); size = buf.tell()\n"
        "plt.show()\n"
        "size"
    )
    reply, out = run_cell(kc, code)
    assert reply["status"] == "ok", out
    [figure] = of(out, "display_data")
    assert "image/png" in figure["data"], (list(figure["data"]), text(out)[-800:])
    png = base64.b64decode(figure["data"]["image/png"])
    assert png.startswith(PNG) and len(png) > 1 << 20, len(png)
    assert abs(len(png) - int(result(out))) < len(png) // 10  # the figure as saved, not a cut one
    assert "dropped" not in text(out)


def test_the_kernels_own_magics_stay_the_kernels(kc: Any) -> None:
    reply, out = run_cell(kc, "%timeout\n1 + 1")
    assert reply["status"] == "ok" and "cell time limit: 30 s" in text(out) and result(out) == "2"
    reply, out = run_cell(kc, "%sandbox status")
    assert reply["status"] == "ok" and "memory" in text(out)
    # Further down a cell they reach the sandbox's IPython, which says where they belong.
    reply, out = run_cell(kc, "x = 1\n%timeout 5")
    assert reply["status"] == "error" and reply["ename"] == "UsageError"
    assert "handled by the Sandbox kernel" in reply["evalue"] and "first lines of a cell" in reply["evalue"]


@pytest.mark.parametrize(
    "argv",
    [["--Sandbox.ipython=off"], ["--LocalSandbox.python_environment=system"]],
    ids=["ipython-off", "python-without-ipython"],
)
def test_plain_mode_says_what_is_not_available(local_kernelspecs: Path, argv: list[str]) -> None:
    with running_kernel("sandbox-python", argv=argv) as (_km, client):
        for code, says in (
            ("%pip install pandas", "%pip is an IPython magic"),
            ("x = 1\n!ls", "shell commands (!cmd) are IPython syntax"),
            ("%load_ext something", "%load_ext is an IPython magic"),
        ):
            reply, out = run_cell(client, code)
            assert reply["status"] == "error" and reply["ename"] == "UsageError", (code, reply)
            [error] = errors(out)
            assert says in error["evalue"] and "%timeout and %sandbox" in error["evalue"], error
        why = "IPython mode is off" if "ipython" in argv[0] else "cannot import IPython"
        assert why in error["evalue"], error
        # Plain Python still runs, and %matplotlib inline (the first line of many notebooks) is accepted.
        reply, out = run_cell(client, "%matplotlib inline\nprint('plain Python runs')")
        assert reply["status"] == "ok" and text(out) == "plain Python runs\n", out
