"""Drive the real Node.js agent (sandbox_kernel/agents/node_agent.js) over the framed protocol.

No sandbox is involved: the agent runs as a plain subprocess with stdin/stdout as the protocol
pipes, exactly as the kernel spawns it inside a sandbox.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.protocol import FrameDecoder, Message, Output, encode_message

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "sandbox_kernel" / "agents" / "node_agent.js"
NODE = shutil.which("node") or "/usr/bin/node"


@dataclass
class Run:
    """Everything one request produced, in arrival order."""

    frames: list[tuple[float, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    elapsed: float = 0.0

    @property
    def stdout(self) -> bytes:
        return b"".join(f.data for _, f in self.frames if isinstance(f, Output) and f.stream == "stdout")

    @property
    def stderr(self) -> bytes:
        return b"".join(f.data for _, f in self.frames if isinstance(f, Output) and f.stream == "stderr")

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [f.body for _, f in self.frames if isinstance(f, Message) and f.type == kind]

    @property
    def result(self) -> str | None:
        results = self.messages("result")
        return results[-1]["data"]["text/plain"] if results else None

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.messages("error")
        return errors[-1] if errors else None

    @property
    def status(self) -> str | None:
        return self.done["status"] if self.done else None


class Agent:
    """The agent as a subprocess; a reader thread decodes its stdout into frames."""

    def __init__(self, cwd: Path, wrapper: tuple[str, ...] = ()) -> None:
        self.ready_cwd = cwd
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
        self.log = open(cwd / "agent.log", "wb")
        self.proc = subprocess.Popen(
            [*wrapper, NODE, str(AGENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=cwd, env=env
        )
        self.frames: queue.Queue[tuple[float, Any]] = queue.Queue()
        self.eof = threading.Event()
        self.gate = threading.Event()  # cleared: the reader stops reading, like a slow kernel
        self.gate.set()
        self._counter = 0
        threading.Thread(target=self._read, daemon=True).start()
        first = self.next_frame(15)
        assert isinstance(first, Message) and first.type == "ready", first
        self.ready = first.body

    def _read(self) -> None:
        decoder = FrameDecoder()
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            self.gate.wait()
            data = os.read(fd, 1 << 16)
            if not data:
                self.eof.set()
                self.frames.put((time.monotonic(), None))
                return
            for frame in decoder.feed(data):  # raises ProtocolError on any corruption
                self.frames.put((time.monotonic(), frame))

    def next_frame(self, timeout: float) -> Any:
        return self.frames.get(timeout=timeout)[1]

    def send(self, body: dict[str, Any]) -> None:
        self.proc.stdin.write(encode_message(body))  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def new_id(self) -> str:
        self._counter += 1
        return f"req-{self._counter}"

    def collect(self, request_id: str, until: str, timeout: float, started: float | None = None) -> Run:
        run = Run()
        started = started or time.monotonic()
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {until} within {timeout}s; got {run.frames}")
            try:
                at, frame = self.frames.get(timeout=left)
            except queue.Empty:
                continue
            assert frame is not None, f"agent exited (rc={self.proc.poll()}) before {until}; got {run.frames}"
            run.frames.append((at, frame))
            if isinstance(frame, Message) and frame.type == until and frame.body.get("id") == request_id:
                run.done = frame.body
                run.elapsed = at - started
                return run

    def execute(self, code: str, output_limit: int = 0, timeout: float = 15, interrupt_after: float | None = None) -> Run:
        request_id = self.new_id()
        started = time.monotonic()
        self.send({"type": "execute", "id": request_id, "code": code, "output_limit": output_limit})
        if interrupt_after is not None:
            threading.Timer(interrupt_after, lambda: self.send({"type": "interrupt"})).start()
        return self.collect(request_id, "done", timeout, started)

    def request(self, kind: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        request_id = self.new_id()
        self.send({"type": kind, "id": request_id, **fields})
        run = self.collect(request_id, f"{kind}_reply", timeout)
        assert run.done is not None
        return run.done

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"type": "shutdown"})
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture()
def agent(tmp_path: Path):
    a = Agent(tmp_path)
    try:
        yield a
    finally:
        a.close()


def ok(run: Run) -> Run:
    assert run.status == "ok", (run.error, run.frames)
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
    assert ok(agent.execute("var a = 1; let b = 2; const c = 3; function add(x, y) { return x + y }")).result is None
    assert ok(agent.execute("add(a, b) + c")).result == "6"
    assert ok(agent.execute("'text'")).result == "'text'"
    assert ok(agent.execute("({x: [1, 2]})")).result == "{ x: [ 1, 2 ] }"
    assert ok(agent.execute("{y: 1}")).result == "{ y: 1 }"  # like the REPL: an object, not a block
    assert ok(agent.execute("undefined")).result is None
    assert ok(agent.execute("let nothing; nothing")).result is None
    assert ok(agent.execute("null")).result == "null"
    assert ok(agent.execute("b = 10; if (true) { 5 }")).result is None  # only a last expression statement counts
    assert ok(agent.execute("b")).result == "10"


def test_redeclared_let_and_const_across_cells(agent: Agent) -> None:
    ok(agent.execute("const limit = 5; let name = 'a'"))
    assert ok(agent.execute("const limit = 7; let name = 'b'; limit")).result == "7"
    assert ok(agent.execute("`${name}${limit}`")).result == "'b7'"
    ok(agent.execute("const {p, q: [r]} = {p: 1, q: [2]}"))
    assert ok(agent.execute("p + r")).result == "3"
    # Inner scopes keep their normal semantics.
    assert ok(agent.execute("const fns = []; for (let i = 0; i < 3; i++) fns.push(() => i); fns.map(f => f())")).result == "[ 0, 1, 2 ]"


def test_class_persistence_and_redefinition(agent: Agent) -> None:
    ok(agent.execute("class Point { constructor(x) { this.x = x } norm() { return Math.abs(this.x) } }"))
    assert ok(agent.execute("new Point(-4).norm()")).result == "4"
    ok(agent.execute("class Point { norm() { return 'v2' } }"))
    assert ok(agent.execute("new Point().norm()")).result == "'v2'"
    ok(agent.execute("class Point3 extends Point { }"))
    assert ok(agent.execute("new Point3() instanceof Point")).result == "true"


def test_top_level_await(agent: Agent) -> None:
    run = ok(agent.execute("const v = await new Promise(r => setTimeout(() => r(41), 50)); v + 1"))
    assert run.result == "42"
    assert ok(agent.execute("v")).result == "41"  # declared in an async cell, visible later
    ok(agent.execute("await null; function later() { return 'fn' } class Later {}; let w; var z = 3"))
    assert ok(agent.execute("[later(), new Later().constructor.name, w, z]")).result == "[ 'fn', 'Later', undefined, 3 ]"
    run = ok(agent.execute("for await (const x of [1, 2]) console.log(x)"))
    assert run.stdout == b"1\n2\n"
    assert ok(agent.execute("await Promise.resolve([1, 2])")).result == "[ 1, 2 ]"
    run = agent.execute("await Promise.reject(new RangeError('nope'))")
    assert run.status == "error"
    assert run.error["ename"] == "RangeError" and run.error["evalue"] == "nope"
    # A cell ending in a promise (no await) shows the promise, like the REPL.
    assert "Promise" in ok(agent.execute("Promise.resolve(1)")).result


def test_console_streams_require_and_stdin(agent: Agent) -> None:
    run = ok(agent.execute("console.log('out', 1); console.error('err', 2); process.stdout.write('raw')"))
    assert run.stdout == b"out 1\nraw"
    assert run.stderr == b"err 2\n"
    assert ok(agent.execute("require('path').join('a', 'b')")).result == "'a/b'"
    assert ok(agent.execute("const os = require('os'); typeof os.cpus")).result == "'function'"
    assert ok(agent.execute("require('fs').readFileSync(0).length")).result == "0"  # stdin is /dev/null
    assert ok(agent.execute("(await import('node:path')).basename('/x/y.js')")).result == "'y.js'"


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
    assert run.result == "7"
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
    err = run.error
    assert err["ename"] == "TypeError"
    assert err["evalue"] == "bad thing"
    tb = err["traceback"]
    assert tb[0] == "TypeError: bad thing"
    assert "at inner (<cell" in tb[1] and ":1:" in tb[1]
    assert "at outer (<cell" in tb[2] and ":2:" in tb[2]
    assert ":3:" in tb[3]
    assert len(tb) == 4, tb  # no agent-internal frames
    assert not any("node_agent" in line or "node:vm" in line for line in tb)
    assert ok(agent.execute("1 + 1")).result == "2"  # the agent survived


def test_error_in_async_cell_has_cell_line_numbers(agent: Agent) -> None:
    run = agent.execute("await null\nconst k = 1\nnull.boom")
    assert run.status == "error" and run.error["ename"] == "TypeError"
    assert any(":3:" in line for line in run.error["traceback"]), run.error["traceback"]
    assert not any("node_agent" in line for line in run.error["traceback"])


def test_non_error_throws_and_syntax_errors(agent: Agent) -> None:
    run = agent.execute("throw 42")
    assert run.status == "error" and run.error["evalue"] == "42" and run.error["traceback"]
    run = agent.execute("throw {code: 'E'}")
    assert run.status == "error" and "code: 'E'" in run.error["evalue"]
    run = agent.execute("let = = 3")
    assert run.status == "error" and run.error["ename"] == "SyntaxError"
    run = agent.execute("foo(]")
    assert run.error["ename"] == "SyntaxError"
    assert "foo(]" in run.error["traceback"]  # the offending line is shown
    run = agent.execute("undefinedName + 1")
    assert run.error["ename"] == "ReferenceError" and "undefinedName" in run.error["evalue"]


def test_timer_exceptions_and_rejections_between_cells_do_not_kill_the_worker(agent: Agent) -> None:
    first = ok(
        agent.execute(
            "let kept = 'yes'; setTimeout(() => { throw new Error('boom in timer') }, 50);"
            "Promise.reject(new Error('lost promise')); 0"
        )
    )
    time.sleep(0.5)
    run = ok(agent.execute("kept"))  # collects the frames that arrived between the cells, too
    assert run.result == "'yes'"
    log = (first.stderr + run.stderr).decode("utf-8", "replace")
    assert "Uncaught Error: boom in timer" in log
    assert "Unhandled promise rejection: Error: lost promise" in log
    assert "node_agent" not in log


def test_process_exit_restarts_the_worker(agent: Agent) -> None:
    ok(agent.execute("var before = 1"))
    run = agent.execute("console.log('bye'); process.exit(3)")
    assert run.status == "error"
    assert run.stdout == b"bye\n"
    assert run.error["ename"] == "SandboxRestarted"
    assert "variables from earlier cells are gone" in run.error["evalue"]
    assert ok(agent.execute("typeof before")).result == "'undefined'"
    assert ok(agent.execute("2 * 21")).result == "42"
    # Dying between cells: the cell that caused it finished fine; the next one is told.
    ok(agent.execute("var again = 1; setTimeout(() => process.exit(2), 100); 'scheduled'"))
    time.sleep(0.6)
    run = ok(agent.execute("typeof again"))
    assert run.result == "'undefined'"
    assert b"[sandbox] the JavaScript process exited with code 2 after the last cell" in run.stderr
    assert b"variables from earlier cells are gone" in run.stderr


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
    assert run.stdout == b'msg 33\n{"type":"done","status":"ok","id":1}\n' + b"\x00\x00nul\x00" + b"\xff\xfe\x80\n" + b"\x01\x02SKM0000\x03"
    assert run.stderr == b"err 99999999999\n"
    assert run.result == "'done-marker'"
    assert ok(agent.execute("1")).result == "1"


def test_child_processes_output_is_captured(agent: Agent) -> None:
    code = """
