"""Drive the real Python agent (sandbox_kernel/agents/python_agent.py) over the framed protocol.

The agent runs as a plain subprocess of the test (no sandbox needed) under /usr/bin/python3,
with a scrubbed environment like the sandbox gives it. Every test talks to it only through
``sandbox_kernel.protocol`` frames on its stdin/stdout (tests/agents.py).
"""

from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents import AGENTS, Agent, Cell
from processes import alive
from sandbox_kernel.protocol import Message, Output

AGENT = AGENTS / "python_agent.py"
# The sandbox runs the agent with the system python3; SANDBOX_AGENT_PYTHON tries another one.
PYTHON = os.environ.get("SANDBOX_AGENT_PYTHON") or (
    "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent("python", tmp_path, command=[PYTHON, str(AGENT)], env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    yield a
    a.close()


def ok(cell: Cell) -> Cell:
    assert cell.status == "ok", (cell.error, cell.stderr)
    return cell


def plain(cell: Cell) -> str:
    assert cell.result is not None, cell.kinds()
    return cell.result["data"]["text/plain"]


# --------------------------------------------------------------------------------------
# start-up, state, results
# --------------------------------------------------------------------------------------
def test_ready_language_info(agent: Agent) -> None:
    ready = agent.ready
    assert ready["agent"] == "python"
    assert ready["protocol"] == 2
    info = ready["language_info"]
    version = subprocess.run(
        [PYTHON, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    ).stdout.strip()
    assert info == {
        "name": "python",
        "version": version,
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
    }


def test_state_persists_across_cells(agent: Agent) -> None:
    ok(
        agent.execute(
            "import math\nx = 20\ndef double(v):\n    return 2 * v\nclass Box:\n    def __init__(self, v): self.v = v"
        )
    )
    cell = ok(agent.execute("double(x) + Box(math.floor(1.5)).v"))
    assert plain(cell) == "41"
    assert plain(ok(agent.execute("__name__"))) == "'__main__'"
    # user classes pickle, because sys.modules['__main__'] is the user's namespace
    assert plain(ok(agent.execute("import pickle; pickle.loads(pickle.dumps(Box(7))).v"))) == "7"


def test_last_expression_result(agent: Agent) -> None:
    cell = ok(agent.execute("a = 5\na * 3"))
    assert plain(cell) == "15"
    assert cell.result["metadata"] == {}
    assert plain(ok(agent.execute("_ + 1"))) == "16"  # `_` holds the last result
    assert ok(agent.execute("None")).result is None
    assert ok(agent.execute("print('x')")).result is None  # print() returns None
    assert ok(agent.execute("a * 2;  # trailing semicolon hides it")).result is None
    assert ok(agent.execute("b = 1")).result is None
    long_list = plain(ok(agent.execute("list(range(40))")))
    assert long_list.startswith("[0,\n 1,\n") and long_list.endswith(" 39]")  # pprint


def test_output_before_result_and_done(agent: Agent) -> None:
    cell = ok(agent.execute("import sys\nprint('one')\nsys.stderr.write('two\\n')\nprint('three')\n42"))
    kinds = cell.kinds()
    assert kinds[-2:] == ["result", "done"]
    assert cell.stdout == "one\nthree\n"
    assert cell.stderr == "two\n"
    assert all(k in ("stdout", "stderr") for k in kinds[:-2])


def test_stdout_streams_live(agent: Agent) -> None:
    cell = ok(agent.execute("import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.4)"))
    ticks = [stamp for stamp, f in cell.frames if isinstance(f, Output) and b"tick" in f.data]
    assert len(ticks) == 3  # one frame per print, not all at the end
    done_at = cell.frames[-1][0]
    assert ticks[0] - cell.sent_at < 0.3
    assert ticks[1] - ticks[0] > 0.25 and ticks[2] - ticks[1] > 0.25
    assert done_at - ticks[0] > 0.9


def test_python_subprocess_streams_live(agent: Agent) -> None:
    child = "import time\\nfor i in range(3):\\n    print(i)\\n    time.sleep(0.4)"
    cell = ok(agent.execute(f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', '{child}'])"))
    stamps = [stamp for stamp, f in cell.frames if isinstance(f, Output)]
    assert cell.stdout == "0\n1\n2\n"
    assert stamps[-1] - stamps[0] > 0.6  # not buffered until the child exits


def test_thread_printing_after_the_cell(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import threading, time\ndef late():\n    time.sleep(0.5)\n    print('from thread')\nthreading.Thread(target=late).start()"
        )
    )
    assert cell.stdout == ""
    assert cell.frames[-1][0] - cell.sent_at < 0.4  # done does not wait for the thread
    later = agent.collect(2.0)
    assert b"".join(f.data for f in later if isinstance(f, Output) and f.stream == "stdout") == b"from thread\n"
    assert not [f for f in later if isinstance(f, Message)]


# --------------------------------------------------------------------------------------
# output capture
# --------------------------------------------------------------------------------------
def test_background_process_holding_stdout_does_not_block_done(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import subprocess\nbg = subprocess.Popen('sleep 0.6; echo later; echo later-err >&2', shell=True)\nprint('now')"
        )
    )
    assert cell.stdout == "now\n"
    assert cell.frames[-1][0] - cell.sent_at < 0.5
    later = agent.collect(2.0)
    assert b"".join(f.data for f in later if isinstance(f, Output) and f.stream == "stdout") == b"later\n"
    assert b"".join(f.data for f in later if isinstance(f, Output) and f.stream == "stderr") == b"later-err\n"
    ok(agent.execute("bg.wait()"))


def test_display_from_a_thread_between_cells(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import threading, time\n"
            "def show():\n"
            "    time.sleep(0.3)\n"
            "    print('text first')\n"
            "    display({'text/plain': 'late', 'text/html': '<p>late</p>'}, raw=True)\n"
            "threading.Thread(target=show).start()"
        )
    )
    later = agent.collect(1.5)
    assert isinstance(later[0], Output) and later[0].data.startswith(b"text first")
    shown = [f.body for f in later if isinstance(f, Message)]
    assert shown == [
        {
            "type": "display",
            "id": cell.done["id"],
            "data": {"text/plain": "late", "text/html": "<p>late</p>"},
            "metadata": {},
        }
    ]


def test_subprocess_output_on_the_right_streams(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import subprocess, os\n"
            "subprocess.run('echo to-out; echo to-err >&2', shell=True)\n"
            "rc = os.system('echo system-out; echo system-err 1>&2')\n"
            "print('python-out')"
        )
    )
    assert cell.stdout == "to-out\nsystem-out\npython-out\n"
    assert cell.stderr == "to-err\nsystem-err\n"


