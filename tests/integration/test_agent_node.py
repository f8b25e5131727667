"""Drive the real Node.js agent (sandbox_kernel/agents/node_agent.js) over the framed protocol.

No sandbox is involved: the agent runs as a plain subprocess with stdin/stdout as the protocol
pipes, exactly as the kernel spawns it inside a sandbox (tests/agents.py).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents import COMMANDS, Agent, Cell
from sandbox_kernel.protocol import Message, Output

NODE = COMMANDS["node"][0]


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent("node", tmp_path)
    try:
        yield a
    finally:
        a.close()


def ok(run: Cell) -> Cell:
    assert run.status == "ok", (run.last_error, run.frames)
    return run


# --------------------------------------------------------------------------------------------
# start-up and basics
# --------------------------------------------------------------------------------------------


def test_ready_language_info(agent: Agent) -> None:
    info = agent.ready["language_info"]
    version = subprocess.run([NODE, "-p", "process.versions.node"], capture_output=True, text=True).stdout.strip()
    assert info == {
        "name": "javascript",
        "version": version,
        "mimetype": "application/javascript",
        "file_extension": ".js",
        "pygments_lexer": "javascript",
        "codemirror_mode": "javascript",
    }
    assert agent.ready["agent"] == "node"
    assert agent.ready["protocol"] == 2


def test_state_across_cells_and_last_expression_result(agent: Agent) -> None:
    assert ok(agent.execute("var a = 1; let b = 2; const c = 3; function add(x, y) { return x + y }")).value is None
    assert ok(agent.execute("add(a, b) + c")).value == "6"
    assert ok(agent.execute("'text'")).value == "'text'"
    assert ok(agent.execute("({x: [1, 2]})")).value == "{ x: [ 1, 2 ] }"
    assert ok(agent.execute("{y: 1}")).value == "{ y: 1 }"  # like the REPL: an object, not a block
    assert ok(agent.execute("undefined")).value is None
    assert ok(agent.execute("let nothing; nothing")).value is None
    assert ok(agent.execute("null")).value == "null"
    assert ok(agent.execute("b = 10; if (true) { 5 }")).value is None  # only a last expression statement counts
    assert ok(agent.execute("b")).value == "10"


def test_redeclared_let_and_const_across_cells(agent: Agent) -> None:
    ok(agent.execute("const limit = 5; let name = 'a'"))
    assert ok(agent.execute("const limit = 7; let name = 'b'; limit")).value == "7"
    assert ok(agent.execute("`${name}${limit}`")).value == "'b7'"
    ok(agent.execute("const {p, q: [r]} = {p: 1, q: [2]}"))
    assert ok(agent.execute("p + r")).value == "3"
    # Inner scopes keep their normal semantics.
    assert (
        ok(agent.execute("const fns = []; for (let i = 0; i < 3; i++) fns.push(() => i); fns.map(f => f())")).value
        == "[ 0, 1, 2 ]"
    )


def test_class_persistence_and_redefinition(agent: Agent) -> None:
    ok(agent.execute("class Point { constructor(x) { this.x = x } norm() { return Math.abs(this.x) } }"))
    assert ok(agent.execute("new Point(-4).norm()")).value == "4"
    ok(agent.execute("class Point { norm() { return 'v2' } }"))
    assert ok(agent.execute("new Point().norm()")).value == "'v2'"
    ok(agent.execute("class Point3 extends Point { }"))
    assert ok(agent.execute("new Point3() instanceof Point")).value == "true"


def test_top_level_await(agent: Agent) -> None:
    run = ok(agent.execute("const v = await new Promise(r => setTimeout(() => r(41), 50)); v + 1"))
    assert run.value == "42"
    assert ok(agent.execute("v")).value == "41"  # declared in an async cell, visible later
    ok(agent.execute("await null; function later() { return 'fn' } class Later {}; let w; var z = 3"))
    assert ok(agent.execute("[later(), new Later().constructor.name, w, z]")).value == "[ 'fn', 'Later', undefined, 3 ]"
    run = ok(agent.execute("for await (const x of [1, 2]) console.log(x)"))
    assert run.output() == b"1\n2\n"
    assert ok(agent.execute("await Promise.resolve([1, 2])")).value == "[ 1, 2 ]"
    run = agent.execute("await Promise.reject(new RangeError('nope'))")
    assert run.status == "error"
    assert run.last_error["ename"] == "RangeError" and run.last_error["evalue"] == "nope"
    # A cell ending in a promise (no await) shows the promise, like the REPL.
    assert "Promise" in ok(agent.execute("Promise.resolve(1)")).value


def test_console_streams_require_and_stdin(agent: Agent) -> None:
    run = ok(agent.execute("console.log('out', 1); console.error('err', 2); process.stdout.write('raw')"))
    assert run.output() == b"out 1\nraw"
    assert run.output("stderr") == b"err 2\n"
    assert ok(agent.execute("require('path').join('a', 'b')")).value == "'a/b'"
    assert ok(agent.execute("const os = require('os'); typeof os.cpus")).value == "'function'"
    assert ok(agent.execute("require('fs').readFileSync(0).length")).value == "0"  # stdin is /dev/null
    assert ok(agent.execute("(await import('node:path')).basename('/x/y.js')")).value == "'y.js'"


def test_display(agent: Agent) -> None:
    run = ok(
        agent.execute(
            "display('plain'); display({'text/html': '<b>hi</b>', 'text/plain': 'hi'});"
            "display({_toHtml() { return '<i>x</i>' }, v: 1}); 7"
        )
    )
    shown = [m["data"] for m in run.messages("display")]
    assert shown[0] == {"text/plain": "plain"}
    assert shown[1] == {"text/html": "<b>hi</b>", "text/plain": "hi"}
    assert shown[2]["text/html"] == "<i>x</i>" and "v: 1" in shown[2]["text/plain"]
    assert all(m["id"] == run.done["id"] for m in run.messages("display"))
    assert run.value == "7"
    # display keeps its place between printed lines
    run = ok(agent.execute("console.log('before'); display(1); console.log('after')"))
    kinds = [(f.data if isinstance(f, Output) else f.type) for _, f in run.frames]
    assert kinds == [b"before\n", "display", b"after\n", "done"]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_thrown_error_stack(agent: Agent) -> None:
    code = "function inner() { throw new TypeError('bad thing') }\nfunction outer() { inner() }\nouter()"
    run = agent.execute(code)
    assert run.status == "error"
    err = run.last_error
    assert err["ename"] == "TypeError"
    assert err["evalue"] == "bad thing"
    tb = err["traceback"]
    assert tb[0] == "TypeError: bad thing"
    assert "at inner (<cell" in tb[1] and ":1:" in tb[1]
    assert "at outer (<cell" in tb[2] and ":2:" in tb[2]
    assert ":3:" in tb[3]
    assert len(tb) == 4, tb  # no agent-internal frames
    assert not any("node_agent" in line or "node:vm" in line for line in tb)
    assert ok(agent.execute("1 + 1")).value == "2"  # the agent survived


def test_error_in_async_cell_has_cell_line_numbers(agent: Agent) -> None:
    run = agent.execute("await null\nconst k = 1\nnull.boom")
    assert run.status == "error" and run.last_error["ename"] == "TypeError"
    assert any(":3:" in line for line in run.last_error["traceback"]), run.last_error["traceback"]
    assert not any("node_agent" in line for line in run.last_error["traceback"])


def test_non_error_throws_and_syntax_errors(agent: Agent) -> None:
    run = agent.execute("throw 42")
    assert run.status == "error" and run.last_error["evalue"] == "42" and run.last_error["traceback"]
    run = agent.execute("throw {code: 'E'}")
    assert run.status == "error" and "code: 'E'" in run.last_error["evalue"]
    run = agent.execute("let = = 3")
    assert run.status == "error" and run.last_error["ename"] == "SyntaxError"
    run = agent.execute("foo(]")
    assert run.last_error["ename"] == "SyntaxError"
    assert "foo(]" in run.last_error["traceback"]  # the offending line is shown
    run = agent.execute("undefinedName + 1")
    assert run.last_error["ename"] == "ReferenceError" and "undefinedName" in run.last_error["evalue"]


def test_timer_exceptions_and_rejections_between_cells_do_not_kill_the_worker(agent: Agent) -> None:
    first = ok(
        agent.execute(
            "let kept = 'yes'; setTimeout(() => { throw new Error('boom in timer') }, 50);"
            "Promise.reject(new Error('lost promise')); 0"
        )
    )
    time.sleep(0.5)
    run = ok(agent.execute("kept"))  # collects the frames that arrived between the cells, too
    assert run.value == "'yes'"
    log = (first.output("stderr") + run.output("stderr")).decode("utf-8", "replace")
    assert "Uncaught Error: boom in timer" in log
    assert "Unhandled promise rejection: Error: lost promise" in log
    assert "node_agent" not in log


def test_process_exit_restarts_the_worker(agent: Agent) -> None:
    ok(agent.execute("var before = 1"))
    run = agent.execute("console.log('bye'); process.exit(3)")
    assert run.status == "error"
    assert run.output() == b"bye\n"
    assert run.last_error["ename"] == "SandboxRestarted"
    assert "variables from earlier cells are gone" in run.last_error["evalue"]
    assert ok(agent.execute("typeof before")).value == "'undefined'"
    assert ok(agent.execute("2 * 21")).value == "42"
    # Dying between cells: the cell that caused it finished fine; the next one is told.
    ok(agent.execute("var again = 1; setTimeout(() => process.exit(2), 100); 'scheduled'"))
    time.sleep(0.6)
    run = ok(agent.execute("typeof again"))
    assert run.value == "'undefined'"
    assert b"[sandbox] the JavaScript process exited with code 2 after the last cell" in run.output("stderr")
    assert b"variables from earlier cells are gone" in run.output("stderr")


# --------------------------------------------------------------------------------------------
# hostile output
# --------------------------------------------------------------------------------------------


def test_fake_frames_nul_and_invalid_utf8_are_data(agent: Agent) -> None:
    code = r"""
