"""Real Sandbox kernels on the local backend with ``LocalSandbox.runtime = 'gvisor'``.

The same promises as bubblewrap (tests/integration/test_local_kernel.py), checked on runsc:
cells run on gVisor's kernel in all three languages, state persists, interrupt, timeout, the
memory limit ends in "out of memory", no network, uid 1000 inside and an unprivileged uid
outside, and neither a shutdown nor a SIGKILLed kernel leaves a runsc process, state directory
or cgroup behind.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernels import errors, result, run_cell, running_kernel, text
from processes import sandbox_cgroup_parent, sandbox_groups, sandbox_pids, wait_gone

from sandbox_kernel.local import gvisor

GVISOR = ["--LocalSandbox.runtime=gvisor"]

_missing = gvisor.unavailable_reason("runsc")
if _missing and os.environ.get("CI"):
    raise RuntimeError(f"CI must test gVisor: {_missing} (scripts/install-deps.sh installs it)")
pytestmark = [
    pytest.mark.usefixtures("local_kernelspecs"),
    pytest.mark.skipif(_missing is not None, reason=f"gVisor unavailable: {_missing}"),
]


@pytest.fixture(scope="module")
def py(local_kernelspecs: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-python", argv=GVISOR) as (km, kc):
        yield km, kc


def runsc_processes(kernel_pid: int) -> list[int]:
    """Host processes of runsc (run, sandbox, gofer) started for this kernel's sandboxes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"runsc" in cmdline and f"/gvisor/k{kernel_pid}-".encode() in cmdline:
            found.append(int(entry.name))
    return found


# -- gVisor's kernel, three languages ---------------------------------------------------------------


def test_python_runs_on_gvisor_s_kernel_and_keeps_state(py: tuple[Any, Any]) -> None:
    km, kc = py
    reply, out = run_cell(
        kc,
        "import os, platform\nrelease = platform.release()\nprint(release, open('/proc/version').read().split()[2], os.getuid())",
    )
    assert reply["status"] == "ok", out
    assert text(out).split() == ["4.4.0", "4.4.0", "1000"], out  # gVisor's kernel, not the host's
    assert os.uname().release != "4.4.0"
    assert result(run_cell(kc, "release")[1]) == "'4.4.0'"
    assert runsc_processes(km.provisioner.process.pid), "no runsc process for this kernel"