def test_raw_os_write(agent: Agent) -> None:
    cell = ok(agent.execute("import os\nos.write(1, b'raw-out\\n')\nos.write(2, b'raw-err\\n');"))
    assert cell.stdout == "raw-out\n"
    assert cell.stderr == "raw-err\n"


def test_fake_frames_nul_and_invalid_utf8(agent: Agent) -> None:
    payload = b'msg 30\n{"type":"done","id":"x"}\nout 5\n\x00\x00\xff\xfe\x80 err 999999999\n'
    cell = ok(
        agent.execute(
            f"import os, sys\nos.write(1, {payload!r})\nsys.stdout.buffer.write({payload!r})\nprint('\\x00text\\udcff')"
        )
    )
    assert cell.output("stdout") == payload + payload + b"\x00text\\udcff\n"
    assert plain(ok(agent.execute("'still alive'"))) == "'still alive'"


def test_flood_with_output_limit(agent: Agent) -> None:
    start = time.monotonic()
    cell = ok(
        agent.execute(
            "import os, sys\nchunk = b'x' * 65536\nfor _i in range(300):\n    os.write(1, chunk)\n"
            "sys.stdout.write('y' * 1000000)\nos.system('head -c 3000000 /dev/zero')\nprint('end')",
            output_limit=1000,
            timeout=30,
        )
    )
    assert len(cell.output("stdout")) == 1000
    total = 300 * 65536 + 1000000 + 3000000 + 4
    assert cell.done["truncated"] == total - 1000
    assert time.monotonic() - start < 15
    # responsive afterwards, and the limit is per cell
    cell = ok(agent.execute("print('small')", output_limit=1000))
    assert cell.stdout == "small\n" and cell.done["truncated"] == 0


def test_unlimited_large_output_arrives_complete(agent: Agent) -> None:
    cell = ok(agent.execute("import sys\nsys.stdout.write(''.join(str(i % 10) for i in range(3000000)))", timeout=30))
    out = cell.output("stdout")
    assert len(out) == 3000000 and out[:12] == b"012345678901"


