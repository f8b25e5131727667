"""The Python agent's IPython mode and inline plots, driven over the framed protocol.

IPython mode needs IPython in the agent's interpreter, so these agents run under the kernel's own
Python (``sys.executable``: the test environment installs IPython, matplotlib and
matplotlib-inline; a missing one fails here, it does not skip). Plain mode is the same agent told
``Sandbox.ipython = 'off'`` (``setup``), and the system ``/usr/bin/python3``, which has no IPython.
"""

from __future__ import annotations

import base64
import re
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from agents import AGENTS, Agent as AgentDriver, Cell

PNG = b"\x89PNG\r\n\x1a\n"


class Agent(AgentDriver):
    """An agent that numbers its cells as the kernel does (execute's ``cell``)."""

    def __init__(self, workdir: Path, mode: str, python: str | None = None) -> None:
        super().__init__("python", workdir, command=[python or sys.executable, str(AGENTS / "python_agent.py")])
        self.send({"type": "setup", "ipython": mode})
        self.count = 0

    def run(self, code: str, timeout: float = 60, **kwargs: Any) -> Cell:
        self.count += 1
        return self.execute(code, timeout=timeout, cell=self.count, **kwargs)


@pytest.fixture(scope="module")
def ipy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    agent = Agent(tmp_path_factory.mktemp("ipython"), "auto")
    yield agent
    agent.close()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    agent = Agent(tmp_path_factory.mktemp("plain"), "off")
    yield agent
    agent.close()


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw.startswith(PNG)
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def displays(cell: Cell, kind: str = "display") -> list[dict]:
    return cell.messages(kind)


def test_the_kernels_python_has_what_ipython_mode_needs() -> None:
    import IPython  # noqa: F401
    import matplotlib  # noqa: F401
    import matplotlib_inline  # noqa: F401


# -- IPython mode ---------------------------------------------------------------------------------


def test_ipython_results_numbered_as_the_kernel_says(ipy: Agent) -> None:
    ipy.count = 41
    cell = ipy.run("6 * 7")
    assert cell.status == "ok" and cell.result["data"]["text/plain"] == "42"
    cell = ipy.run("_ + 1, _42, Out[42], In[43]")
    assert cell.result["data"]["text/plain"] == "(43, 42, 42, '_ + 1, _42, Out[42], In[43]')"
    assert ipy.run("x = 1;").result is None and ipy.run("x;").result is None


def test_ipython_line_and_cell_magics(ipy: Agent) -> None:
    cell = ipy.run("%time y = sum(range(10))")
    assert cell.status == "ok" and "Wall time" in cell.stdout
    cell = ipy.run("%timeit -n 3 -r 2 y + 1")
    assert cell.status == "ok" and "loops each" in cell.stdout
    cell = ipy.run("%%writefile notes.txt\nwritten by a cell magic\n")
    assert cell.status == "ok" and "Writing notes.txt" in cell.stdout
    assert ipy.run("open('notes.txt').read()").result["data"]["text/plain"] == "'written by a cell magic\\n'"
    cell = ipy.run("%who")
    assert cell.status == "ok" and "y" in cell.stdout.split()


def test_ipython_shell_commands(ipy: Agent) -> None:
    cell = ipy.run("!echo out; echo err >&2; exit 3")
    assert cell.status == "ok" and cell.stdout == "out\n" and cell.stderr == "err\n"
    cell = ipy.run("files = !printf 'a\\nb\\n'\nfiles.l, _exit_code")
    assert cell.result["data"]["text/plain"] == "(['a', 'b'], 3)"


def test_ipython_help(ipy: Agent) -> None:
    cell = ipy.run("len?")
    assert cell.status == "ok" and "Return the number of items in a container" in cell.stdout
    ipy.run("def documented():\n    'Says hello.'\n    return 1")
    text = re.sub(r"\x1b\[[0-9;]*m", "", ipy.run("documented??").stdout)
    assert "return 1" in text and "Says hello." in text and "Source:" in text