def test_bash_runs_on_gvisor_and_keeps_state(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-bash", argv=GVISOR) as (_km, kc):
        run_cell(kc, "cd /tmp && KEPT=7")
        reply, out = run_cell(
            kc, "uname -r; echo $KEPT; pwd; id; ls / | tr '\\n' ' '; echo; ls -A /root 2>&1 | tr '\\n' ' '"
        )
        assert reply["status"] == "ok", out
        lines = text(out).splitlines()
        assert lines[:4] == ["4.4.0", "7", "/tmp", "uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)"], lines
        assert "usr" in lines[4].split()
        # /root exists only as the way to the kernel's environment when that lives there (pyenv)
        prefix = os.path.realpath(sys.prefix)
        assert ("root" in lines[4].split()) == prefix.startswith("/root/")
        if prefix.startswith("/root/"):
            assert lines[5].split() == [prefix.split("/")[2]], lines


def test_node_runs_on_gvisor_and_keeps_state(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-node", argv=GVISOR) as (_km, kc):
        run_cell(kc, "const kept = 6; function twice(x) { return 2 * x }")
        reply, out = run_cell(kc, "`${require('os').release()} ${twice(kept)}`")
        assert reply["status"] == "ok" and "4.4.0 12" in result(out), out


def test_status_and_policy_name_the_runtime(py: tuple[Any, Any]) -> None:
    _km, kc = py
    status = text(run_cell(kc, "%sandbox status")[1])
    assert "local (gVisor)" in status and "platform systrap" in status, status
    policy = text(run_cell(kc, "%sandbox policy")[1])
    assert "runtime: gVisor" in policy and "gVisor's own kernel" in policy and "seccomp:" in policy, policy
    manifests = text(run_cell(kc, "%sandbox manifests")[1])
    assert "runsc" in manifests and "--network=none" in manifests and "--rootless" in manifests, manifests


# -- isolation ---------------------------------------------------------------------------------------


def test_no_network_no_host_processes_read_only_root(py: tuple[Any, Any]) -> None:
    _km, kc = py
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = (
        "import os, socket\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('REACHED')\n"
        "except OSError as e:\n    print('refused')\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('REACHED')\n"
        "except OSError as e:\n    print('unreachable')\n"
        "print('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
        "for path in ('/evil', '/usr/evil', '/etc/passwd', '/opt/sandbox-agent/evil'):\n"
        "    try:\n        open(path, 'a').close(); print('WROTE', path)\n"
        "    except OSError as e:\n        print('denied', e.strerror)\n"
        "open(os.path.expanduser('~/ok'), 'w').write('x'); open('/tmp/ok', 'w').write('x'); print('scratch ok')\n"
        "print('host dirs', os.listdir('/root') if os.path.exists('/root') else None, os.path.exists('/work'), os.path.exists('/run/sandbox-kernel'))\n"
        "print(sorted(os.environ))\n"
    )
    try:
        reply, out = run_cell(kc, code)
    finally:
        server.close()
    got = text(out)
    assert reply["status"] == "ok", out
    assert "['lo']" in got and "REACHED" not in got and "refused" in got and "unreachable" in got, got
    assert int(got.split("pids ")[1].split()[0]) < 10
    assert "WROTE" not in got and got.count("\ndenied ") == 4, got
    prefix = os.path.realpath(sys.prefix)  # /root holds only the way to the kernel's environment
    assert (
        "scratch ok" in got
        and f"host dirs {[prefix.split('/')[2]] if prefix.startswith('/root/') else None} False False" in got
    ), got
    env = got.strip().splitlines()[-1]
    # PYTHONUNBUFFERED and MPLBACKEND (the plain agent's inline plots) are the agent's own, not the host's
    assert set(ast.literal_eval(env)) - {"PYTHONUNBUFFERED", "MPLBACKEND"} == {
        "HOME",
        "LANG",
        "PATH",
        "TMPDIR",
        "USER",
    }, env


def test_gvisor_runs_as_an_unprivileged_host_uid(py: tuple[Any, Any]) -> None:
    km, _kc = py
    pids = sandbox_pids(km.provisioner.process.pid)
    assert pids
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
        if comm == "sh":
            continue  # the cgroup-joining shell exec()s straight away
        if os.geteuid() == 0:
            assert uid != "0", f"{comm} ({pid}) runs as host root"


# -- interrupt, timeout, limits ----------------------------------------------------------------------


def interrupt_after(km: Any, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, km.interrupt_kernel)
    timer.start()
    return timer


@pytest.mark.parametrize(
    "kernel,setup,code,check",
    [
        ("sandbox-python", "kept = 7", "import time\ntime.sleep(100)", "kept"),
        ("sandbox-bash", "kept=7", "sleep 100", "echo $kept"),
    ],
)
def test_interrupt_stops_the_cell_and_keeps_state(
    kernel: str, setup: str, code: str, check: str, local_kernelspecs: Path
) -> None:
    with running_kernel(kernel, argv=GVISOR) as (km, kc):
        run_cell(kc, setup)
        interrupt_after(km, 1.0)
        began = time.monotonic()
        reply, out = run_cell(kc, code, timeout=30)
        took = time.monotonic() - began
        assert reply["status"] == "error" and took < 1.0 + 2.0, (reply, took)
        reply, out = run_cell(kc, check)
        assert reply["status"] == "ok" and "7" in text(out) + "".join(
            o.get("data", {}).get("text/plain", "") for o in out
        )


def test_timeout_stops_the_cell_and_the_kernel_goes_on(py: tuple[Any, Any]) -> None:
    _km, kc = py
    run_cell(kc, "%timeout 1")
    try:
        run_cell(kc, "kept = 3")
        began = time.monotonic()
        reply, out = run_cell(kc, "while True:\n    pass")
        assert reply["status"] == "error" and reply["ename"] == "CellTimeout" and time.monotonic() - began < 5
        assert result(run_cell(kc, "kept")[1]) == "3"
    finally:
        run_cell(kc, "%timeout 30")


def test_memory_limit_reports_out_of_memory_and_the_next_cell_works(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python", argv=GVISOR) as (km, kc):
        run_cell(kc, "before = 1")
        old = runsc_processes(km.provisioner.process.pid)
        reply, out = run_cell(kc, "b = bytearray(400 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])", timeout=90)
        assert reply["status"] == "error", out
        assert "out of memory (limit 256Mi)" in reply["evalue"], reply
        reply, out = run_cell(kc, "'before' in globals(), 6 * 7", timeout=60)
        assert reply["status"] == "ok" and result(out) == "(False, 42)"
        assert not wait_gone(old), "the OOM-killed sandbox's runsc processes are still there"


def test_fork_bomb_is_contained(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-bash", argv=GVISOR) as (km, kc):
        run_cell(kc, "%timeout 5")
        began = time.monotonic()
        run_cell(kc, "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived", timeout=90)
        assert time.monotonic() - began < 60
        assert "alive" in text(run_cell(kc, "echo alive", timeout=60)[1])


# -- clean-up ----------------------------------------------------------------------------------------


def test_shutdown_leaves_no_runsc_process_state_or_cgroup(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python", argv=GVISOR) as (km, kc):
        run_cell(kc, "import subprocess\np = subprocess.Popen(['sleep', '1000'])")
        kernel_pid = km.provisioner.process.pid
        procs = runsc_processes(kernel_pid)
        pids = sandbox_pids(kernel_pid)
        assert procs and list(gvisor.STATE_ROOT.glob(f"k{kernel_pid}-*"))
    assert not wait_gone(set(procs) | pids)
    assert not list(gvisor.STATE_ROOT.glob(f"k{kernel_pid}-*"))
    assert sandbox_cgroup_parent().is_dir() and not sandbox_groups(kernel_pid)


def test_sigkill_of_the_kernel_leaves_nothing(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python", argv=GVISOR) as (km, kc):
        run_cell(kc, "import subprocess\np = subprocess.Popen(['sleep', '1000'])")
        kernel_pid = km.provisioner.process.pid
        everything = set(runsc_processes(kernel_pid)) | sandbox_pids(kernel_pid)
        assert len(everything) >= 3
        os.kill(kernel_pid, signal.SIGKILL)
        survivors = wait_gone(everything)
        assert not survivors, f"sandbox processes survived SIGKILL: {survivors}"
    # The next kernel (either runtime) removes the dead kernel's runsc state and cgroup.
    with running_kernel("sandbox-python", argv=GVISOR) as (_km, kc):
        assert result(run_cell(kc, "1")[1]) == "1"
        assert not list(gvisor.STATE_ROOT.glob(f"k{kernel_pid}-*"))
        assert sandbox_cgroup_parent().is_dir() and not sandbox_groups(kernel_pid)


def test_missing_runsc_is_reported_in_the_notebook(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python", argv=[*GVISOR, "--LocalSandbox.runsc=/nonexistent/runsc"]) as (_km, kc):
        reply, out = run_cell(kc, "print('ran')")
        assert reply["status"] == "error" and "ran" not in text(out)
        assert "runsc" in reply["evalue"] and "not installed" in reply["evalue"], reply
        assert not errors(out) or "Traceback" not in "".join(errors(out)[0]["traceback"])