def test_close_fd1_then_print_next_cell(agent: Agent) -> None:
    cell = agent.execute("import os\nos.close(1)\nos.close(2)\nprint('lost')")
    assert cell.status == "error" and cell.error["ename"] == "OSError"
    assert ok(agent.execute("print('back again')")).stdout == "back again\n"
    assert (
        ok(agent.execute("import subprocess\nsubprocess.run(['echo', 'child ok'])\nos.write(2, b'e\\n');")).stdout
        == "child ok\n"
    )


def test_redirected_and_closed_streams_are_repaired(agent: Agent) -> None:
    ok(agent.execute("import os, sys\nnull = os.open(os.devnull, os.O_WRONLY)\nos.dup2(null, 1)\nsys.stdout.close()"))
    assert ok(agent.execute("print('repaired')")).stdout == "repaired\n"
    cell = agent.execute("exit()")  # site's exit() closes sys.stdin and raises SystemExit
    assert cell.error["ename"] == "SystemExit"
    assert plain(ok(agent.execute("import sys; sys.stdin.read()"))) == "''"


def test_stdin_is_dev_null_and_input_is_refused(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import subprocess, sys\nr = subprocess.run(['cat'], capture_output=True, timeout=5)\n(r.stdout, sys.stdin.read())"
        )
    )
    assert plain(cell) == "(b'', '')"
    cell = agent.execute("name = input('Your name? ')")
    assert cell.status == "error"
    assert "this frontend does not answer input requests" in cell.error["evalue"]
    assert not any("python_agent.py" in line for line in cell.error["traceback"])


def test_protocol_fds_not_inherited(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import subprocess\nprint(subprocess.run(['ls', '/proc/self/fd'], capture_output=True, text=True).stdout.split())"
        )
    )
    fds = sorted(int(fd) for fd in eval(cell.stdout))
    assert fds[:3] == [0, 1, 2] and max(fds) < 10, fds  # the agent's fds (>= 64) stay private
    cell = ok(agent.execute("import os\nos.closerange(3, 200)\nprint('still here')"))
    assert cell.stdout == "still here\n"


# --------------------------------------------------------------------------------------
# rich output
# --------------------------------------------------------------------------------------
def test_display_with_repr_html(agent: Agent) -> None:
    ok(
        agent.execute(
            "class Card:\n    def _repr_html_(self):\n        return '<b>card</b>'\n    def __repr__(self):\n        return 'Card()'"
        )
    )
    cell = ok(agent.execute("print('before')\ndisplay(Card(), 7)\nprint('after')"))
    assert cell.flow() == ["stdout", "display", "display", "stdout", "done"]
    first, second = cell.messages("display")
    assert first["data"] == {"text/html": "<b>card</b>", "text/plain": "Card()"}
    assert second["data"] == {"text/plain": "7"}
    assert cell.result is None


def test_result_with_repr_png_and_others(agent: Agent) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00fake"
    ok(
        agent.execute(
            "class Pic:\n"
            f"    def _repr_png_(self): return {png!r}\n"
            "    def _repr_svg_(self): return '<svg/>'\n"
            "    def _repr_markdown_(self): return '**md**'\n"
            "    def _repr_latex_(self): return '$x$'\n"
            "    def _repr_json_(self): return {'a': [1, 2]}\n"
            "    def _repr_jpeg_(self): return None"
        )
    )
    data = ok(agent.execute("Pic()")).result["data"]
    assert base64.b64decode(data["image/png"]) == png
    assert data["image/svg+xml"] == "<svg/>"
    assert data["text/markdown"] == "**md**"
    assert data["text/latex"] == "$x$"
    assert data["application/json"] == {"a": [1, 2]}
    assert "image/jpeg" not in data
    assert data["text/plain"].startswith("<__main__.Pic object")


def test_mimebundle_and_failing_repr_methods(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "class Multi:\n"
            "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
            "        return {'text/html': '<i>m</i>', 'application/vnd.custom+json': {'k': 1}}, {'text/html': {'isolated': True}}\n"
            "    def _repr_html_(self): return 'not used'\n"
            "class Broken:\n"
            "    def _repr_html_(self): raise ValueError('no html')\n"
            "    def __repr__(self): raise RuntimeError('no repr')\n"
            "display(Multi())\n"
            "Broken()"
        )
    )
    shown = cell.messages("display")[0]
    assert shown["data"]["text/html"] == "<i>m</i>"
    assert shown["data"]["application/vnd.custom+json"] == {"k": 1}
    assert shown["metadata"] == {"text/html": {"isolated": True}}
    assert "<__main__.Broken object at" in plain(cell)
    assert "no html" in cell.stderr and "no repr" in cell.stderr
    # a class is not rendered through its unbound _repr_html_
    assert ok(agent.execute("Multi")).result["data"] == {"text/plain": "<class '__main__.Multi'>"}


