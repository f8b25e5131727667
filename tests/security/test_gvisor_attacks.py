"""Attacks that only make sense under gVisor (``LocalSandbox.runtime = 'gvisor'``).

The shared attack suite runs under gVisor too (tests/security/test_local_seccomp.py runs every
kernel-facing attack under both runtimes). This file adds what is particular to gVisor: the
host kernel is out of reach (a cell talks to gVisor's kernel, and its own view of the host is
synthetic), gVisor's host processes are themselves confined (unprivileged leased uid, a user
namespace that maps only that uid, no_new_privs, gVisor's own seccomp filter), and
``%sandbox selftest`` passes inside gVisor in all three languages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernels import errors, run_cell, running_kernel, text

from sandbox_kernel.local import environment, gvisor, uids
from sandbox_kernel.local.backend import LocalSandbox

GVISOR = ["--LocalSandbox.runtime=gvisor"]
_missing = gvisor.unavailable_reason("runsc")
pytestmark = [
    pytest.mark.usefixtures("local_kernelspecs"),
    pytest.mark.skipif(_missing is not None and not os.environ.get("CI"), reason=f"gVisor unavailable: {_missing}"),
]


@pytest.fixture(scope="module")
def py(local_kernelspecs: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-python", argv=GVISOR) as (km, kc):
        yield km, kc


def out(kc: Any, code: str) -> str:
    reply, outputs = run_cell(kc, code)
    assert not errors(outputs), errors(outputs)
    return text(outputs)


def test_the_host_kernel_is_out_of_reach(py: tuple[Any, Any]) -> None:
    code = (
        "import os, platform\n"
        "print('release', platform.release())\n"
        "for f in ('/proc/kallsyms', '/proc/modules', '/sys/kernel/debug', '/dev/kvm', '/proc/sys/kernel/core_pattern', '/sys/fs/cgroup/memory'):\n"
        "    print(f, 'present' if os.path.exists(f) else 'absent')\n"
        "import subprocess\n"
        "r = subprocess.run(['dmesg'], capture_output=True, text=True); print('dmesg', r.returncode)\n"
    )
    seen = out(py[1], code)
    assert "release 4.4.0" in seen and os.uname().release not in seen, seen
    for path in ("/proc/kallsyms", "/proc/modules", "/sys/kernel/debug", "/dev/kvm", "/sys/fs/cgroup/memory"):
        assert f"{path} absent" in seen, seen
    assert "dmesg 0" not in seen  # syslog is in the seccomp table, inside gVisor too


def test_host_files_cannot_be_reached_through_proc_or_handles(py: tuple[Any, Any]) -> None:
    code = (
        "import os, ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long\n"
        "print('exe', os.readlink('/proc/self/exe'))\n"
        "print('root', sorted(os.listdir('/proc/self/root')))\n"
        "rc = libc.syscall(304, -100, 0, 0)\n"  # open_by_handle_at
        "print('open_by_handle_at', errno.errorcode.get(ctypes.get_errno()) if rc < 0 else 'ok')\n"
        "rc = libc.mount(b'proc', b'/tmp', b'proc', 0, None)\n"
        "print('mount', errno.errorcode.get(ctypes.get_errno()) if rc < 0 else 'ok')\n"
        "print('work', os.path.exists('/work'), os.path.exists('/run/sandbox-kernel'))\n"
        "print('home', sorted(os.listdir('/root')) if os.path.isdir('/root') else None)\n"
    )
    seen = out(py[1], code)
    python = environment.python_environment("kernel").python
    assert f"exe {os.path.realpath(python)}" in seen, seen  # gVisor's own view: no runsc binary in sight
    assert "open_by_handle_at EPERM" in seen and "mount EPERM" in seen, seen
    assert "work False False" in seen, seen
    root = re.search(r"root (\[.*\])", seen)
    assert root and "'work'" not in root.group(1), seen  # the host's /work (not /workspace, the notebook's)
    # /root exists only as the way to the kernel's environment when that lives there (pyenv):
    # nothing else of the host's home.
    expected = [python.split("/")[2]] if python.startswith("/root/") else None
    assert f"home {expected}" in seen, seen


@pytest.mark.skipif(os.geteuid() != 0, reason="the leased uid is for kernels running as root")
def test_gvisor_s_own_processes_are_confined_on_the_host(py: tuple[Any, Any]) -> None:
    km, _kc = py
    kernel_pid = km.provisioner.process.pid
    first, last = uids.parse_range(LocalSandbox().uid_range)
    checked = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            cmdline = (entry / "cmdline").read_bytes()
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            uid_map = (entry / "uid_map").read_text().split()
        except OSError:
            continue
        if argv0 not in (b"runsc-sandbox", b"runsc-gofer") or f"/gvisor/k{kernel_pid}-".encode() not in cmdline:
            continue
        checked += 1
        host_uids = {int(u) for u in status["Uid"].split()}
        assert len(host_uids) == 1 and first <= min(host_uids) <= last, (argv0, status["Uid"])  # never root
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", (argv0, status)
        # A user namespace that maps exactly one uid, the leased one: its capabilities are void outside.
        assert len(uid_map) == 3 and uid_map[1] == str(min(host_uids)) and uid_map[2] == "1", (argv0, uid_map)
    assert checked >= 2, "no runsc sandbox and gofer process found for this kernel"


@pytest.mark.parametrize("kernel", ["sandbox-python", "sandbox-bash", "sandbox-node"])
def test_selftest_passes_under_gvisor(kernel: str, local_kernelspecs: Path) -> None:
    with running_kernel(kernel, argv=GVISOR) as (_km, kc):
        reply, outputs = run_cell(kc, "%sandbox selftest")
        assert reply["status"] == "ok", outputs
        table = text(outputs)
        assert "0 failed" in table and "  FAIL  " not in table, table
        assert re.search(r"runtime\s+pass\s+gVisor", table), table


def test_scratch_space_is_bounded_inside_gvisor(py: tuple[Any, Any]) -> None:
    # HOME is a gVisor tmpfs of scratch_size (64Mi): filling it fails with ENOSPC, not an OOM.
    code = (
        "import os, errno\n"
        "try:\n"
        "    with open(os.path.expanduser('~/fill'), 'wb') as f:\n"
        "        for _ in range(100):\n"
        "            f.write(b'x' * 2**20)\n"
        "    print('filled')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "finally:\n"
        "    os.unlink(os.path.expanduser('~/fill'))\n"
    )
    assert out(py[1], code).strip() == "ENOSPC"
