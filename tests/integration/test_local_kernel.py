"""Real Sandbox kernels on the local backend, started through jupyter_client.

Every behaviour the kernel promises is checked here on real processes: state, live streaming,
interrupt, timeout, isolation, limits, output cap, restart, SIGKILL clean-up and bad settings.
"""

from __future__ import annotations

import os
import re
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernels import errors, result, run_cell, running_kernel, text
from processes import group_pids, sandbox_cgroup_parent, sandbox_groups, sandbox_pids
from sandbox_kernel.errors import ConfigError

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.fixture(scope="module")
def py(local_kernelspecs: Path) -> Iterator[Any]:
    with running_kernel("sandbox-python") as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def bash(local_kernelspecs: Path) -> Iterator[Any]:
    with running_kernel("sandbox-bash") as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def node(local_kernelspecs: Path) -> Iterator[Any]:
    with running_kernel("sandbox-node") as (_km, kc):
        yield kc


# -- kernel_info and state ------------------------------------------------------------------------


def test_kernel_info_reports_the_sandbox_runtime(py: Any, node: Any, bash: Any) -> None:
    expected = {
        "python": platform.python_version(),  # the kernel's own environment (local/environment.py)
        "javascript": subprocess.run(
            ["node", "-p", "process.versions.node"], capture_output=True, text=True
        ).stdout.strip(),
        "bash": subprocess.run(
            ["bash", "-c", "echo ${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}.${BASH_VERSINFO[2]}"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
    }
    for kc in (py, node, bash):
        info = kc.kernel_info(reply=True, timeout=30)["content"]
        lang = info["language_info"]
        assert lang["version"] == expected[lang["name"]]
        assert lang["file_extension"] in (".py", ".js", ".sh")
        assert "local backend" in info["banner"] and "memory 256Mi" in info["banner"]
        assert info["implementation"] == "sandbox_kernel"


def test_python_state_persists(py: Any) -> None:
    run_cell(py, "import math\ndef area(r):\n    return math.pi * r * r\nradius = 2")
    reply, out = run_cell(py, "round(area(radius), 3)")
    assert reply["status"] == "ok" and result(out) == "12.566"


def test_node_state_persists_and_const_can_be_redeclared(node: Any) -> None:
    run_cell(node, "const greeting = 'hi'; let n = 1; function twice(x) { return 2 * x }")
    run_cell(node, "const greeting = 'hello'")
    reply, out = run_cell(node, "`${greeting} ${twice(n)}`")
    assert reply["status"] == "ok" and "hello 2" in result(out)


def test_bash_state_persists_and_streams_stay_separate(bash: Any) -> None:
    run_cell(bash, 'cd /tmp && GREETING=hello && shout() { echo "${1^^}"; }')
    reply, out = run_cell(bash, "shout $GREETING; pwd; echo oops >&2")
    assert reply["status"] == "ok"
    assert text(out) == "HELLO\n/tmp\n"
    assert text(out, "stderr") == "oops\n"


def test_bash_failure_is_an_error_and_the_session_survives(bash: Any) -> None:
    reply, out = run_cell(bash, "KEEP=1; false")
    assert reply["status"] == "error" and errors(out)
    reply, out = run_cell(bash, "echo $KEEP")
    assert reply["status"] == "ok" and text(out) == "1\n"


def test_python_error_traceback_quotes_the_users_line(py: Any) -> None:
    reply, out = run_cell(py, "x = 1\ny = {}\ny['missing']")
    assert reply["status"] == "error" and reply["ename"] == "KeyError"
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors(out)[0]["traceback"]))  # IPython mode colours it
    assert "y['missing']" in tb and "python_agent" not in tb


@pytest.mark.parametrize(("kernel", "code"), [("py", "1/0"), ("node", "null.x")])
def test_traceback_names_the_cell_by_its_execution_count(
    kernel: str, code: str, request: pytest.FixtureRequest
) -> None:
    kc = request.getfixturevalue(kernel)
    for _ in range(2):
        run_cell(kc, "%sandbox status")  # magics never reach the sandbox's agent
    reply, out = run_cell(kc, "%sandbox status\n" + code)
    assert reply["status"] == "error"
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors(out)[0]["traceback"]))
    n = reply["execution_count"]
    assert f"<cell {n}>" in tb or f"Cell In[{n}]" in tb, tb  # plain agent, or IPython mode


