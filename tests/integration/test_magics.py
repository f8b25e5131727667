"""``%load_ext sandbox_kernel`` in a real, ordinary ipykernel ``python3`` kernel.

The host kernel is started through jupyter_client like any notebook's; its ``%%sandbox`` cells
run in real local sandboxes (bubblewrap and cgroups), and everything below is checked on the
messages the host kernel sends and on the host's processes and cgroups.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernels import errors, result, run_cell, running_kernel, text
from processes import alive, descendants_named, group_pids, sandbox_groups


def stdout_of(out: list[dict[str, Any]]) -> str:
    return text(out)


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[Any, Any]]:
    """An ordinary IPython kernel with the extension loaded."""
    with running_kernel("python3") as (km, kc):
        reply, out = run_cell(kc, "%load_ext sandbox_kernel")
        assert reply["status"] == "ok", out
        yield km, kc


@pytest.fixture
def kc(host: tuple[Any, Any]) -> Any:
    return host[1]


# -- state, results, streaming ---------------------------------------------------------------------


def test_state_persists_across_cells_and_the_last_value_is_the_cells_result(kc: Any) -> None:
    reply, out = run_cell(
        kc, "%%sandbox\nimport math\ndef area(r):\n    return math.pi * r * r\nradius = 2\nprint('defined')"
    )
    assert reply["status"] == "ok" and stdout_of(out) == "defined\n"
    reply, out = run_cell(kc, "%%sandbox python\nround(area(radius), 3)")
    assert reply["status"] == "ok" and result(out) == "12.566"
    # The sandbox's variables are not the host's.
    reply, out = run_cell(kc, "'radius' in globals()")
    assert result(out) == "False"


def test_output_streams_live(kc: Any) -> None:
    reply, out = run_cell(kc, "%%sandbox\nimport time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)")
    assert reply["status"] == "ok" and stdout_of(out) == "0\n1\n2\n"
    times = [o["t"] for o in out if o["type"] == "stream" and o["text"].strip()]
    assert len(times) == 3
    assert all(b - a >= 0.7 for a, b in zip(times, times[1:])), f"output arrived in a burst: {times}"


def test_stderr_and_rich_display_are_relayed(kc: Any) -> None:
    code = (
        "%%sandbox\nimport sys\nprint('warn', file=sys.stderr)\n"
        "class Bold:\n    def _repr_html_(self):\n        return '<b>bold</b>'\n"
        "display(Bold())"
    )
    reply, out = run_cell(kc, code)
    assert reply["status"] == "ok"
    assert text(out, "stderr") == "warn\n"
    shown = [o["data"] for o in out if o["type"] == "display_data"]
    assert shown and shown[0]["text/html"] == "<b>bold</b>"


def test_node_cells_keep_their_own_state(kc: Any) -> None:
    reply, out = run_cell(kc, "%%sandbox node\nconst greeting = 'hi'; let n = 20\nconsole.log(process.version)")
    assert reply["status"] == "ok" and stdout_of(out).startswith("v")
    reply, out = run_cell(kc, "%%sandbox node\n`${greeting} ${n + 22}`")
    assert reply["status"] == "ok" and "hi 42" in result(out)


def test_bash_cells_keep_their_own_state(kc: Any) -> None:
    reply, out = run_cell(kc, "%%sandbox bash\ncd /tmp && GREETING=hello")
    assert reply["status"] == "ok", out
    reply, out = run_cell(kc, "%%sandbox bash\necho $GREETING from $(pwd) as $(id -u)")
    assert reply["status"] == "ok" and stdout_of(out) == "hello from /tmp as 1000\n"


# -- errors and limits -------------------------------------------------------------------------


def test_error_shows_the_sandbox_traceback_and_fails_the_cell(kc: Any) -> None:
    reply, out = run_cell(kc, "%%sandbox\nx = 1\ny = {}\ny['missing']")
    assert reply["status"] == "error" and reply["ename"] == "KeyError"
    [error] = errors(out)
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))  # IPython mode colours it
    assert "y['missing']" in tb and "KeyError" in tb
    # Only the sandbox's traceback: nothing of the host's machinery.
    assert "magics.py" not in tb and "run_cell_magic" not in tb and "python_agent" not in tb
    # The session survived the error.
    assert result(run_cell(kc, "%%sandbox\nx + 1")[1]) == "2"


def test_timeout_flag_stops_the_cell_and_only_that_cell(kc: Any) -> None:
    run_cell(kc, "%%sandbox\nkept = 3")
    began = time.monotonic()
    reply, out = run_cell(kc, "%%sandbox --timeout 1\nimport time\ntime.sleep(30)")
    took = time.monotonic() - began
    assert reply["status"] == "error" and reply["ename"] == "CellTimeout"
    assert "1 s" in reply["evalue"] and "--timeout" in reply["evalue"] and took < 4
    assert "%timeout" not in reply["evalue"] and "SANDBOX_TIMEOUT" in reply["evalue"]
    # The configured limit (30 s) is back for the next cell, and the state is kept.
    reply, out = run_cell(kc, "%%sandbox\nimport time\ntime.sleep(1.5)\nkept")
    assert reply["status"] == "ok" and result(out) == "3"


def test_memory_flag_runs_the_cell_in_a_smaller_one_off_sandbox(kc: Any) -> None:
    run_cell(kc, "%%sandbox\nsurvivor = 'still here'")
    # 150 MiB: over 64Mi, and within 256Mi next to IPython mode's ~55 MiB at rest.
    code = "%%sandbox --memory 64Mi\nb = bytearray(150 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])"
    reply, out = run_cell(kc, code, timeout=90)
    assert reply["status"] == "error" and reply["ename"] == "OutOfMemory"
    assert "out of memory (limit 64Mi)" in reply["evalue"]
    # A one-off sandbox had no earlier cells; the advice names the flag and the setting behind it.
    assert "earlier cells" not in reply["evalue"] and "restarted" not in reply["evalue"]
    assert (
        "--memory" in reply["evalue"]
        and "c.Sandbox.memory_limit" in reply["evalue"]
        and "SANDBOX_MEMORY_LIMIT" in reply["evalue"]
    )
    # The same allocation fits the session's configured 256Mi, whose state the OOM did not touch.
    reply, out = run_cell(kc, code.replace("--memory 64Mi", "") + "\nn = len(b) // 2**20\ndel b\nsurvivor, n")
    assert reply["status"] == "ok" and result(out) == "('still here', 150)"


def test_cpu_flag_limits_the_cell(kc: Any) -> None:
    code = (
        "import time, threading\n"
        "def spin():\n    end = time.time() + 2\n    while time.time() < end: pass\n"
        "threads = [threading.Thread(target=spin) for _ in range(2)]\n"
        "w0, c0 = time.time(), time.process_time()\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "round((time.process_time() - c0) / (time.time() - w0), 2)"
    )
    reply, out = run_cell(kc, "%%sandbox --cpu 200m\n" + code, timeout=60)
    assert reply["status"] == "ok", out
    assert float(result(out)) < 0.35, f"--cpu 200m used {result(out)} cores"


@pytest.mark.parametrize(
    "flags,needle",
    [
        ("--memory 1Gi", "looser than the configured Sandbox.memory_limit (256Mi)"),
        ("--cpu 2", "looser than the configured Sandbox.cpu_limit (500m)"),
        ("--timeout 100", "looser than the configured Sandbox.timeout (30 s)"),
        ("--memory 64Mb", "Invalid setting --memory"),
        ("perl", "unknown language 'perl'"),
    ],
)
def test_looser_or_bad_limits_are_refused_with_a_clear_error(kc: Any, flags: str, needle: str) -> None:
    reply, out = run_cell(kc, f"%%sandbox {flags}\nprint('must not run')")
    assert reply["status"] == "error" and needle in reply["evalue"]
    assert "must not run" not in stdout_of(out)
    assert needle in "\n".join(errors(out)[0]["traceback"])


def test_interrupting_the_host_cell_interrupts_the_sandbox_cell(host: tuple[Any, Any]) -> None:
    km, kc = host
    run_cell(kc, "%%sandbox\nkept = 7")
    timer = threading.Timer(1.0, km.interrupt_kernel)  # what the stop button and Ctrl-C do
    timer.start()
    began = time.monotonic()
    reply, out = run_cell(kc, "%%sandbox\nimport time\nprint('sleeping', flush=True)\ntime.sleep(100)", timeout=30)
    took = time.monotonic() - began
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert took < 1.0 + 2.0, f"interrupt took {took - 1:.1f} s"
    assert stdout_of(out) == "sleeping\n"
    reply, out = run_cell(kc, "%%sandbox\nkept")
    assert reply["status"] == "ok" and result(out) == "7"
    # The host kernel itself is fine.
    assert result(run_cell(kc, "6 * 7")[1]) == "42"


def test_sandboxes_use_the_host_kernels_configuration(tmp_path: Path) -> None:
    """``c.Sandbox.*`` reaches the sandboxes from the host's own config (here its command line,
    as from an IPython profile) and from ``sandbox_kernel_config.py`` on the Jupyter config path;
    the host config wins."""
    (tmp_path / "sandbox_kernel_config.py").write_text("c.Sandbox.memory_limit = '192Mi'\nc.Sandbox.timeout = 20.0\n")
    env = {"JUPYTER_CONFIG_DIR": str(tmp_path)}
    with running_kernel("python3", env=env, argv=["--Sandbox.memory_limit=128Mi"]) as (_km, kc):
        run_cell(kc, "%load_ext sandbox_kernel")
        run_cell(kc, "%%sandbox\n1")
        status = stdout_of(run_cell(kc, "%sandbox status")[1])
        assert "used of 128Mi" in status and "cell timeout  20 s" in status
        reply, out = run_cell(kc, "%%sandbox --memory 192Mi\n1")
        assert reply["ename"] == "ConfigError" and "Sandbox.memory_limit (128Mi)" in reply["evalue"]
    with running_kernel("python3", env={"SANDBOX_KERNEL_BACKEND": "nowhere"}) as (_km, kc):
        run_cell(kc, "%load_ext sandbox_kernel")
        reply, out = run_cell(kc, "%%sandbox\n1")
        assert reply["status"] == "error" and "SandboxKernel.backend" in reply["evalue"]
        assert "unknown backend 'nowhere'" in "\n".join(errors(out)[0]["traceback"])


# -- status, stop, shutdown -----------------------------------------------------------------------


def test_status_and_stop(host: tuple[Any, Any]) -> None:
    km, kc = host
    run_cell(kc, "%%sandbox\ndoomed = 1")
    reply, out = run_cell(kc, "%sandbox status")
    status = stdout_of(out)
    assert reply["status"] == "ok" and "[python] local backend" in status and "memory" in status
    host_pid = km.provisioner.process.pid
    assert f"sandbox-kernel/k{host_pid}-" in status
    groups_before = sandbox_groups(host_pid)

    reply, out = run_cell(kc, "%sandbox stop python")
    assert reply["status"] == "ok" and "Stopped the python sandbox" in stdout_of(out)
    assert "[python]" not in stdout_of(run_cell(kc, "%sandbox status")[1])
    # Its cgroup is gone, and a new cell gets a fresh sandbox without the old variables.
    assert len(sandbox_groups(host_pid)) == len(groups_before) - 1
    reply, out = run_cell(kc, "%%sandbox\n'doomed' in globals()")
    assert result(out) == "False"
    reply, out = run_cell(kc, "%sandbox stop python")
    reply, out = run_cell(kc, "%sandbox stop python")
    assert "No python sandbox is running" in stdout_of(out)


def test_host_kernel_shutdown_leaves_no_sandbox_behind() -> None:
    with running_kernel("python3") as (km, kc):
        host_pid = km.provisioner.process.pid
        process = km.provisioner.process
        run_cell(kc, "%load_ext sandbox_kernel")
        run_cell(kc, "%%sandbox\nimport subprocess\np = subprocess.Popen(['sleep', '1000'])")
        run_cell(kc, "%%sandbox node\nconst { spawn } = require('child_process'); spawn('sleep', ['1000'])")
        groups = sandbox_groups(host_pid)
        assert len(groups) == 2
        pids = set().union(*(group_pids(g) for g in groups))
        bwraps = descendants_named(host_pid, "bwrap")
        assert len(bwraps) >= 2 and bwraps <= pids  # bubblewrap forks: two per sandbox
        assert len(pids) >= 6  # sh/setpriv/bwrap chains, agents and the two sleeps
    # running_kernel asked the host kernel to shut down (a shutdown_request, not a kill).
    assert process.wait(10) == 0
    survivors = [pid for pid in pids if alive(pid)]
    assert not survivors, f"sandbox processes survived the host kernel: {survivors}"
    assert not sandbox_groups(host_pid), "the host kernel left its sandbox cgroups behind"


def test_terminal_ipython_interrupt_and_exit_leave_no_sandbox_behind() -> None:
    """Terminal IPython has no ipykernel shutdown: the exit hook alone must clean up."""
    import sys

    import pexpect

    child = pexpect.spawn(
        sys.executable,
        ["-m", "IPython", "--simple-prompt", "--no-banner", "--colors=NoColor", "--HistoryManager.enabled=False"],
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    try:
        child.expect(r"In \[1\]: ")

        def cell(*lines: str) -> None:
            for line in lines:
                child.sendline(line)
            child.sendline("")
            child.sendline("")  # a blank line ends a cell-magic block at the simple prompt

        child.sendline("%load_ext sandbox_kernel")
        child.expect(r"In \[2\]: ")
        cell("%%sandbox", "x = 6 * 7", "print('x is', x)")
        child.expect("x is 42")
        child.expect(r"In \[3\]: ")
        cell("%%sandbox", "import time; time.sleep(100)")
        time.sleep(1.5)
        began = time.monotonic()
        child.sendintr()
        child.expect("KeyboardInterrupt")
        assert time.monotonic() - began < 2.0
        child.expect(r"In \[4\]: ")
        cell("%%sandbox", "x")
        child.expect(r"Out\[4\]: 42")
        child.expect(r"In \[5\]: ")
        groups = sandbox_groups(child.pid)
        assert len(groups) == 1
        pids = group_pids(groups[0])
        assert pids
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert not [pid for pid in pids if alive(pid)]
    assert not sandbox_groups(child.pid)