const fs = require('fs');
process.stdout.write('msg 33\n{"type":"done","status":"ok","id":1}\n');
fs.writeSync(1, '\x00\x00nul\x00');
process.stdout.write(Buffer.from([0xff, 0xfe, 0x80, 0x0a]));
fs.writeSync(2, 'err 99999999999\n');
process.stdout.write('\x01\x02SKM0000\x03');
"done-marker"
"""
    run = ok(agent.execute(code))
    assert (
        run.output()
        == b'msg 33\n{"type":"done","status":"ok","id":1}\n'
        + b"\x00\x00nul\x00"
        + b"\xff\xfe\x80\n"
        + b"\x01\x02SKM0000\x03"
    )
    assert run.output("stderr") == b"err 99999999999\n"
    assert run.value == "'done-marker'"
    assert ok(agent.execute("1")).value == "1"


def test_child_processes_output_is_captured(agent: Agent) -> None:
    code = """
const cp = require('child_process');
cp.execSync('echo hi', {stdio: 'inherit'});
cp.execSync('echo oops >&2', {stdio: 'inherit'});
cp.spawnSync('printf', ['\\\\000z'], {stdio: 'inherit'});
"""
    run = ok(agent.execute(code))
    assert run.output() == b"hi\n\x00z"
    assert run.output("stderr") == b"oops\n"


def test_closing_fd1_does_not_break_the_agent(agent: Agent) -> None:
    run = agent.execute("require('fs').closeSync(1); 5", timeout=10)
    assert run.status == "ok" and run.value == "5"
    assert run.elapsed < 3
    assert ok(agent.execute("6")).value == "6"


def test_closing_fd1_loses_stdout_for_that_cell_only(agent: Agent) -> None:
    """Issue 11: after `fs.closeSync(1)` nothing printed in later cells arrived."""
    run = ok(
        agent.execute(
            "const fs = require('fs'); fs.closeSync(1); fs.closeSync(2); console.log('lost'); fs.writeSync(1, 'lost')"[
                :-21
            ]
        )
    )
    assert run.output() == b""
    run = agent.execute("fs.closeSync(1); fs.writeSync(1, 'x')")
    assert run.last_error["ename"] == "Error" and "EBADF" in run.last_error["evalue"]
    run = ok(
        agent.execute(
            "console.log('back'); console.error('err back'); require('child_process').execSync('echo child', {stdio: 'inherit'}); fs.writeSync(1, 'w')"
        )
    )
    assert run.output() == b"back\nchild\nw" and run.output("stderr") == b"err back\n"


def test_lone_surrogates_become_replacement_characters(agent: Agent) -> None:
    """Issue 11: display() of a lone UTF-16 surrogate produced a frame that was not valid UTF-8."""
    run = ok(agent.execute("display('a\\ud800b'); display({'text/html': '\\udfff'}); 'x\\ud83d'"))
    texts = [d["data"].get("text/plain", d["data"].get("text/html")) for d in run.messages("display")]
    assert texts == ["a\ufffdb", "\ufffd"]
    for text in texts + [run.value]:
        text.encode("utf-8")  # no lone surrogate left
    # A well-formed pair is kept.
    assert ok(agent.execute("'\\ud83d\\ude00'")).value == "'\U0001f600'"


def test_ending_process_stdout_does_not_silence_later_cells(agent: Agent) -> None:
    run = ok(agent.execute("process.stdout.end('bye\\n'); process.stderr.destroy(); 5"))
    assert run.output() == b"bye\n" and run.value == "5"
    run = ok(agent.execute("console.log('still printed'); console.error('and this')"))
    assert run.output() == b"still printed\n" and run.output("stderr") == b"and this\n"
    assert run.elapsed < 0.4  # the markers still got through: no fallback timeout


def test_background_process_holding_stdout_does_not_block_done(agent: Agent) -> None:
    run = ok(
        agent.execute(
            "require('child_process').spawn('sh', ['-c', 'echo bg; sleep 30'], {stdio: 'inherit'}); 'started'"
        )
    )
    assert run.elapsed < 2
    ok(agent.execute("await new Promise(r => setTimeout(r, 300))"))
    assert ok(agent.execute("'still fine'")).value == "'still fine'"


def test_flood_with_small_output_limit(agent: Agent) -> None:
    code = (
        "const chunk = 'y'.repeat(1000) + '\\n'; for (let i = 0; i < 20000; i++) process.stdout.write(chunk); 'flooded'"
    )
    run = ok(agent.execute(code, output_limit=5000, timeout=30))
    assert len(run.output()) == 5000
    assert run.done["truncated"] == 20000 * 1001 - 5000
    assert run.value == "'flooded'"
    # Also console.log + subprocess flood, the agent stays responsive.
    run = ok(
        agent.execute(
            "require('child_process').execSync('head -c 3000000 /dev/zero', {stdio: 'inherit'}); 1", output_limit=1000
        )
    )
    assert len(run.output()) == 1000 and run.done["truncated"] == 3000000 - 1000
    started = time.monotonic()
    assert ok(agent.execute("'alive'")).value == "'alive'"
    assert time.monotonic() - started < 1


def test_unlimited_large_output_arrives_before_done(agent: Agent) -> None:
    code = "for (let i = 0; i < 5000; i++) console.log('line ' + i); console.error('tail'); 'end'"
    run = ok(agent.execute(code))
    lines = run.output().decode().splitlines()
    assert lines == [f"line {i}" for i in range(5000)]
    assert run.output("stderr") == b"tail\n"
    assert run.done["truncated"] == 0
    # every output frame came before result and done
    kinds = ["out" if isinstance(f, Output) else f.type for _, f in run.frames]
    assert kinds[-2:] == ["result", "done"]


def test_slow_reader_gets_everything_in_order(agent: Agent) -> None:
    agent.gate.clear()  # the "kernel" stops reading while the cell floods without a limit
    code = (
        "const line = 'z'.repeat(999) + '\\n'; for (let i = 0; i < 10000; i++) process.stdout.write(line); 'flood done'"
    )
    cell = agent.start(code)
    time.sleep(1.0)
    agent.gate.set()
    run = ok(agent.finish(cell, 30))
    assert len(run.output()) == 10000 * 1000
    assert set(run.output()) == {ord("z"), ord("\n")}
    assert run.value == "'flood done'" and run.done["truncated"] == 0


def test_held_back_marker_lookalike_tail_is_flushed(agent: Agent) -> None:
    # A lone \x01 could start a marker, so the agent holds it until more bytes arrive.
    run = ok(agent.execute("process.stdout.write('a\\x01'); process.stderr.write('\\x01\\x02'); 1"))
    assert run.output() == b"a\x01"
    assert run.output("stderr") == b"\x01\x02"


def test_output_and_display_between_cells(agent: Agent) -> None:
    ok(agent.execute("setTimeout(() => { console.log('later'); display('shown later') }, 200); 'scheduled'"))
    frames = []
    deadline = time.monotonic() + 5
    while len(frames) < 2 and time.monotonic() < deadline:
        frames.append(agent.next_frame(5))
    assert isinstance(frames[0], Output) and frames[0].data == b"later\n"
    assert isinstance(frames[1], Message) and frames[1].type == "display"
    assert frames[1].body["id"] is None and frames[1].body["data"] == {"text/plain": "shown later"}


def test_static_imports_become_dynamic_imports(agent: Agent) -> None:
    code = "import fs, {readFileSync as rfs} from 'fs'\nimport * as p from 'node:path'\n[typeof fs.readFileSync, rfs === fs.readFileSync, p.sep]"
    run = ok(agent.execute(code))
    assert run.value == "[ 'function', true, '/' ]"
    assert run.output("stderr") == b""  # no ExperimentalWarning leaks into the user's stderr
    assert ok(agent.execute("typeof rfs")).value == "'function'"
    # Local modules resolve from the working directory, for import, import() and require.
    cwd = Path(agent.workdir)
    (cwd / "mod.mjs").write_text("export const v = 'esm'; export default 'dflt';\n")
    (cwd / "cjs.js").write_text("module.exports = {w: 'cjs'};\n")
    run = ok(
        agent.execute(
            "import d, {v} from './mod.mjs'\nconst m = await import('./mod.mjs');\n[d, v, m.v, require('./cjs.js').w]"
        )
    )
    assert run.value == "[ 'dflt', 'esm', 'esm', 'cjs' ]"
    run = ok(agent.execute("const later = () => import('node:os'); (await later()).EOL"))
    assert run.value == "'\\n'"


def test_user_code_shadowing_globals_does_not_break_the_agent(agent: Agent) -> None:
    ok(agent.execute("let process = 'mine'; const globalThis = 3; let JSON = null"))
    assert ok(agent.execute("process + globalThis")).value == "'mine3'"
    reply = agent.request("complete", code="Mat", cursor_pos=3)
    assert "Math" in reply["matches"]
    run = agent.execute("throw new Error('still reported')")
    assert run.last_error["evalue"] == "still reported"
    run = agent.execute("await new Promise(r => setTimeout(r, 100000))", interrupt_after=0.2)
    assert run.status == "interrupted" and run.elapsed < 2.2


def test_output_streams_live(agent: Agent) -> None:
    code = "for (let i = 0; i < 4; i++) { console.log('tick ' + i); await new Promise(r => setTimeout(r, 300)) }"
    run = ok(agent.execute(code))
    arrivals = [at for at, f in run.frames if isinstance(f, Output)]
    assert len(arrivals) == 4
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(g > 0.2 for g in gaps), gaps
    # synchronous code that blocks between prints streams too
    code = "for (let i = 0; i < 3; i++) { console.log(i); const t = Date.now(); while (Date.now() - t < 300) {} }"
    run = ok(agent.execute(code))
    arrivals = [at for at, f in run.frames if isinstance(f, Output)]
    assert len(arrivals) == 3 and arrivals[-1] - arrivals[0] > 0.4


# --------------------------------------------------------------------------------------------
# interrupt
# --------------------------------------------------------------------------------------------


def test_interrupt_busy_loop_keeps_state(agent: Agent) -> None:
    ok(agent.execute("let survivor = 'alive'; let counter = 0"))
    run = agent.execute("while (true) { counter++ }", interrupt_after=0.3)
    assert run.status == "interrupted"
    assert run.last_error["ename"] == "KeyboardInterrupt"
    assert run.elapsed < 0.3 + 2
    assert ok(agent.execute("survivor")).value == "'alive'"  # breakOnSigint: the worker survives
    assert int(ok(agent.execute("counter")).value) > 0


def test_interrupt_output_flood_is_fast_and_output_keeps_working(agent: Agent) -> None:
    for code in (
        "let k = 0; while (true) { process.stdout.write('y'.repeat(10000)); k++ }",
        "while (true) { console.log('x'.repeat(100)); console.error('e') }",
    ):
        run = agent.execute(code, output_limit=10000, interrupt_after=0.5)
        assert run.status == "interrupted"
        assert run.elapsed < 0.5 + 0.5  # stopped by breakOnSigint, no escalation needed
        assert len(run.output()) + len(run.output("stderr")) == 10000 and run.done["truncated"] > 0
        # The interrupt may land inside Node's stream code; stdout and stderr must still work.
        run = ok(agent.execute("console.log('hello'); console.error('again'); typeof k"))
        assert run.output() == b"hello\n" and run.output("stderr") == b"again\n"
        assert run.value == "'number'"


def test_interrupt_async_sleep_keeps_state_and_abandons_the_cell(agent: Agent) -> None:
    ok(agent.execute("var kept = 1; var after = 'not run'"))
    run = agent.execute(
        "console.log('waiting'); await new Promise(r => setTimeout(r, 100000)); after = 'ran'", interrupt_after=0.3
    )
    assert run.status == "interrupted" and run.last_error["ename"] == "KeyboardInterrupt"
    assert run.output() == b"waiting\n"
    assert run.elapsed < 0.3 + 2
    assert ok(agent.execute("kept")).value == "1"
    # The abandoned cell never continues, even when its promise settles later.
    run = agent.execute("await new Promise(r => setTimeout(r, 800)); after = 'ran'", interrupt_after=0.2)
    assert run.status == "interrupted"
    ok(agent.execute("await new Promise(r => setTimeout(r, 1200))"))
    assert ok(agent.execute("after")).value == "'not run'"


def test_interrupt_waiting_for_child_process_keeps_state(agent: Agent) -> None:
    ok(agent.execute("const here = 'still here'"))
    run = agent.execute("require('child_process').execSync('sleep 30')", interrupt_after=0.3)
    assert run.status == "interrupted"
    assert run.elapsed < 0.3 + 2
    assert ok(agent.execute("here")).value == "'still here'"


def test_interrupt_unbreakable_loop_restarts_worker(agent: Agent) -> None:
    ok(agent.execute("var lost = 'soon gone'"))
    run = agent.execute("await null; while (true) {}", interrupt_after=0.3)
    assert run.status == "interrupted"
    assert run.elapsed < 0.3 + 2
    assert run.last_error["ename"] == "SandboxRestarted"
    assert "variables from earlier cells are gone" in run.last_error["evalue"]
    assert ok(agent.execute("typeof lost")).value == "'undefined'"
    assert ok(agent.execute("1 + 2")).value == "3"


def test_interrupt_when_idle_is_ignored(agent: Agent) -> None:
    ok(agent.execute("let idle = 5"))
    agent.send({"type": "interrupt"})
    time.sleep(0.3)
    assert agent.frames.empty()
    assert ok(agent.execute("idle")).value == "5"


# --------------------------------------------------------------------------------------------
# complete / inspect / is_complete
# --------------------------------------------------------------------------------------------


def test_complete(agent: Agent) -> None:
    reply = agent.request("complete", code="Mat", cursor_pos=3)
    assert "Math" in reply["matches"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 3)
    reply = agent.request("complete", code="x = Math.fl", cursor_pos=11)
    assert reply["matches"] == ["floor"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (9, 11)
    ok(agent.execute("const myVariable = {alpha: 1, beta: 2}; let myOther = 1"))
    reply = agent.request("complete", code="myV", cursor_pos=3)
    assert reply["matches"] == ["myVariable"]
    reply = agent.request("complete", code="myVariable.al + 1", cursor_pos=13)
    assert reply["matches"] == ["alpha"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (11, 13)
    # cursor in code points: an astral character before the cursor counts once
    code = "'😀'; myO"
    reply = agent.request("complete", code=code, cursor_pos=len(code))
    assert reply["matches"] == ["myOther"]
    assert reply["cursor_start"] == len(code) - 3
    reply = agent.request("complete", code="myVariable.", cursor_pos=11)
    assert {"alpha", "beta", "hasOwnProperty"} <= set(reply["matches"])
    reply = agent.request("complete", code="nosuchthing.", cursor_pos=12)
    assert reply["matches"] == []


def test_inspect(agent: Agent) -> None:
    reply = agent.request("inspect", code="Math.floor(2.5)", cursor_pos=7, detail_level=0)
    assert reply["found"] is True
    text = reply["data"]["text/plain"]
    assert "Math.floor: function" in text and "floor(1 argument)" in text
    ok(agent.execute("function area(width, height = 2) { return width * height }"))
    reply = agent.request("inspect", code="area(", cursor_pos=5, detail_level=0)
    assert reply["found"] and "area(width, height = 2)" in reply["data"]["text/plain"]
    reply = agent.request("inspect", code="area", cursor_pos=2, detail_level=1)
    assert "return width * height" in reply["data"]["text/plain"]
    ok(agent.execute("const cfg = {depth: 3}"))
    reply = agent.request("inspect", code="cfg", cursor_pos=3, detail_level=0)
    assert reply["found"] and "object" in reply["data"]["text/plain"] and "depth" in reply["data"]["text/plain"]
    reply = agent.request("inspect", code="doesNotExist", cursor_pos=3, detail_level=0)
    assert reply["found"] is False


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("1 + 1", "complete"),
        ("", "complete"),
        ("function f() {", "incomplete"),
        ("foo(1, 2", "incomplete"),
        ("[1, 2,", "incomplete"),
        ("`template ${", "incomplete"),
        ("`multi\nline", "incomplete"),
        ("const x = await fetchIt(", "incomplete"),
        ("const y = await z", "complete"),
        ("foo(1 2)", "invalid"),
        ("let = = 1", "invalid"),
        ("a b c", "invalid"),
        ("/* open comment", "incomplete"),
    ],
)
def test_is_complete(agent: Agent, code: str, status: str) -> None:
    reply = agent.request("is_complete", code=code)
    assert reply["status"] == status, reply
    assert isinstance(reply["indent"], str)


# --------------------------------------------------------------------------------------------
# lifecycle and speed
# --------------------------------------------------------------------------------------------


def test_shutdown_exits_and_kills_the_worker(tmp_path: Path) -> None:
    a = Agent("node", tmp_path)
    ok(a.execute("process.pid"))
    worker_pid = int(ok(a.execute("process.pid")).value)
    a.send({"type": "shutdown"})
    assert a.proc.wait(5) is not None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{worker_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":  # dead, waiting for whoever adopted it to reap it
            break
        time.sleep(0.05)
    else:
        os.kill(worker_pid, signal.SIGKILL)
        raise AssertionError("the worker outlived the agent")


def test_stdin_eof_exits(tmp_path: Path) -> None:
    a = Agent("node", tmp_path)
    a.proc.stdin.close()  # type: ignore[union-attr]
    assert a.proc.wait(5) is not None


def test_as_pid_1_of_a_pid_namespace(tmp_path: Path) -> None:
    """As on Kubernetes: the agent is PID 1, which has no default signal actions."""
    a = Agent("node", tmp_path, wrapper=("unshare", "--pid", "--fork", "--mount-proc"))
    try:
        # The worker's parent is the supervisor, whose parent is the launcher: PID 1.
        ppid = "require('fs').readFileSync(`/proc/${process.ppid}/status`, 'utf8').match(/PPid:\\s*(\\d+)/)[1]"
        assert ok(a.execute(ppid)).value == "'1'"
        ok(a.execute("var kept = 'k'"))
        run = a.execute("while (true) {}", interrupt_after=0.3)
        assert run.status == "interrupted" and run.elapsed < 2.3
        assert ok(a.execute("kept")).value == "'k'"
        # SIGTERM (what the kubelet sends) ends it: PID 1 ignores signals it has no handler for.
        agent_pid = int(Path(f"/proc/{a.proc.pid}/task/{a.proc.pid}/children").read_text().split()[0])
        os.kill(agent_pid, signal.SIGTERM)
        assert a.proc.wait(5) == 0
    finally:
        a.close()


def test_trivial_cell_round_trip_is_fast(agent: Agent) -> None:
    times = []
    for i in range(200):
        run = agent.execute(f"{i} + 1")
        assert run.value == str(i + 1)
        times.append(run.elapsed)
    p50 = statistics.median(times)
    print(f"node agent trivial cell round trip: p50={p50 * 1000:.2f} ms, max={max(times) * 1000:.2f} ms")
    assert p50 < 0.05