def test_display_raw_bundle_over_frame_limit(agent: Agent) -> None:
    cell = ok(agent.execute("display({'text/plain': 'big image', 'image/png': 'A' * 3000000}, raw=True)"))
    assert cell.messages("display")[0]["data"] == {"text/plain": "big image"}
    assert "image/png dropped" in cell.stderr
    cell = ok(agent.execute("'z' * 3000000"))
    assert 100000 < len(plain(cell)) < 2 << 20


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def test_traceback_quotes_the_offending_line(agent: Agent) -> None:
    ok(agent.execute("def divide(a, b):\n    return a / b"))
    cell = agent.execute("x = 1\ny = divide(x, 0)")
    assert cell.status == "error"
    error = cell.error
    assert error["ename"] == "ZeroDivisionError" and error["evalue"] == "division by zero"
    text = "\n".join(error["traceback"])
    assert 'File "<cell 2>", line 2, in <module>' in text
    assert "    y = divide(x, 0)" in text
    assert 'File "<cell 1>", line 2, in divide' in text
    assert "    return a / b" in text
    assert "python_agent.py" not in text
    assert error["traceback"][-1] == "ZeroDivisionError: division by zero"
    assert cell.kinds()[-2:] == ["error", "done"]


def test_syntax_error_shows_line_and_caret(agent: Agent) -> None:
    cell = agent.execute("a = 1\nb = 2\nprint(a b)")
    assert cell.status == "error"
    assert cell.error["ename"] == "SyntaxError"
    text = "\n".join(cell.error["traceback"])
    assert '<cell 1>", line 3' in text and "print(a b)" in text and "^" in text
    assert ok(agent.execute("1 + 1")).result["data"]["text/plain"] == "2"


def test_system_exit_and_memory_error_keep_the_agent(agent: Agent) -> None:
    cell = agent.execute("import sys\nsys.exit(3)")
    assert cell.status == "error" and cell.error["ename"] == "SystemExit" and cell.error["evalue"] == "3"
    cell = agent.execute("block = bytearray(2 ** 52)")
    assert cell.status == "error" and cell.error["ename"] == "MemoryError"
    cell = agent.execute("def f(): f()\nf()")
    assert cell.error["ename"] == "RecursionError"
    assert plain(ok(agent.execute("'alive'"))) == "'alive'"


def test_huge_error_message_fits_in_a_frame(agent: Agent) -> None:
    cell = agent.execute("raise ValueError('v' * 5000000)")
    assert cell.status == "error" and cell.error["ename"] == "ValueError"
    assert 1000 < len(cell.error["evalue"]) < 1048576


def test_fork_child_does_not_speak_protocol(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import os\npid = os.fork()\nif pid == 0:\n    print('child')\nelse:\n    os.waitpid(pid, 0)\n    print('parent')"
        )
    )
    assert sorted(cell.stdout.split()) == ["child", "parent"]
    assert len(cell.messages("done")) == 1
    assert plain(ok(agent.execute("'after fork'"))) == "'after fork'"
    assert agent.collect(0.3) == []


# --------------------------------------------------------------------------------------
# interrupt
# --------------------------------------------------------------------------------------
def interrupted(agent: Agent, code: str) -> Cell:
    cell = agent.execute(code, interrupt_after=0.5, timeout=10)
    latency = cell.frames[-1][0] - cell.interrupted_at
    assert latency < 2.0, latency
    assert cell.status == "interrupted"
    assert cell.error["ename"] == "KeyboardInterrupt"
    assert cell.kinds()[-2:] == ["error", "done"]
    return cell


def test_interrupt_sleep_keeps_state(agent: Agent) -> None:
    ok(agent.execute("kept = 'state'"))
    cell = interrupted(agent, "import time\ntime.sleep(100)")
    assert "time.sleep(100)" in "\n".join(cell.error["traceback"])
    assert plain(ok(agent.execute("kept"))) == "'state'"


def test_interrupt_busy_loop(agent: Agent) -> None:
    interrupted(agent, "n = 0\nwhile True:\n    n += 1")
    assert int(plain(ok(agent.execute("n")))) > 0