def test_ipython_display_update_and_clear(ipy: Agent) -> None:
    cell = ipy.run(
        "from IPython.display import HTML, Markdown, Image, display, clear_output, update_display\n"
        "display(HTML('<b>one</b>'), display_id='progress')\n"
        "display(Markdown('*md*'))\n"
        "update_display(HTML('<b>two</b>'), display_id='progress')\n"
        "clear_output(wait=True)\n"
        "Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + b'0' * 16, format='png')"
    )
    assert cell.status == "ok", cell.error
    shown = displays(cell)
    assert shown[0]["data"]["text/html"] == "<b>one</b>" and shown[0]["transient"] == {"display_id": "progress"}
    assert shown[1]["data"]["text/markdown"] == "*md*" and "transient" not in shown[1]
    (update,) = displays(cell, "update_display")
    assert update["data"]["text/html"] == "<b>two</b>" and update["transient"] == {"display_id": "progress"}
    assert displays(cell, "clear_output") == [{"type": "clear_output", "id": cell.done["id"], "wait": True}]
    assert base64.b64decode(cell.result["data"]["image/png"]).startswith(PNG)
    order = [k for k in cell.kinds() if k in ("display", "update_display", "clear_output", "result")]
    assert order == ["display", "display", "update_display", "clear_output", "result"]


def test_ipython_tracebacks_and_usage_errors(ipy: Agent) -> None:
    cell = ipy.run("def f():\n    return 1 / 0\nf()")
    assert cell.status == "error" and cell.error["ename"] == "ZeroDivisionError"
    coloured = "\n".join(cell.error["traceback"])
    text = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert coloured != text and "----> 3 f()" in text and "----> 2     return 1 / 0" in text  # IPython's format
    cell = ipy.run("%no_such_magic")
    assert cell.status == "error" and cell.error["ename"] == "UsageError" and "no_such_magic" in cell.error["evalue"]
    cell = ipy.run("x = 1\n%timeout 5")
    assert cell.error["ename"] == "UsageError" and "first lines of a cell" in cell.error["evalue"]
    assert ipy.run("def g(:\n pass").error["ename"] == "SyntaxError"


def test_ipython_interrupt(ipy: Agent) -> None:
    cell = ipy.run("import time\ntime.sleep(30)", interrupt_after=0.5)
    assert cell.status == "interrupted" and cell.error["ename"] == "KeyboardInterrupt"
    cell = ipy.run("!sleep 30", interrupt_after=0.5)
    assert cell.status == "interrupted"
    assert ipy.run("'still here'").result["data"]["text/plain"] == "'still here'"


def test_ipython_complete_inspect_is_complete(ipy: Agent) -> None:
    ipy.run("import collections")
    reply = ipy.request("complete", code="%tim", cursor_pos=4)
    assert "%time" in reply["matches"] and "%timeit" in reply["matches"] and reply["cursor_start"] == 0
    reply = ipy.request("complete", code="collections.Ord", cursor_pos=15)
    assert "collections.OrderedDict" in reply["matches"] or "OrderedDict" in reply["matches"]
    reply = ipy.request("inspect", code="len(", cursor_pos=4, detail_level=0)
    assert reply["found"] and "Return the number of items" in reply["data"]["text/plain"]
    assert ipy.request("is_complete", code="%%writefile x\nabc")["status"] == "incomplete"
    assert ipy.request("is_complete", code="for i in range(3):")["status"] == "incomplete"
    assert ipy.request("is_complete", code="!ls")["status"] == "complete"


# -- plots ----------------------------------------------------------------------------------------


PLOT = "import matplotlib.pyplot as plt\nplt.figure(figsize=(3, 2), dpi=100)\nplt.plot([1, 3, 2])\n"


def only_png(cell: Cell) -> dict:
    (shown,) = [d for d in displays(cell) if "image/png" in d["data"]]
    return shown


