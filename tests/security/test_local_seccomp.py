"""Attacks on the local sandbox's kernel-facing surface, run as cells of real kernels.

Each test asserts the safe outcome of one attack from issue 11 (items 2 and 4): new user
namespaces, the kernel interfaces the seccomp filter refuses, keystroke injection, shared host
uids, a writable ``/`` and host paths visible in ``/proc``. Each fails when the defence it checks
is removed (seccomp filter, --disable-userns, per-sandbox uid, --remount-ro, --args/--file).

The kernels run under both local runtimes (``runtime`` fixture): bubblewrap, and gVisor when runsc
is installed (always in CI: scripts/install-deps.sh installs it). Under gVisor the same table is
applied inside gVisor's kernel; where the outcome differs (clone3, the errno of a read-only /) the
test says so.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernels import LOCAL_RUNTIMES, REPO, errors, run_cell, running_kernel, text
from processes import CGROUP_V1_PIDS, group_pids, sandbox_groups
from syscall_probe import GVISOR_LACKS, PROBE, SYSCALLS
from sandbox_kernel.local import backend, uids

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.fixture(scope="module", params=LOCAL_RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return request.param


def runtime_argv(runtime: str) -> list[str]:
    return [f"--LocalSandbox.runtime={runtime}"]


@pytest.fixture(scope="module")
def notebook_dir() -> Iterator[Path]:
    """The notebook's directory the kernels start in, as Jupyter starts them: not the checkout, so
    that what the sandbox sees of the host is the user's own directory and nothing of the install."""
    with tempfile.TemporaryDirectory(prefix="notebook-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.fixture(scope="module")
def py(local_kernelspecs: Path, runtime: str, notebook_dir: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-python", argv=runtime_argv(runtime), cwd=notebook_dir) as (km, kc):
        yield km, kc


@pytest.fixture(scope="module")
def bash(local_kernelspecs: Path, runtime: str, notebook_dir: Path) -> Iterator[tuple[Any, Any]]:
    with running_kernel("sandbox-bash", argv=runtime_argv(runtime), cwd=notebook_dir) as (km, kc):
        yield km, kc


def out(kc: Any, code: str) -> str:
    reply, outputs = run_cell(kc, code)
    assert not errors(outputs), errors(outputs)
    return text(outputs)


# -- raw system calls ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def syscall_results(py: tuple[Any, Any]) -> dict[str, str]:
    return json.loads(out(py[1], PROBE % json.dumps(SYSCALLS)))


@pytest.mark.parametrize("name", [n for n in SYSCALLS if n != "clone3"])
def test_dangerous_syscall_is_refused_with_eperm(syscall_results: dict[str, str], name: str, runtime: str) -> None:
    if runtime == "gvisor" and name in GVISOR_LACKS:
        assert syscall_results[name] == "ENOSYS", syscall_results
    else:
        assert syscall_results[name] == "EPERM", syscall_results


def test_clone3_reports_enosys_so_libc_falls_back_to_clone(
    py: tuple[Any, Any], syscall_results: dict[str, str], runtime: str
) -> None:
    if runtime == "gvisor":
        # runsc applies OCI profiles with EPERM only, which would break glibc's threads, so clone3
        # is left to gVisor's own kernel (a namespace made there is gVisor's, not the host's).
        assert syscall_results["clone3"] in ("EINVAL", "EFAULT"), syscall_results
    else:
        assert syscall_results["clone3"] == "ENOSYS"
    # ...and threads, fork and subprocesses still work.
    code = (
        "import threading, subprocess, os\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "pid = os.fork()\n"
        "if pid == 0: os._exit(3)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), subprocess.run(['sh', '-c', 'echo sub'], capture_output=True, text=True).stdout.strip())"
    )
    assert out(py[1], code).split() == ["3", "sub"]


def test_python_cannot_create_a_user_namespace(py: tuple[Any, Any]) -> None:
    code = (
        "import os, ctypes, errno\n"
        "try:\n"
        "    if hasattr(os, 'unshare'):\n"
        "        os.unshare(os.CLONE_NEWUSER)\n"
        "    elif ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:\n"
        "        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
        "    print('created')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
    )
    assert out(py[1], code).strip() == "EPERM"


def test_unshare_r_fails(bash: tuple[Any, Any]) -> None:
    reply, outputs = run_cell(
        bash[1], "unshare -r true; echo rc=$?; unshare -r --map-root-user sh -c 'id -u'; echo rc=$?"
    )
    assert text(outputs).split() == ["rc=1", "rc=1"], (text(outputs), text(outputs, "stderr"))
    assert "Operation not permitted" in text(outputs, "stderr")


def test_clone_with_a_new_user_namespace_is_refused(py: tuple[Any, Any]) -> None:
    # fork(2) through the raw clone call, with CLONE_NEWUSER | SIGCHLD.
    code = (
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long\n"
        "rc = libc.syscall(ctypes.c_long(56), ctypes.c_long(0x10000000 | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))\n"
        "import os\n"
        "if rc == 0: os._exit(0)\n"
        "print(errno.errorcode.get(ctypes.get_errno()) if rc < 0 else 'child')\n"
    )
    assert out(py[1], code).strip() == "EPERM"


def test_tiocsti_cannot_type_into_a_terminal(py: tuple[Any, Any]) -> None:
    code = (
        "import os, fcntl, termios, ctypes, errno\n"
        "master, slave = os.openpty()\n"
        "try:\n"
        "    fcntl.ioctl(slave, termios.TIOCSTI, b'x'); print('injected')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long\n"
        "c = ctypes.c_char(b'y')\n"
        "rc = libc.syscall(ctypes.c_long(16), ctypes.c_long(slave), ctypes.c_long((1 << 32) | termios.TIOCSTI), ctypes.byref(c))\n"
        "print('injected' if rc == 0 else errno.errorcode[ctypes.get_errno()])\n"
        "rc = libc.syscall(ctypes.c_long(16), ctypes.c_long(slave), ctypes.c_long(0x541C), ctypes.byref(c))\n"  # TIOCLINUX
        "print('ok' if rc == 0 else errno.errorcode[ctypes.get_errno()])\n"
        "print('tty works' if os.isatty(slave) else 'no tty')\n"
    )
    assert out(py[1], code).splitlines() == ["EPERM", "EPERM", "EPERM", "tty works"]


def test_the_kernel_s_session_keyring_is_unreachable(py: tuple[Any, Any]) -> None:
    # Through every keyring a cell could name: thread, process, session, user, user-session.
    code = (
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long\n"
        "for ring in (-1, -2, -3, -4, -5):\n"
        "    rc = libc.syscall(ctypes.c_long(250), ctypes.c_long(0), ctypes.c_long(ring), ctypes.c_long(0))\n"
        "    print(rc if rc >= 0 else errno.errorcode[ctypes.get_errno()])\n"
    )
    assert out(py[1], code).split() == ["EPERM"] * 5


# -- identity, files, /proc ----------------------------------------------------------------------


def test_id_names_the_sandbox_user_whose_home_is_the_scratch_dir(bash: tuple[Any, Any]) -> None:
    got = out(bash[1], "id; getent passwd 1000; getent group 1000; whoami")
    assert got.splitlines() == [
        "uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)",
        f"sandbox:x:1000:1000:Sandbox:{backend.SANDBOX_HOME}:/bin/bash",
        "sandbox:x:1000:",
        "sandbox",
    ]


def test_root_file_system_is_read_only(py: tuple[Any, Any], runtime: str) -> None:
    code = (
        "import os\n"
        "for path in ('/evil', '/opt/sandbox-agent/evil', '/opt/evil', '/etc/passwd'):\n"
        "    try:\n"
        "        open(path, 'a').close(); print(path, 'written')\n"
        "    except OSError as e:\n"
        "        print(path, e.strerror)\n"
        "open(os.path.expanduser('~/ok'), 'w').write('x'); open('/tmp/ok', 'w').write('x'); print('scratch writable')\n"
    )
    lines = out(py[1], code).splitlines()
    # gVisor checks permissions first: / is root's (and mounted read-only) there.
    refused = "Permission denied" if runtime == "gvisor" else "Read-only file system"
    assert lines[:3] == [f"/evil {refused}", f"/opt/sandbox-agent/evil {refused}", f"/opt/evil {refused}"]
    assert lines[3] in ("/etc/passwd Read-only file system", "/etc/passwd Permission denied")
    assert lines[4] == "scratch writable"


def test_no_host_path_pid_or_cgroup_in_proc(py: tuple[Any, Any], notebook_dir: Path, runtime: str) -> None:
    km, kc = py
    kernel_pid = km.provisioner.process.pid
    code = (
        "import glob\n"
        "for f in ['/proc/1/environ', '/proc/1/cmdline', '/proc/self/mountinfo', '/proc/self/cgroup', '/proc/self/environ', '/proc/self/cmdline'] + glob.glob('/proc/[0-9]*/cmdline'):\n"
        "    try:\n"
        "        print(f, repr(open(f, 'rb').read()))\n"
        "    except OSError as e:\n"
        "        print(f, 'unreadable', e.strerror)\n"
    )
    seen = out(kc, code)
    assert "/proc/1/environ b'" in seen and "/proc/self/mountinfo b'" in seen, seen
    for secret in (str(REPO), "sandbox_kernel", f"k{kernel_pid}-", "sandbox-kernel/", "SANDBOX_CGROUP"):
        assert secret not in seen, (secret, seen)
    # The notebook's own directory is the one host path shown (mountinfo names a bind mount's
    # source: README, threat model), and only as the working directory's mount.
    mentions = [line for line in seen.replace("\\n", "\n").splitlines() if str(notebook_dir) in line]
    # (gVisor's own mountinfo names no host path at all.)
    assert (bool(mentions) or runtime == "gvisor") and all(
        f"{notebook_dir} /workspace " in line for line in mentions
    ), mentions


# -- two sandboxes side by side ------------------------------------------------------------------


def _agent_uids(kernel_pid: int) -> set[int]:
    found: set[int] = set()
    for group in sandbox_groups(kernel_pid):
        for pid in group_pids(group):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            found.update(int(x) for x in line.split()[1:])
    return found


@pytest.mark.skipif(
    os.geteuid() != 0 or not CGROUP_V1_PIDS.parent.is_dir(),
    reason="per-sandbox uids are for kernels running as root (with cgroup v1 pids)",
)
def test_two_sandboxes_have_their_own_host_uid_and_cannot_see_each_other(
    py: tuple[Any, Any], local_kernelspecs: Path, runtime: str
) -> None:
    km_a, kc_a = py
    with running_kernel("sandbox-python", argv=runtime_argv(runtime)) as (km_b, kc_b):
        out(kc_b, "import subprocess; marker = subprocess.Popen(['sleep', '3017'])")
        uids_a, uids_b = _agent_uids(km_a.provisioner.process.pid), _agent_uids(km_b.provisioner.process.pid)
        first, last = uids.parse_range(backend.LocalSandbox().uid_range)
        assert len(uids_a) == 1 and len(uids_b) == 1, (uids_a, uids_b)  # every process, every uid kind
        assert uids_a != uids_b
        assert all(first <= u <= last for u in uids_a | uids_b)
        # A sees none of B's processes, and cannot name B's keys (or its own).
        seen = out(
            kc_a,
            "import glob\nprint(sorted(open(p, 'rb').read().decode(errors='replace') for p in glob.glob('/proc/[0-9]*/cmdline')))",
        )
        assert "3017" not in seen
        code = (
            "import ctypes, errno\n"
            "libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long\n"
            "rc = libc.syscall(ctypes.c_long(250), ctypes.c_long(0), ctypes.c_long(-4), ctypes.c_long(0))\n"  # user keyring
            "print(rc if rc >= 0 else errno.errorcode[ctypes.get_errno()])\n"
        )
        assert out(kc_a, code).strip() == "EPERM"
        # The lease files name the two kernels.
        holders = {(uids.LOCK_DIR / str(u)).read_text().strip() for u in uids_a | uids_b}
        assert holders == {str(km_a.provisioner.process.pid), str(km_b.provisioner.process.pid)}
        uid_b = next(iter(uids_b))
    # B's uid is free again once B is gone: no process runs with it.
    deadline = time.monotonic() + 10
    while uid_b in uids.uids_in_use() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uid_b not in uids.uids_in_use()


def test_policy_report_shows_the_seccomp_table(py: tuple[Any, Any]) -> None:
    reply, outputs = run_cell(py[1], "%sandbox policy")
    report = text(outputs)
    assert "seccomp:" in report and "keyctl" in report and "io_uring_setup" in report and "ioctl TIOCSTI" in report
    assert "no new user namespaces" in report


def test_without_libseccomp_s_bindings_the_sandbox_refuses_to_start(local_kernelspecs: Path) -> None:
    try:
        import seccomp  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("this interpreter has the bindings itself: LocalSandbox.seccomp_python is not used")
    # A filter compiled by an earlier kernel is cached between kernels: remove it, or this kernel
    # would not need the bindings at all.
    from sandbox_kernel.local import seccomp_policy

    cached = seccomp_policy._cache_file()
    if cached:
        Path(cached).unlink(missing_ok=True)
    with running_kernel("sandbox-python", argv=["--LocalSandbox.seccomp_python=/nonexistent/python3"]) as (_km, kc):
        reply, outputs = run_cell(kc, "print('ran')")
        assert "ran" not in text(outputs)
        assert reply["status"] == "error"
        shown = " ".join(f"{e['ename']}: {e['evalue']}" for e in errors(outputs)) + text(outputs, "stderr")
        assert "SandboxStartError" in shown and "python3-seccomp" in shown, outputs


@pytest.mark.skipif(os.geteuid() != 0, reason="per-sandbox uids are for kernels running as root")
def test_a_sigkilled_kernel_s_uid_is_reclaimed(local_kernelspecs: Path) -> None:
    import fcntl
    import signal

    with running_kernel("sandbox-python") as (km, kc):
        out(kc, "1")
        kernel_pid = km.provisioner.process.pid
        (uid,) = _agent_uids(kernel_pid)
        lock = uids.LOCK_DIR / str(uid)
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the live kernel
            os.kill(kernel_pid, signal.SIGKILL)
            km.provisioner.process.wait(10)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the host kernel released it
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        deadline = time.monotonic() + 10
        while uid in uids.uids_in_use() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert uid not in uids.uids_in_use()  # --die-with-parent ended the sandbox with it