def test_interrupt_os_system_and_subprocess(agent: Agent) -> None:
    interrupted(agent, "import os\nos.system('sleep 100')")
    interrupted(agent, "import subprocess\nsubprocess.run(['sleep', '100'])")
    # a child that ignores SIGINT is killed after a second
    interrupted(agent, "import os\nos.system('trap \"\" INT; sleep 100')")
    assert plain(ok(agent.execute("1"))) == "1"


def test_stuck_interrupt_spares_earlier_background_jobs(agent: Agent) -> None:
    ok(agent.execute("import subprocess, os\njob = subprocess.Popen(['sh', '-c', 'trap \"\" INT; sleep 100'])"))
    interrupted(agent, "os.system('trap \"\" INT; sleep 100')")
    assert ok(agent.execute("job.poll()")).result is None  # still running
    ok(agent.execute("job.kill(); job.wait()"))


def test_interrupt_right_after_execute(agent: Agent) -> None:
    ok(agent.execute("kept = 1"))
    for _ in range(5):
        cell = agent.execute("import time\ntime.sleep(100)", interrupt_after=0.0)
        assert cell.status == "interrupted" and cell.frames[-1][0] - cell.sent_at < 2.0
    assert plain(ok(agent.execute("kept"))) == "1"


def test_interrupt_with_background_thread_and_top_level_await(agent: Agent) -> None:
    interrupted(
        agent,
        "import threading, time\nthreading.Thread(target=time.sleep, args=(3,), daemon=True).start()\ntime.sleep(100)",
    )
    interrupted(agent, "import asyncio\nawait asyncio.sleep(100)")
    assert plain(ok(agent.execute("import asyncio\nawait asyncio.sleep(0.01)\n'loop ok'"))) == "'loop ok'"


def test_user_code_can_catch_keyboard_interrupt(agent: Agent) -> None:
    code = "import time\ntry:\n    time.sleep(100)\nexcept KeyboardInterrupt:\n    print('cleaning up')\n    time.sleep(0.3)\n    print('clean')"
    cell = agent.execute(code, interrupt_after=0.5)
    assert cell.status == "ok" and cell.stdout == "cleaning up\nclean\n"


def test_interrupt_when_idle_is_ignored(agent: Agent) -> None:
    ok(agent.execute("v = 1"))
    agent.send({"type": "interrupt"})
    assert agent.collect(0.5) == []
    assert plain(ok(agent.execute("import time\ntime.sleep(0.3)\nv + 1"))) == "2"


def test_flood_can_be_interrupted(agent: Agent) -> None:
    cell = interrupted(agent, "while True:\n    print('spam ' * 100)")
    assert cell.done["truncated"] == 0 and len(cell.output("stdout")) > 0
    cell = agent.execute(
        "import sys\nwhile True:\n    sys.stdout.write('z' * 10000)", output_limit=5000, interrupt_after=0.5
    )
    assert cell.status == "interrupted" and len(cell.output("stdout")) == 5000 and cell.done["truncated"] > 0


# --------------------------------------------------------------------------------------
# top-level await
# --------------------------------------------------------------------------------------
def test_top_level_await(agent: Agent) -> None:
    cell = ok(
        agent.execute(
            "import asyncio\nasync def twice(v):\n    await asyncio.sleep(0.01)\n    return 2 * v\nr = await twice(4)\nawait twice(r)"
        )
    )
    assert plain(cell) == "16"
    assert plain(ok(agent.execute("r"))) == "8"
    # asyncio.run still works in an ordinary cell
    assert plain(ok(agent.execute("asyncio.run(twice(1))"))) == "2"


