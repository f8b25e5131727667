"""Issue 11's "smaller" defects (item 7) as a user meets them, checkable in any Sandbox kernel.

Each ``check_*`` drives one running kernel through jupyter_client (a ``KernelManager`` and its
client, whatever the backend and runtime) and asserts the safe outcome from inside the sandbox
only, so the same check runs on the local backend under bubblewrap and gVisor
(tests/integration/test_agent_kernel.py) and on Kubernetes under runc and gVisor
(tests/security/test_kubernetes_runtimes.py). What each defect was:

- ``/proc/1/environ`` and ``mountinfo`` showed the kernel's host pid, cgroup and install paths;
- ``/`` was a writable tmpfs outside ``scratch_size``;
- one interrupted Bash cell made the next three cells get interrupted after 0.3 s;
- Bash reported running out of memory as "the shell exited";
- in Node, ``fs.closeSync(1)`` lost stdout for the rest of the session;
- ``id`` showed a host account's name for uid 1000;
- a Bash fork bomb kept running after its cell returned ok.
"""

from __future__ import annotations

import time
from typing import Any

from kernels import REPO, errors, run_cell, text

# Counts the sandbox's processes from inside (builtins only), waiting up to 15 s for leftovers to go.
COUNT_PROCESSES = (
    "for _ in $(seq 150); do p=(/proc/[0-9]*); ((${#p[@]} <= 12)) && break; sleep 0.1; done; echo processes ${#p[@]}"
)


def ok(kc: Any, code: str, timeout: float = 60) -> str:
    reply, outputs = run_cell(kc, code, timeout)
    assert reply["status"] == "ok" and not errors(outputs), (reply, outputs)
    return text(outputs)


PROC_FILES = "/proc/1/environ /proc/1/cmdline /proc/self/mountinfo /proc/self/cgroup /proc/self/environ"
READ_PROC = {
    "python": (
        "import glob\n"
        f"for f in {PROC_FILES.split()!r} + glob.glob('/proc/[0-9]*/cmdline'):\n"
        "    try:\n"
        "        print(f, repr(open(f, 'rb').read()))\n"
        "    except OSError as e:\n"
        "        print(f, 'unreadable', e.strerror)\n"
    ),
    "bash": f"for f in {PROC_FILES} /proc/[0-9]*/cmdline; do printf '%s ' \"$f\"; tr '\\0' ' ' <\"$f\"; echo; done 2>&1",
}


def check_no_kernel_host_details_in_proc(kc: Any, kernel_pid: int, language: str = "python") -> None:
    """Nothing in the sandbox's /proc names the kernel's host pid, its install path or cgroup."""
    seen = ok(kc, READ_PROC[language])
    assert "/proc/1/environ " in seen and "/proc/self/mountinfo " in seen and len(seen) > 500, seen
    for secret in (str(REPO), "sandbox_kernel", f"k{kernel_pid}-", "SANDBOX_CGROUP", "KUBECONFIG"):
        assert secret not in seen, (secret, seen)


def check_root_is_read_only(kc: Any, refused: tuple[str, ...] = ("Read-only file system",)) -> None:
    """Writing to / or a system directory fails (as on Kubernetes), HOME and /tmp are writable."""
    code = (
        "import os\n"
        "for path in ('/evil', '/opt/evil', '/usr/evil', '/etc/passwd'):\n"
        "    try:\n"
        "        open(path, 'a').close(); print(path, 'written')\n"
        "    except OSError as e:\n"
        "        print(path, e.strerror)\n"
        "open(os.path.expanduser('~/ok'), 'w').write('x'); open('/tmp/ok', 'w').write('x'); print('scratch writable')\n"
    )
    lines = ok(kc, code).splitlines()
    for line, path in zip(lines, ("/evil", "/opt/evil", "/usr/evil", "/etc/passwd")):
        assert line.split(" ", 1)[0] == path and line.split(" ", 1)[1] in (*refused, "Permission denied"), lines
    assert lines[0].split(" ", 1)[1] in refused, lines  # / itself: refused for the right reason
    assert lines[4] == "scratch writable", lines


def check_id_names_the_sandbox_user(kc: Any) -> None:
    """In a Bash kernel: uid 1000 is ``sandbox``, never a host account."""
    got = ok(kc, "id; whoami").splitlines()
    assert got == ["uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)", "sandbox"], got


def check_an_interrupted_bash_cell_leaves_the_next_cells_alone(km: Any, kc: Any) -> None:
    msg_id = kc.execute("sleep 100")
    time.sleep(1.0)
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error", reply["content"]
    for i in range(3):
        reply, out = run_cell(kc, f"sleep 0.8; echo next{i}", timeout=30)
        assert reply["status"] == "ok" and f"next{i}" in text(out), (i, errors(out))


def check_bash_fork_bomb_ends_with_its_cell(kc: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cell ends (by its time limit, or by itself), the bomb with it; the kernel goes on.
    Returns the bomb cell's reply and outputs (how it ended depends on the runtime)."""
    ok(kc, "%timeout 20")
    began = time.monotonic()
    reply, outputs = run_cell(kc, "bomb() { bomb | bomb & }; bomb; sleep 2; echo returned", timeout=120)
    assert time.monotonic() - began < 90
    left = ok(kc, COUNT_PROCESSES, timeout=60).split()
    assert left[0] == "processes" and int(left[1]) <= 12, f"the bomb outlived its cell: {left}"
    ok(kc, "%timeout 30")  # back to the default
    assert "alive" in ok(kc, "echo alive", timeout=60)
    return reply, outputs


def check_bash_out_of_memory_is_reported_as_such(kc: Any) -> None:
    """It was reported as "the shell exited". The shell doubles a string past the memory limit (a few
    system calls: under gVisor, each costs ~10x); the cell may take longer than the default limit to
    be told (a pod's end is seen through the API server)."""
    ok(kc, "%timeout 120")
    reply, out = run_cell(kc, "x=a; for i in {1..29}; do x=$x$x; done; echo survived ${#x}", timeout=180)
    assert reply["status"] == "error", (reply, out)
    assert [e["ename"] for e in errors(out)] == ["OutOfMemory"], errors(out)
    ok(kc, "%timeout 30")  # back to the default
    assert "alive" in ok(kc, "echo alive", timeout=120)


def check_node_closing_stdout_loses_it_for_that_cell_only(kc: Any) -> None:
    """After ``fs.closeSync(1)`` nothing printed in later cells arrived."""
    reply, out = run_cell(kc, "const fs = require('fs'); fs.closeSync(1); console.log('lost'); 5")
    assert reply["status"] == "ok" and "lost" not in text(out), out
    assert (
        ok(
            kc,
            "console.log('back'); console.error('err back'); require('child_process').execSync('echo child', {stdio: 'inherit'}); fs.writeSync(1, 'w')",
        )
        == "back\nchild\nw"
    )