# -- streaming, output cap, hostile output ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "cells", "expected"),
    [
        (
            "sandbox-python",
            ['print("a", "b", "c")', 'for i in range(3): print(i, "x")'],
            ["a b c\n", "0 x\n1 x\n2 x\n"],
        ),
        ("sandbox-bash", ["echo one; echo two; printf 'th'; printf 'ree\\n'"], ["one\ntwo\nthree\n"]),
    ],
)
def test_saved_notebook_has_one_stream_output_per_print_run(kernel: str, cells: list[str], expected: list[str]) -> None:
    """nbclient (nbconvert --execute, papermill) saves every stream message as an output of its own."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    NotebookClient(nb, kernel_name=kernel, timeout=60).execute()
    for cell, text_ in zip(nb.cells, expected):
        assert [(o["output_type"], o.get("name"), o.get("text")) for o in cell.outputs] == [
            ("stream", "stdout", text_)
        ], cell.outputs


def test_output_streams_live(py: Any) -> None:
    reply, out = run_cell(py, "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)")
    times = [o["t"] for o in out if o["type"] == "stream" and o["text"].strip()]
    assert reply["status"] == "ok" and len(times) == 3
    assert times[1] - times[0] > 0.7 and times[2] - times[1] > 0.7


def test_bash_streams_live(bash: Any) -> None:
    reply, out = run_cell(bash, "for i in 1 2 3; do echo $i; sleep 1; done")
    times = [o["t"] for o in out if o["type"] == "stream" and o["text"].strip()]
    assert reply["status"] == "ok" and len(times) >= 3
    assert times[-1] - times[0] > 1.5


def test_flood_is_capped_and_the_kernel_stays_responsive(py: Any) -> None:
    start = time.monotonic()
    reply, out = run_cell(py, "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 65536)\n", timeout=120)
    stdout = text(out)
    assert len(stdout) <= 4 * 2**20
    assert len(stdout) > 3 * 2**20
    assert "output truncated" in text(out, "stderr")
    assert time.monotonic() - start < 30
    began = time.monotonic()
    reply, out = run_cell(py, "1 + 1")
    assert result(out) == "2" and time.monotonic() - began < 2


def test_fake_frames_nul_and_invalid_utf8_cannot_break_the_protocol(py: Any) -> None:
    code = (
        "import os, sys\n"
        'print(\'msg 30\\n{"type": "done", "id": "x"}\')\n'
        "os.write(1, b'\\x00\\xff\\xfe out 5\\nhello')\n"
        "sys.stdout.flush()\n"
        "print('still here')"
    )
    reply, out = run_cell(py, code)
    assert reply["status"] == "ok"
    stdout = text(out)
    assert '"type": "done"' in stdout and "\ufffd" in stdout and "still here" in stdout
    assert result(run_cell(py, "'alive'")[1]) == "'alive'"


def test_subprocess_and_thread_output_is_captured(py: Any) -> None:
    code = (
        "import subprocess, threading, os\n"
        "subprocess.run(['sh', '-c', 'echo from-child; echo child-err >&2'])\n"
        "t = threading.Thread(target=lambda: print('from-thread')); t.start(); t.join()\n"
        "os.write(2, b'raw-err\\n')"
    )
    reply, out = run_cell(py, code)
    assert "from-child" in text(out) and "from-thread" in text(out)
    assert "child-err" in text(out, "stderr") and "raw-err" in text(out, "stderr")


def test_rich_output(py: Any) -> None:
    code = "class Card:\n    def _repr_html_(self): return '<b>card</b>'\ndisplay(Card())\nCard()"
    reply, out = run_cell(py, code)
    displays = [o for o in out if o["type"] == "display_data"]
    assert displays and displays[0]["data"]["text/html"] == "<b>card</b>"
    results = [o for o in out if o["type"] == "execute_result"]
    assert results and results[0]["data"]["text/html"] == "<b>card</b>"


# -- interrupt and timeout -------------------------------------------------------------------------


def interrupt_after(km_or_kc: Any, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, km_or_kc.interrupt_kernel)
    timer.start()
    return timer


@pytest.mark.parametrize(
    "kernel,setup,code,check",
    [
        ("sandbox-python", "kept = 7", "import time\ntime.sleep(100)", "kept"),
        ("sandbox-python", "kept = 7", "while True:\n    pass", "kept"),
        ("sandbox-python", "kept = 7", "import os\nos.system('sleep 100')", "kept"),
        ("sandbox-bash", "kept=7", "sleep 100", "echo $kept"),
        ("sandbox-node", "var kept = 7", "await new Promise(r => setTimeout(r, 100000))", "kept"),
    ],
)
def test_interrupt_stops_a_cell_within_two_seconds_and_keeps_state(
    kernel: str, setup: str, code: str, check: str, local_kernelspecs: Path
) -> None:
    with running_kernel(kernel) as (km, kc):
        run_cell(kc, setup)
        interrupt_after(km, 1.0)
        began = time.monotonic()
        reply, out = run_cell(kc, code, timeout=30)
        took = time.monotonic() - began
        assert reply["status"] == "error"
        assert took < 1.0 + 2.0, f"interrupt took {took - 1:.1f} s"
        reply, out = run_cell(kc, check)
        assert reply["status"] == "ok" and "7" in (
            text(out) + "".join(o.get("data", {}).get("text/plain", "") for o in out)
        )


def test_node_tight_loop_is_stopped_within_two_seconds(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-node") as (km, kc):
        run_cell(kc, "var kept = 7")
        interrupt_after(km, 1.0)
        began = time.monotonic()
        reply, out = run_cell(kc, "while (true) {}", timeout=30)
        assert reply["status"] == "error" and time.monotonic() - began < 3.0
        reply, out = run_cell(kc, "typeof kept === 'undefined' ? 'lost' : kept")
        assert reply["status"] == "ok"
        said = result(out) + text(out, "stderr") + "".join(e["evalue"] for e in errors(out))
        # Either the agent kept its state, or the user was told it was lost.
        assert "7" in said or "gone" in said or "lost" in said


def test_timeout_stops_the_cell_and_the_kernel_goes_on(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python") as (_km, kc):
        reply, out = run_cell(kc, "%timeout 1")
        assert "cell time limit: 1 s" in text(out)
        run_cell(kc, "kept = 3")
        began = time.monotonic()
        reply, out = run_cell(kc, "import time\ntime.sleep(30)")
        assert reply["status"] == "error" and reply["ename"] == "CellTimeout"
        assert "1 s" in reply["evalue"] and time.monotonic() - began < 4
        # What a notebook and what a pipeline would change: the magic, the setting, its variable.
        assert all(name in reply["evalue"] for name in ("%timeout", "c.Sandbox.timeout", "SANDBOX_TIMEOUT")), reply[
            "evalue"
        ]
        reply, out = run_cell(kc, "kept")
        assert result(out) == "3"


def test_timeout_in_bash(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-bash") as (_km, kc):
        run_cell(kc, "%timeout 1")
        began = time.monotonic()
        reply, out = run_cell(kc, "sleep 30")
        assert reply["ename"] == "CellTimeout" and time.monotonic() - began < 4
        assert text(run_cell(kc, "echo ok")[1]) == "ok\n"


# -- isolation -----------------------------------------------------------------------------------------


def test_network_is_loopback_only_and_host_services_are_unreachable(py: Any) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        code = (
            "import socket\n"
            "print(sorted(n for _, n in socket.if_nameindex()))\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('REACHED')\n"
            "except OSError as e:\n    print('refused', type(e).__name__)\n"
            "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('REACHED')\n"
            "except OSError as e:\n    print('unreachable', type(e).__name__)\n"
        )
        reply, out = run_cell(py, code)
    finally:
        server.close()
    stdout = text(out)
    assert "['lo']" in stdout and "REACHED" not in stdout
    assert "refused" in stdout and "unreachable" in stdout


HINT = "[sandbox] This sandbox has no network access by design"


@pytest.mark.parametrize(
    ("kernel", "code"),
    [
        ("py", "import urllib.request\nurllib.request.urlopen('http://example.invalid/', timeout=5)"),
        ("node", "await require('dns').promises.lookup('example.invalid')"),
        ("bash", "python3 -c \"import urllib.request; urllib.request.urlopen('http://example.invalid/', timeout=5)\""),
    ],
)
def test_a_refused_network_access_ends_with_one_line_saying_why(
    kernel: str, code: str, request: pytest.FixtureRequest
) -> None:
    kc = request.getfixturevalue(kernel)
    reply, out = run_cell(kc, code)
    assert reply["status"] == "error"
    assert reply["traceback"][-1].startswith(HINT) and "c.Sandbox.allow_hosts" in reply["traceback"][-1], reply[
        "traceback"
    ]
    assert errors(out)[0]["traceback"] == reply["traceback"]
    reply, out = run_cell(kc, {"py": "1/0", "node": "null.x", "bash": "false"}[kernel])  # no network involved
    assert reply["status"] == "error" and not any(HINT in line for line in reply["traceback"])


def test_host_processes_and_files_are_invisible_and_system_is_read_only(py: Any) -> None:
    code = (
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print('pids', len(pids))\n"
        f"print('host pid visible', os.path.exists('/proc/{os.getpid()}/cmdline') and 'pytest' in open('/proc/{os.getpid()}/cmdline').read())\n"
        "print('uid', os.getuid(), 'cwd', os.getcwd(), 'home', os.environ['HOME'])\n"
        "for path in ['/etc/sandbox-test', '/usr/sandbox-test']:\n"
        "    try:\n        open(path, 'w'); print('WROTE', path)\n"
        "    except OSError as e:\n        print('denied', path, e.errno)\n"
        "print('root home', os.listdir('/root') if os.path.exists('/root') else None, os.path.exists('/work'))\n"
        "open(os.path.expanduser('~/scratch.txt'), 'w').write('ok'); print('scratch', open(os.path.expanduser('~/scratch.txt')).read())\n"
    )
    reply, out = run_cell(py, code)
    stdout = text(out)
    assert reply["status"] == "ok", out
    assert int(stdout.split("pids ")[1].split()[0]) < 10
    assert "host pid visible False" in stdout
    assert "uid 1000 cwd /workspace home /home/sandbox" in stdout  # the notebook's directory, read-only
    assert "WROTE" not in stdout and stdout.count("denied") == 2
    # /root exists only as the way to the kernel's environment when that lives there (pyenv)
    prefix = os.path.realpath(sys.prefix)
    assert f"root home {[prefix.split('/')[2]] if prefix.startswith('/root/') else None} False" in stdout
    assert "scratch ok" in stdout


def test_environment_is_scrubbed(local_kernelspecs: Path) -> None:
    with running_kernel(
        "sandbox-python", env={"AWS_SECRET_ACCESS_KEY": "hunter2", "KUBECONFIG": "/root/.kube/config"}
    ) as (_km, kc):
        reply, out = run_cell(kc, "import os\nsorted(os.environ)")
        names = result(out)
        assert "AWS_SECRET_ACCESS_KEY" not in names and "KUBECONFIG" not in names
        assert "'HOME'" in names and "'PATH'" in names


def test_sandbox_runs_as_an_unprivileged_host_user(py: Any) -> None:
    km_pid = None
    for group in sandbox_groups():
        for pid in group_pids(group):
            status = Path(f"/proc/{pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            km_pid = pid
            if "sh" in Path(f"/proc/{pid}/comm").read_text():
                continue  # the cgroup-joining shell exec()s straight away
            assert uid_line.split()[1] != "0", f"sandbox process {pid} runs as host root"
    assert km_pid is not None


# -- limits --------------------------------------------------------------------------------------------


def test_memory_limit_reports_out_of_memory_and_the_next_cell_works(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python") as (_km, kc):
        run_cell(kc, "before = 1")
        reply, out = run_cell(kc, "b = bytearray(400 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])", timeout=60)
        assert reply["status"] == "error"
        assert "out of memory (limit 256Mi)" in reply["evalue"]
        assert "c.Sandbox.memory_limit" in reply["evalue"] and "SANDBOX_MEMORY_LIMIT" in reply["evalue"], reply[
            "evalue"
        ]
        reply, out = run_cell(kc, "'before' in globals(), 6 * 7")
        assert reply["status"] == "ok" and result(out) == "(False, 42)"


def test_fork_bomb_is_contained(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-bash") as (km, kc):
        run_cell(kc, "%timeout 5")
        kernel_pid = km.provisioner.process.pid
        seen = {"refused": 0, "most": 0}
        stop = threading.Event()

        def watch() -> None:
            # The sandbox may be replaced when the bomb ignores the interrupt, so watch live.
            while not stop.is_set():
                for group in sandbox_groups(kernel_pid):
                    try:
                        seen["refused"] = max(seen["refused"], int((group / "pids.events").read_text().split()[1]))
                        seen["most"] = max(seen["most"], int((group / "pids.current").read_text()))
                    except (OSError, ValueError, IndexError):
                        pass
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        began = time.monotonic()
        try:
            run_cell(kc, "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived", timeout=60)
        finally:
            stop.set()
            watcher.join()
        assert time.monotonic() - began < 30
        assert seen["refused"] > 0, "the pids cgroup never refused a fork"
        assert seen["most"] <= 128
        # The kernel answers (in the same sandbox, or a fresh one if the bomb outlived the cell).
        reply, out = run_cell(kc, "echo alive", timeout=60)
        assert "alive" in text(out)


def test_cpu_is_limited(py: Any) -> None:
    code = (
        "import time, os\n"
        "start = time.time(); cpu0 = time.process_time()\n"
        "while time.time() - start < 2: pass\n"
        "print(round((time.process_time() - cpu0) / (time.time() - start), 2))"
    )
    reply, out = run_cell(py, code)
    share = float(text(out).strip())
    assert share < 0.75, f"a 500m sandbox used {share} of a core"


# -- lifecycle -----------------------------------------------------------------------------------------


def test_restart_gives_a_fresh_sandbox(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python") as (km, kc):
        run_cell(kc, "secret = 1")
        old = sandbox_pids(km.provisioner.process.pid)
        assert old
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        reply, out = run_cell(kc, "'secret' in globals()")
        assert result(out) == "False"
        # The old sandbox dies with its kernel (bubblewrap's --die-with-parent), asynchronously.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in old):
            time.sleep(0.1)
        assert not [pid for pid in old if Path(f"/proc/{pid}").exists()]


def test_shutdown_and_sigkill_leave_no_sandbox_process(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python") as (km, kc):
        run_cell(kc, "import subprocess\np = subprocess.Popen(['sleep', '1000'])")
        kernel_pid = km.provisioner.process.pid
        pids = sandbox_pids(kernel_pid)
        assert len(pids) >= 2
        os.kill(kernel_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.1)
        survivors = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not survivors, f"sandbox processes survived SIGKILL: {survivors}"
    # The next kernel sweeps the dead kernel's empty cgroup.
    with running_kernel("sandbox-python") as (_km, kc):
        assert result(run_cell(kc, "1")[1]) == "1"
        # On the hierarchy the sandboxes use (v1 pids, or v2): an absent parent would pass vacuously.
        assert sandbox_cgroup_parent().is_dir()
        assert not sandbox_groups(kernel_pid)


def test_crashed_agent_is_reported_and_replaced(py: Any) -> None:
    reply, out = run_cell(py, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert reply["status"] == "error" and "stopped unexpectedly" in reply["evalue"]
    assert result(run_cell(py, "2 + 2")[1]) == "4"


# -- configuration and magics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,env,needle",
    [
        (["--Sandbox.memory_limit=256Mb"], {}, "Invalid setting Sandbox.memory_limit"),
        (["--Sandbox.cpu_limit=-1"], {}, "Invalid setting Sandbox.cpu_limit"),
        ([], {"SANDBOX_KERNEL_BACKEND": "docker"}, "unknown backend 'docker'"),
    ],
)
def test_bad_settings_are_reported_in_the_notebook(
    argv: list[str], env: dict[str, str], needle: str, local_kernelspecs: Path
) -> None:
    with running_kernel("sandbox-python", env=env, argv=argv) as (_km, kc):
        reply, out = run_cell(kc, "1")
        assert reply["status"] == "error" and needle in reply["evalue"]
        assert "Traceback" not in "".join(errors(out)[0]["traceback"])
        assert errors(out)[0]["traceback"][-1] == f"Hint: {ConfigError.hint}"  # the next step, on a line of its own


def test_sandbox_magic_reports_what_applies_locally(py: Any) -> None:
    for topic, needle in [
        ("status", "memory"),
        ("quota", "256Mi"),
        ("policy", "loopback only"),
        ("events", "sandbox started"),
        ("manifests", "--unshare-all"),
    ]:
        reply, out = run_cell(py, f"%sandbox {topic}")
        assert reply["status"] == "ok" and needle in text(out), (topic, out)
    reply, out = run_cell(py, "%sandbox nonsense")
    assert reply["status"] == "error" and "unknown topic" in reply["evalue"]


def test_complete_inspect_and_is_complete(py: Any) -> None:
    run_cell(py, "import math\nsandbox_value = 1")
    reply = py.complete("sandbox_va", 10, reply=True)["content"]
    assert "sandbox_value" in reply["matches"]
    reply = py.inspect("math.sqrt", 9, reply=True)["content"]
    assert reply["found"] and "sqrt" in reply["data"]["text/plain"]
    assert is_complete(py, "for i in range(3):") == "incomplete"
    assert is_complete(py, "x = 1") == "complete"


def is_complete(kc: Any, code: str) -> str:
    msg_id = kc.is_complete(code)
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["status"]


def test_exit_asks_the_frontend_to_close(py: Any) -> None:
    reply, _out = run_cell(py, "exit")
    assert reply["status"] == "ok"
    assert {"source": "ask_exit", "keepkernel": False} in reply["payload"]
    assert result(run_cell(py, "'still running'")[1]) == "'still running'"