# --------------------------------------------------------------------------------------
# complete / inspect / is_complete
# --------------------------------------------------------------------------------------
def test_complete(agent: Agent) -> None:
    ok(
        agent.execute(
            "import os\nvariable_one = 1\nvariable_two = 'x'\nclass Thing:\n    attribute_a = 1\n    def method_b(self): pass\nthing = Thing()"
        )
    )
    reply = agent.request("complete", code="print(variab", cursor_pos=12)
    assert reply["matches"] == ["variable_one", "variable_two"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (6, 12)
    reply = agent.request("complete", code="thing.me", cursor_pos=8)
    assert reply["matches"] == ["thing.method_b"] and reply["cursor_start"] == 0
    reply = agent.request("complete", code="os.path.jo", cursor_pos=10)
    assert "os.path.join" in reply["matches"]
    # cursor positions are in code points: the prefix holds non-BMP and non-ASCII characters
    code = "s = '🎉é'; variable_t"
    reply = agent.request("complete", code=code, cursor_pos=len(code))
    assert reply["matches"] == ["variable_two"]
    assert reply["cursor_start"] == len(code) - len("variable_t") and reply["cursor_end"] == len(code)
    # cursor in the middle: only the text before it counts
    reply = agent.request("complete", code="variable_o + 1", cursor_pos=10)
    assert reply["matches"] == ["variable_one"] and reply["cursor_end"] == 10
    assert "json" in agent.request("complete", code="import js", cursor_pos=9)["matches"]
    assert agent.request("complete", code="zzzq", cursor_pos=4)["matches"] == []


def test_inspect(agent: Agent) -> None:
    ok(
        agent.execute(
            "def greet(name: str, punct='!') -> str:\n    '''Say hello to someone.'''\n    return 'hi ' + name + punct"
        )
    )
    reply = agent.request("inspect", code="greet", cursor_pos=3, detail_level=0)
    assert reply["found"] is True
    text = reply["data"]["text/plain"]
    assert "greet(name: str, punct='!') -> str" in text
    assert "Say hello to someone." in text and "function" in text
    # inside the call's arguments the callable is inspected
    reply = agent.request("inspect", code="greet('bob', ", cursor_pos=13, detail_level=1)
    assert reply["found"] and "return 'hi ' + name + punct" in reply["data"]["text/plain"]  # source
    reply = agent.request("inspect", code="len", cursor_pos=3, detail_level=0)
    assert reply["found"] and "Return the number of items" in reply["data"]["text/plain"]
    reply = agent.request("inspect", code="no_such_name", cursor_pos=5, detail_level=0)
    assert reply["found"] is False and reply["data"] == {}


def test_is_complete(agent: Agent) -> None:
    def check(code: str) -> tuple[str, str]:
        reply = agent.request("is_complete", code=code)
        return reply["status"], reply["indent"]

    assert check("x = 1") == ("complete", "")
    assert check("for i in range(3):") == ("incomplete", "    ")
    assert check("def f():\n    if x:") == ("incomplete", "        ")
    assert check("for i in range(3):\n    print(i)")[0] == "incomplete"
    assert check("for i in range(3):\n    print(i)\n\n") == ("complete", "")
    # As IPython's check (ipykernel, jupyter console): a one-line block runs at once, and an
    # indented block after ONE empty line (the console sends it with the indent it offered).
    assert check("for i in range(3): print(i)") == ("complete", "")
    assert check("for i in range(3):\n    print(i)\n") == ("complete", "")
    assert check("for i in range(3):\n    print(i)\n    ") == ("complete", "")
    assert check("if x:\n    pass\nx = 1") == ("complete", "")
    assert check("x = 1 + \\") == ("incomplete", "")
    assert check("x = (1,") == ("incomplete", "")
    assert check("s = '''abc")[0] == "incomplete"
    assert check("def f(:")[0] == "invalid"
    assert check("a b")[0] == "invalid"
    assert check("await something()") == ("complete", "")
    assert check("x = [\n    1,\n    2]") == ("complete", "")  # indented, but no block
    assert check("y = 2\nclass A:\n    a = 1\n    def f(self):\n        return 1") == ("incomplete", "        ")
    assert check("if a:\n    pass\nelse:") == ("incomplete", "    ")


# --------------------------------------------------------------------------------------
# shutdown, speed
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["shutdown", "eof"])
def test_exit_kills_children(agent: Agent, how: str) -> None:
    cell = ok(agent.execute("import subprocess\np = subprocess.Popen(['sleep', '100'])\np.pid"))
    child = int(plain(cell))
    assert alive(child)
    if how == "shutdown":
        agent.send({"type": "shutdown"})
    else:
        agent.proc.stdin.close()
    agent.proc.wait(3)
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_trivial_cell_round_trip(agent: Agent) -> None:
    times = []
    for i in range(200):
        cell = ok(agent.execute(f"{i}"))
        times.append(cell.frames[-1][0] - cell.sent_at)
    p50 = statistics.median(times)
    print(f"trivial cell round trip: p50 {p50 * 1000:.2f} ms, max {max(times) * 1000:.2f} ms")
    assert p50 < 0.05