def test_ipython_plot_at_the_end_of_a_cell_and_on_show(ipy: Agent) -> None:
    cell = ipy.run(PLOT + "None")
    assert cell.status == "ok", cell.error
    width, height = png_size(only_png(cell)["data"]["image/png"])
    assert 200 < width <= 300 and 120 < height <= 200  # 3 x 2 inches at 100 dpi, cropped tight
    cell = ipy.run(PLOT + "plt.show()\nprint('after show')")
    assert only_png(cell) and cell.kinds().index("display") < cell.kinds().index("stdout")
    assert ipy.run("plt.get_fignums()").result["data"]["text/plain"] == "[]"  # closed once shown


def test_ipython_figure_as_last_value_and_svg(ipy: Agent) -> None:
    cell = ipy.run(
        "from matplotlib.figure import Figure\nfig = Figure(figsize=(2, 2))\nfig.subplots().plot([1, 2])\nfig"
    )
    assert cell.status == "ok" and base64.b64decode(cell.result["data"]["image/png"]).startswith(PNG)
    cell = ipy.run("%config InlineBackend.figure_formats = ['svg']\n" + PLOT)
    (shown,) = displays(cell)
    assert shown["data"]["image/svg+xml"].lstrip().startswith("<?xml") and "image/png" not in shown["data"]
    ipy.run("%config InlineBackend.figure_formats = ['png']")


# -- plain mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, says",
    [
        ("%pip install pandas", ["%pip is an IPython magic", "IPython mode is off", "environment"]),
        ("x = 1\n!ls", ["line 2", "shell commands (!cmd)", "subprocess.run"]),
        ("len?", ["help with ?", "help(obj)"]),
        ("%timeit 1 + 1", ["%timeit is an IPython magic", "Sandbox.ipython = 'auto'"]),
    ],
)
def test_plain_mode_says_what_is_not_available(plain: Agent, code: str, says: list[str]) -> None:
    cell = plain.run(code)
    assert cell.status == "error" and cell.error["ename"] == "UsageError"
    for part in says + ["%timeout and %sandbox"]:
        assert part in cell.error["evalue"]


def test_plain_mode_without_ipython_names_the_interpreter(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "auto", python="/usr/bin/python3")
    try:
        cell = agent.run("!ls")
        assert (
            cell.error["ename"] == "UsageError" and "(/usr/bin/python3) cannot import IPython" in cell.error["evalue"]
        )
        assert agent.run("1 +").error["ename"] == "SyntaxError"  # not every syntax error is about IPython
        cell = agent.run("print('plain Python runs')")
    finally:
        agent.close()
    assert cell.status == "ok" and cell.stdout == "plain Python runs\n"
    agent = Agent(tmp_path, "on", python="/usr/bin/python3")  # 'on' without IPython: every cell says why
    try:
        cell = agent.run("print('on')")
    finally:
        agent.close()
    assert cell.status == "error" and "Sandbox.ipython = 'on', but" in cell.error["evalue"]


def test_plain_mode_plots(plain: Agent) -> None:
    cell = plain.run("%matplotlib inline\n" + PLOT + "None")
    assert cell.status == "ok", cell.error
    shown = only_png(cell)
    width, height = png_size(shown["data"]["image/png"])
    assert shown["metadata"] == {"image/png": {"width": width, "height": height}} and 200 < width <= 300
    cell = plain.run(PLOT + "plt.show()\nprint('after show')")
    assert only_png(cell) and cell.kinds().index("display") < cell.kinds().index("stdout")
    cell = plain.run(PLOT.replace("plt.figure", "fig = plt.figure") + "fig")
    assert base64.b64decode(cell.result["data"]["image/png"]).startswith(PNG) and not displays(cell)
    cell = plain.run("import matplotlib\nmatplotlib.rcParams['savefig.format'] = 'svg'\n" + PLOT + "None")
    (shown,) = displays(cell)
    assert "<svg" in shown["data"]["image/svg+xml"]