const cp = require('child_process');
cp.execSync('echo hi', {stdio: 'inherit'});
cp.execSync('echo oops >&2', {stdio: 'inherit'});
cp.spawnSync('printf', ['\\\\000z'], {stdio: 'inherit'});
"""
    run = ok(agent.execute(code))
    assert run.stdout == b"hi\n\x00z"
    assert run.stderr == b"oops\n"


def test_closing_fd1_does_not_break_the_agent(agent: Agent) -> None:
    run = agent.execute("require('fs').closeSync(1); 5", timeout=10)
    assert run.status == "ok" and run.result == "5"
    assert run.elapsed < 3
    assert ok(agent.execute("6")).result == "6"


def test_closing_fd1_loses_stdout_for_that_cell_only(agent: Agent) -> None:
    """Issue 11: after `fs.closeSync(1)` nothing printed in later cells arrived."""
    run = ok(agent.execute("const fs = require('fs'); fs.closeSync(1); fs.closeSync(2); console.log('lost'); fs.writeSync(1, 'lost')"[:-21]))
    assert run.stdout == b""
    run = agent.execute("fs.closeSync(1); fs.writeSync(1, 'x')")
    assert run.error["ename"] == "Error" and "EBADF" in run.error["evalue"]
    run = ok(agent.execute("console.log('back'); console.error('err back'); require('child_process').execSync('echo child', {stdio: 'inherit'}); fs.writeSync(1, 'w')"))
    assert run.stdout == b"back\nchild\nw" and run.stderr == b"err back\n"


def test_lone_surrogates_become_replacement_characters(agent: Agent) -> None:
    """Issue 11: display() of a lone UTF-16 surrogate produced a frame that was not valid UTF-8."""
    run = ok(agent.execute("display('a\\ud800b'); display({'text/html': '\\udfff'}); 'x\\ud83d'"))
    texts = [d["data"].get("text/plain", d["data"].get("text/html")) for d in run.messages("display")]
    assert texts == ["a\ufffdb", "\ufffd"]
    for text in texts + [run.result]:
        text.encode("utf-8")  # no lone surrogate left
    # A well-formed pair is kept.
    assert ok(agent.execute("'\\ud83d\\ude00'")).result == "'\U0001f600'"


def test_ending_process_stdout_does_not_silence_later_cells(agent: Agent) -> None:
    run = ok(agent.execute("process.stdout.end('bye\\n'); process.stderr.destroy(); 5"))
    assert run.stdout == b"bye\n" and run.result == "5"
    run = ok(agent.execute("console.log('still printed'); console.error('and this')"))
    assert run.stdout == b"still printed\n" and run.stderr == b"and this\n"
    assert run.elapsed < 0.4  # the markers still got through: no fallback timeout


def test_background_process_holding_stdout_does_not_block_done(agent: Agent) -> None:
    run = ok(agent.execute("require('child_process').spawn('sh', ['-c', 'echo bg; sleep 30'], {stdio: 'inherit'}); 'started'"))
    assert run.elapsed < 2
    ok(agent.execute("await new Promise(r => setTimeout(r, 300))"))
    assert ok(agent.execute("'still fine'")).result == "'still fine'"


def test_flood_with_small_output_limit(agent: Agent) -> None:
    code = "const chunk = 'y'.repeat(1000) + '\\n'; for (let i = 0; i < 20000; i++) process.stdout.write(chunk); 'flooded'"
    run = ok(agent.execute(code, output_limit=5000, timeout=30))
    assert len(run.stdout) == 5000
    assert run.done["truncated"] == 20000 * 1001 - 5000
    assert run.result == "'flooded'"
    # Also console.log + subprocess flood, the agent stays responsive.
    run = ok(agent.execute("require('child_process').execSync('head -c 3000000 /dev/zero', {stdio: 'inherit'}); 1", output_limit=1000))
    assert len(run.stdout) == 1000 and run.done["truncated"] == 3000000 - 1000
    started = time.monotonic()
    assert ok(agent.execute("'alive'")).result == "'alive'"
    assert time.monotonic() - started < 1


def test_unlimited_large_output_arrives_before_done(agent: Agent) -> None:
    code = "for (let i = 0; i < 5000; i++) console.log('line ' + i); console.error('tail'); 'end'"
    run = ok(agent.execute(code))
    lines = run.stdout.decode().splitlines()
    assert lines == [f"line {i}" for i in range(5000)]
    assert run.stderr == b"tail\n"
    assert run.done["truncated"] == 0
    # every output frame came before result and done
    kinds = ["out" if isinstance(f, Output) else f.type for _, f in run.frames]
    assert kinds[-2:] == ["result", "done"]


def test_slow_reader_gets_everything_in_order(agent: Agent) -> None:
    agent.gate.clear()  # the "kernel" stops reading while the cell floods without a limit
    request_id = agent.new_id()
    code = "const line = 'z'.repeat(999) + '\\n'; for (let i = 0; i < 10000; i++) process.stdout.write(line); 'flood done'"
    agent.send({"type": "execute", "id": request_id, "code": code, "output_limit": 0})
    time.sleep(1.0)
    agent.gate.set()
    run = ok(agent.collect(request_id, "done", 30))
    assert len(run.stdout) == 10000 * 1000
    assert set(run.stdout) == {ord("z"), ord("\n")}
    assert run.result == "'flood done'" and run.done["truncated"] == 0


def test_held_back_marker_lookalike_tail_is_flushed(agent: Agent) -> None:
    # A lone \x01 could start a marker, so the agent holds it until more bytes arrive.
    run = ok(agent.execute("process.stdout.write('a\\x01'); process.stderr.write('\\x01\\x02'); 1"))
    assert run.stdout == b"a\x01"
    assert run.stderr == b"\x01\x02"


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
    assert run.result == "[ 'function', true, '/' ]"
    assert run.stderr == b""  # no ExperimentalWarning leaks into the user's stderr
    assert ok(agent.execute("typeof rfs")).result == "'function'"
    # Local modules resolve from the working directory, for import, import() and require.
    cwd = Path(agent.ready_cwd)
    (cwd / "mod.mjs").write_text("export const v = 'esm'; export default 'dflt';\n")
    (cwd / "cjs.js").write_text("module.exports = {w: 'cjs'};\n")
    run = ok(agent.execute("import d, {v} from './mod.mjs'\nconst m = await import('./mod.mjs');\n[d, v, m.v, require('./cjs.js').w]"))
    assert run.result == "[ 'dflt', 'esm', 'esm', 'cjs' ]"
    run = ok(agent.execute("const later = () => import('node:os'); (await later()).EOL"))
    assert run.result == "'\\n'"


def test_user_code_shadowing_globals_does_not_break_the_agent(agent: Agent) -> None:
    ok(agent.execute("let process = 'mine'; const globalThis = 3; let JSON = null"))
    assert ok(agent.execute("process + globalThis")).result == "'mine3'"
    reply = agent.request("complete", code="Mat", cursor_pos=3)
    assert "Math" in reply["matches"]
    run = agent.execute("throw new Error('still reported')")
    assert run.error["evalue"] == "still reported"
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
    assert run.error["ename"] == "KeyboardInterrupt"
    assert run.elapsed < 0.3 + 2
    assert ok(agent.execute("survivor")).result == "'alive'"  # breakOnSigint: the worker survives
    assert int(ok(agent.execute("counter")).result) > 0


def test_interrupt_output_flood_is_fast_and_output_keeps_working(agent: Agent) -> None:
    for code in (
        "let k = 0; while (true) { process.stdout.write('y'.repeat(10000)); k++ }",
        "while (true) { console.log('x'.repeat(100)); console.error('e') }",
    ):
        run = agent.execute(code, output_limit=10000, interrupt_after=0.5)
        assert run.status == "interrupted"
        assert run.elapsed < 0.5 + 0.5  # stopped by breakOnSigint, no escalation needed
        assert len(run.stdout) + len(run.stderr) == 10000 and run.done["truncated"] > 0
        # The interrupt may land inside Node's stream code; stdout and stderr must still work.
        run = ok(agent.execute("console.log('hello'); console.error('again'); typeof k"))
        assert run.stdout == b"hello\n" and run.stderr == b"again\n"
        assert run.result == "'number'"


def test_interrupt_async_sleep_keeps_state_and_abandons_the_cell(agent: Agent) -> None:
    ok(agent.execute("var kept = 1; var after = 'not run'"))
    run = agent.execute("console.log('waiting'); await new Promise(r => setTimeout(r, 100000)); after = 'ran'", interrupt_after=0.3)
    assert run.status == "interrupted" and run.error["ename"] == "KeyboardInterrupt"
    assert run.stdout == b"waiting\n"
    assert run.elapsed < 0.3 + 2
    assert ok(agent.execute("kept")).result == "1"
    # The abandoned cell never continues, even when its promise settles later.
    run = agent.execute("await new Promise(r => setTimeout(r, 800)); after = 'ran'", interrupt_after=0.2)
    assert run.status == "interrupted"
    ok(agent.execute("await new Promise(r => setTimeout(r, 1200))"))
    assert ok(agent.execute("after")).result == "'not run'"


def test_interrupt_waiting_for_child_process_keeps_state(agent: Agent) -> None:
    ok(agent.execute("const here = 'still here'"))
    run = agent.execute("require('child_process').execSync('sleep 30')", interrupt_after=0.3)
    assert run.status == "interrupted"
    assert run.elapsed < 0.3 + 2
    assert ok(agent.execute("here")).result == "'still here'"


def test_interrupt_unbreakable_loop_restarts_worker(agent: Agent) -> None:
    ok(agent.execute("var lost = 'soon gone'"))
    run = agent.execute("await null; while (true) {}", interrupt_after=0.3)
    assert run.status == "interrupted"
    assert run.elapsed < 0.3 + 2
    assert run.error["ename"] == "SandboxRestarted"
    assert "variables from earlier cells are gone" in run.error["evalue"]
    assert ok(agent.execute("typeof lost")).result == "'undefined'"
    assert ok(agent.execute("1 + 2")).result == "3"


def test_interrupt_when_idle_is_ignored(agent: Agent) -> None:
    ok(agent.execute("let idle = 5"))
    agent.send({"type": "interrupt"})
    time.sleep(0.3)
    assert agent.frames.empty()
    assert ok(agent.execute("idle")).result == "5"


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
    a = Agent(tmp_path)
    ok(a.execute("process.pid"))
    worker_pid = int(ok(a.execute("process.pid")).result)
    a.send({"type": "shutdown"})
    assert a.proc.wait(5) is not None
    a.log.close()
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
    a = Agent(tmp_path)
    a.proc.stdin.close()  # type: ignore[union-attr]
    assert a.proc.wait(5) is not None
    a.log.close()


def test_as_pid_1_of_a_pid_namespace(tmp_path: Path) -> None:
    """As on Kubernetes: the agent is PID 1, which has no default signal actions."""
    a = Agent(tmp_path, wrapper=("unshare", "--pid", "--fork", "--mount-proc"))
    try:
        # The worker's parent is the supervisor, whose parent is the launcher: PID 1.
        ppid = "require('fs').readFileSync(`/proc/${process.ppid}/status`, 'utf8').match(/PPid:\\s*(\\d+)/)[1]"
        assert ok(a.execute(ppid)).result == "'1'"
        ok(a.execute("var kept = 'k'"))
        run = a.execute("while (true) {}", interrupt_after=0.3)
        assert run.status == "interrupted" and run.elapsed < 2.3
        assert ok(a.execute("kept")).result == "'k'"
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
        assert run.result == str(i + 1)
        times.append(run.elapsed)
    p50 = statistics.median(times)
    print(f"node agent trivial cell round trip: p50={p50 * 1000:.2f} ms, max={max(times) * 1000:.2f} ms")
    assert p50 < 0.05
