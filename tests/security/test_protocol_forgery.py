"""User code cannot write protocol frames (issue 11, "What to build" 3; PROTOCOL.md, "What user code
can reach").

Each test runs one bare agent as an unprivileged uid (as in the sandbox: root could open any
process's fds) and a cell that writes a forged ``error`` and ``done`` for its own cell through one
route, then sleeps and prints ``after``. The cell must still end by itself: one ``done``, after
``after``, and no forged ``error`` anywhere. With the protocol stream reachable, the forged
``done`` ends the cell before ``after`` and the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from agents import Agent
from kernels import LOCAL_RUNTIMES
from sandbox_kernel.protocol import Message, Output, encode_message

CELL = "cell-attack"
ERROR = {"type": "error", "id": CELL, "ename": "Forged", "evalue": "forged", "traceback": ["Forged"]}
DONE = {"type": "done", "id": CELL, "status": "ok", "truncated": 0}
FORGED = encode_message(ERROR) + encode_message(DONE)
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# pidfd_getfd of every fd of every ancestor, then write the forged frames (x86-64/arm64 numbers).
PIDFD = r"""
import ctypes, os, sys
forged = bytes.fromhex(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def parent(pid):
    with open("/proc/%d/status" % pid) as f:
        return int([l for l in f if l.startswith("PPid:")][0].split()[1])
pid = parent(os.getppid())  # the cell's own process is the "fds" route
while pid > 1:
    pidfd = libc.syscall(434, pid, 0)
    if pidfd >= 0:
        for fd in range(0, 300):
            got = libc.syscall(438, pidfd, fd, 0)
            if got >= 0:
                try:
                    os.write(got, forged)
                    print("pidfd_getfd: wrote to fd %d of %d" % (fd, pid))
                except OSError:
                    pass
                os.close(got)
    pid = parent(pid)
"""

# Every fd of every ancestor, through /proc/<pid>/fd/N.
PROC = r"""
import os, sys
forged = bytes.fromhex(sys.argv[1])
def parent(pid):
    with open("/proc/%d/status" % pid) as f:
        return int([l for l in f if l.startswith("PPid:")][0].split()[1])
pid = parent(os.getppid())  # the cell's own process is the "fds" route
while pid > 1:
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError as e:
        fds = []
        print("cannot list /proc/%d/fd: %s" % (pid, e.strerror))
    for fd in fds:
        try:
            w = os.open("/proc/%d/fd/%s" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(w, forged)
            print("proc: wrote to fd %s of %d" % (fd, pid))
        except OSError:
            pass
        os.close(w)
    pid = parent(pid)
"""

# An exec'ed program sees fd 0, 1, 2 only (3 is listdir's own).
FDS = "import os; print('fds:', sorted(os.listdir('/proc/self/fd')))"


# A shell started by the cell writes the forged frames to every fd it inherited.
SHELL_EXEC = (
    f"F=$(mktemp); printf %s {FORGED.hex()} | xxd -r -p >$F; "
    "for fd in $(ls /proc/$$/fd); do cat $F >&$fd; done 2>/dev/null; rm -f $F; true"
)


def helper(script: str) -> list[str]:
    return [PYTHON, "-c", script, FORGED.hex()]


def _q(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


ATTACKS: dict[str, dict[str, str]] = {
    "python": {
        # display's globals, sys.modules['__main__'] and every module dict gc knows: call the
        # agent's own frame writers and write to every fd number they hold.
        "display-globals": f"""
import gc, os, sys, json
forged = bytes.fromhex({FORGED.hex()!r})
spaces = [display.__globals__, vars(sys.modules['__main__'])]
spaces += [o for o in gc.get_objects() if isinstance(o, dict) and ('_send_frame' in o or '_PROTO_OUT' in o)]
for g in spaces:
    for v in list(g.values()):
        if type(v) is int and 2 < v < 4096:
            try:
                os.write(v, forged)
            except OSError:
                pass
    for body in ({json.dumps(ERROR)}, {json.dumps(DONE)}):
        if callable(g.get('_send_frame')):
            g['_send_frame'](b'msg', json.dumps(body).encode())
        if callable(g.get('_send_msg')):
            g['_send_msg'](body)
""",
        "fds": f"""
import os
forged = bytes.fromhex({FORGED.hex()!r})
for fd in os.listdir('/proc/self/fd'):
    for how in ('write', 'reopen'):
        try:
            if how == 'write':
                os.write(int(fd), forged)
            else:
                w = os.open('/proc/self/fd/' + fd, os.O_WRONLY | os.O_NONBLOCK)
                os.write(w, forged)
                os.close(w)
        except OSError:
            pass
""",
        "proc": f"import subprocess\nprint(subprocess.run({helper(PROC)!r}, capture_output=True, text=True).stdout)",
        "pidfd_getfd": f"import subprocess\nprint(subprocess.run({helper(PIDFD)!r}, capture_output=True, text=True).stdout)",
        "exec": f"import os, subprocess\nos.system({_q([PYTHON, '-c', FDS])!r})\nsubprocess.run(['sh', '-c', {SHELL_EXEC!r}])",
    },
    "node": {
        # The worker's own control channel: process.send, as the agent's code uses it.
        "ipc": f"""
process.send({{ type: 'finish', id: {CELL!r}, status: 'ok', seq: 1, error: {json.dumps({k: ERROR[k] for k in ("ename", "evalue", "traceback")})} }});
process.send({{ type: 'complete_reply', id: {CELL!r}, matches: [] }});
""",
        "fds": f"""
const fs = require('fs');
const forged = Buffer.from({FORGED.hex()!r}, 'hex');
for (const fd of fs.readdirSync('/proc/self/fd')) {{
  if (Number(fd) < 3) continue;
  try {{ fs.writeSync(Number(fd), forged); }} catch (_) {{}}
  try {{ const w = fs.openSync('/proc/self/fd/' + fd, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK); fs.writeSync(w, forged); fs.closeSync(w); }} catch (_) {{}}
}}
""",
        "proc": f"console.log(require('child_process').execFileSync({PYTHON!r}, {helper(PROC)[1:]!r}).toString())",
        "pidfd_getfd": f"console.log(require('child_process').execFileSync({PYTHON!r}, {helper(PIDFD)[1:]!r}).toString())",
        "exec": f"const cp = require('child_process');\nconsole.log(cp.execFileSync({PYTHON!r}, ['-c', {FDS!r}]).toString());\ncp.spawnSync('sh', ['-c', {SHELL_EXEC!r}], {{ stdio: 'inherit' }});",
    },
    "bash": {
        # The user's shell itself (builtins run in the agent's worker shell).
        "fds": f"""F=$(mktemp); printf %s {FORGED.hex()} | xxd -r -p >"$F"
for fd in $(ls /proc/$$/fd); do [[ $fd == [012] ]] || {{ cat "$F" >&$fd; cat "$F" >"/proc/$$/fd/$fd"; }} 2>/dev/null; done
for v in $(compgen -v __SK_); do [[ ${{!v}} =~ ^[0-9]+$ ]] && {{ cat "$F" >&${{!v}}; }} 2>/dev/null; done; rm -f "$F"; true""",
        "proc": _q(helper(PROC)),
        "pidfd_getfd": _q(helper(PIDFD)),
        "exec": _q([PYTHON, "-c", FDS]) + "; " + _q(["sh", "-c", SHELL_EXEC]),
    },
}
AFTER = {
    "python": "import time\ntime.sleep(0.7)\nprint('after')",
    "node": "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 700); console.log('after')",
    "bash": "sleep 0.7; echo after",
}
# Bash's worker shell shares the frame lock and the state line with the agent (PROTOCOL.md,
# "What user code can reach"): junk written into them may leave the cell hanging, with nothing
# forged sent.
HANGS = {("bash", "fds")}
CASES = [(lang, route) for lang, routes in ATTACKS.items() for route in routes]


def forgery_agent(language: str, workdir: Path) -> Agent:
    return Agent(
        language,
        workdir,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(workdir)},
        as_nobody=True,
        ready_timeout=20,
    )


def run_to_end(agent: Agent, code: str, cell_id: str, timeout: float = 20) -> tuple[list[Any], bool]:
    """The cell's frames, and whether it ended (False: no `done` within ``timeout``)."""
    cell = agent.start(code, cell_id=cell_id)
    ended = agent.wait_done(cell, timeout)
    return [frame for _, frame in cell.frames], ended


@pytest.fixture
def workdir() -> Iterator[Path]:
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("setpriv is needed to run the agent as an unprivileged uid")
    # Not under pytest's tmp_path: its parents are private to root, the agent's uid must get in.
    path = Path(tempfile.mkdtemp(prefix="forgery."))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("language,route", CASES)
def test_forged_frames_do_not_reach_the_kernel(language: str, route: str, workdir: Path) -> None:
    if language == "node" and not shutil.which("node"):
        pytest.skip("node is not installed")
    agent = forgery_agent(language, workdir)
    try:
        frames, ended = run_to_end(agent, ATTACKS[language][route] + "\n" + AFTER[language], CELL)
        stdout = b"".join(f.data for f in frames if isinstance(f, Output) and f.stream == "stdout")
        messages = [f.body for f in frames if isinstance(f, Message)]
        assert not [m for m in messages if m.get("ename") == "Forged"], messages
        if not ended and (language, route) in HANGS:
            # User code broke the agent's own locks: the kernel's cell timeout ends this.
            assert not messages, messages
            return
        assert ended, f"no done: {messages} {stdout[-300:]!r}"
        # Writing junk into a process's own fds may crash it (Node's signal pipe holds pointers):
        # that ends the cell with an error of the agent's, never with the forged `done`.
        assert b"after" in stdout or messages[-1]["status"] != "ok", f"the forged done ended the cell early: {messages}"
        assert [m for m in messages if m["type"] == "done"] == [messages[-1]]
        assert not [m for m in messages if m.get("ename") == "Forged"], messages
        if route == "exec":
            assert b"fds: ['0', '1', '2', '3']" in stdout, stdout
        # Nothing forged arrives later either, and the agent still works.
        follow, _ = run_to_end(
            agent,
            {"python": "print('next')", "node": "console.log('next')", "bash": "echo next"}[language],
            "cell-next",
        )
        assert [f.body["type"] for f in follow if isinstance(f, Message)] == ["done"], follow
        assert not [f for f in follow if isinstance(f, Message) and f.body.get("id") == CELL]
    finally:
        agent.close()


# Control messages the process that runs cells may never produce, through the agent's own senders.
OTHER_TYPES = {
    "python": """
g = display.__globals__
for body in ({'type': 'ready', 'agent': 'forged', 'language_info': {}, 'protocol': 2},
             {'type': 'display', 'id': 'other-cell', 'data': ['not', 'a', 'bundle'], 'metadata': {}},
             {'type': 'complete_reply', 'id': 'other', 'matches': [], 'cursor_start': 0, 'cursor_end': 0},
             {'type': 'result', 'id': %(cell)r, 'data': {'text/plain': 'forged'}, 'metadata': {}}):
    g['_send_msg'](body)
g['_send_frame'](b'msg', b'{"type":"resume","token":"0123456789abcdef0123456789abcdef"}')
display({'text/plain': 'real \\ud800'}, raw=True)
""",
    "node": """
process.send({ type: 'hello' });
process.send({ type: 'display', id: 'other-cell', data: ['not a bundle'], seq: 0 });
process.send({ type: 'inspect_reply', id: 'other', found: true, data: {} });
process.send({ type: 'resume', token: '0123456789abcdef0123456789abcdef' });
display('real \\ud800');
""",
}


@pytest.mark.parametrize("language", list(OTHER_TYPES))
def test_worker_cannot_send_other_control_messages(language: str, workdir: Path) -> None:
    if language == "node" and not shutil.which("node"):
        pytest.skip("node is not installed")
    agent = forgery_agent(language, workdir)
    try:
        frames, ended = run_to_end(
            agent, OTHER_TYPES[language] % {"cell": CELL} if language == "python" else OTHER_TYPES[language], CELL
        )
        assert ended
        messages = [f.body for f in frames if isinstance(f, Message)]
        assert [m["type"] for m in messages] == ["display", "done"], messages
        assert messages[0]["id"] == CELL and messages[0]["data"] == {"text/plain": "real \ufffd"}
        stderr = b"".join(f.data for f in frames if isinstance(f, Output) and f.stream == "stderr")
        assert b"ignored a message written into the agent's private channel" in stderr
    finally:
        agent.close()


# -- the same through a real local kernel, on each runtime ------------------------------------

# The kernel's cell ids are not known inside, so a malformed frame goes too: reaching the stream,
# it would end the cell with a ProtocolError.
SWEEP_BYTES = FORGED + b"msg 3\nxyz"

# Run by each language's cell as a program of its own (python3 is in every local sandbox), whose
# parent is the process that runs the cell. Two routes into every other process of the sandbox:
# - every fd through /proc/<pid>/fd/N (under gVisor, /proc opens any process's fds, dumpable or
#   not: only a socket cannot be reopened);
# - its memory through /proc/<pid>/mem, open for writing wherever the process is dumpable and of
#   the sandbox's uid: code written at its next instruction (x86-64) writes the bytes to its fds
#   0-9 and then pauses forever. An orphan that exits wakes a PID 1 blocked in wait().
SWEEP = r"""
import os, sys, time
forged = bytes.fromhex(sys.argv[1])
me, cell = os.getpid(), os.getppid()
others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (me, cell)]
for pid in others:
    try:
        fds = os.listdir('/proc/%d/fd' % pid)
    except OSError:
        continue
    for fd in fds:
        try:
            w = os.open('/proc/%d/fd/%s' % (pid, fd), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            link = os.readlink('/proc/%d/fd/%s' % (pid, fd))
        except OSError:
            link = '?'
        print('opened fd %s of %d (%s)' % (fd, pid, link))
        try:
            os.write(w, forged)
        except OSError:
            pass
        os.close(w)
code = bytes.fromhex('4531e4b801000000' '4489e7488d3519000000ba') + len(forged).to_bytes(4, 'little')
code += bytes.fromhex('0f0541ffc44183fc0a7ce1b8220000000f05ebf7') + forged
if os.uname().machine == 'x86_64':
    for pid in others:
        try:
            mem = os.open('/proc/%d/mem' % pid, os.O_RDWR)
        except OSError:
            continue
        try:
            with open('/proc/%d/syscall' % pid) as f:
                pc = int(f.read().split()[-1], 16)
            os.pwrite(mem, code, pc)
            print('wrote code into %d' % pid)
        except (OSError, ValueError) as e:
            print('could not write into %d: %s' % (pid, e))
        os.close(mem)
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(0.1)
        os._exit(0)
    os.wait()
print('swept', len(others))
"""


def _sweep_cell(language: str) -> str:
    argv = [PYTHON, "-c", SWEEP, SWEEP_BYTES.hex()]
    if language == "python":
        return f"import subprocess, time\nprint(subprocess.run({argv!r}, capture_output=True, text=True).stdout)\ntime.sleep(0.7)\nprint('after')"
    if language == "node":
        return (
            f"console.log(require('child_process').execFileSync({PYTHON!r}, {argv[1:]!r}).toString());\n{AFTER['node']}"
        )
    return f"{_q(argv)}\n{AFTER['bash']}"


@pytest.mark.usefixtures("local_kernelspecs")
@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
@pytest.mark.parametrize("language", ["python", "node", "bash"])
def test_every_fd_and_memory_of_every_sandbox_process_in_a_local_kernel(language: str, runtime: str) -> None:
    """No process of the sandbox that user code can open or write into holds the protocol stream:
    bubblewrap's own init is not there (the kernel's PID 1 keeps no copy), and under gVisor the
    stream is a pair of sockets."""
    from kernels import errors, run_cell, running_kernel, text

    # Bash's worker shares the agent's frame lock and state line (HANGS above): junk written into
    # them stalls the cell until its time limit, kept short here.
    argv = [f"--LocalSandbox.runtime={runtime}", "--Sandbox.timeout=8"]
    with running_kernel(f"sandbox-{language}", argv=argv) as (_km, kc):
        reply, out = run_cell(kc, _sweep_cell(language), timeout=60)
        seen = text(out)
        assert not [e for e in errors(out) if e["ename"] == "Forged"], out
        # Under gVisor the Bash controller's FIFOs open through /proc too: junk written into its
        # frame lock adds tokens, two of the agent's own writers may then interleave their frames,
        # and the kernel sees a malformed stream and replaces the sandbox. Nowhere else.
        broken = language == "bash" and runtime == "gvisor"
        if not broken:
            assert not [e for e in errors(out) if e["ename"] == "ProtocolError"], out
        if language == "node" and reply.get("ename") == "SandboxLost":
            # Junk written into the libuv pipes of Node's launcher (or, under gVisor, of its
            # supervisor: their signal pipes hold pointers) may crash it: the user's own sandbox
            # is lost, nothing forged arrives.
            pass
        elif broken and reply.get("ename") in ("CellTimeout", "ProtocolError"):
            pass  # the user's own sandbox stalled (its lock or state line) or was replaced
        else:
            assert reply["status"] == "ok" and "after" in seen, (reply, out)
            assert "swept" in seen, seen
            if os.uname().machine == "x86_64" and runtime == "bubblewrap":
                assert "wrote code into 1\n" in seen, seen  # the route works: PID 1 took it, and holds nothing
        reply, out = run_cell(
            kc, {"python": "print('next')", "node": "console.log('next')", "bash": "echo next"}[language], timeout=60
        )
        assert reply["status"] == "ok" and "next" in text(out), (reply, out)
