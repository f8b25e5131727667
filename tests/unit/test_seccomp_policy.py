"""The local sandbox's seccomp table as data: the OCI profile built from it, and its rules'
argument conditions evaluated the way the kernel evaluates a filter (no libseccomp needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_kernel.local import seccomp_policy as sp

# What Docker's and containerd's default profile refuses (without the capabilities a sandbox
# never has) among the calls the issue names: the table must refuse at least these.
REQUIRED = {
    "unshare",
    "setns",
    "clone",
    "clone3",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "ioctl",
    "personality",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "name_to_handle_at",
    "open_by_handle_at",
    "lookup_dcookie",
    "quotactl",
    "syslog",
    "vhangup",
    "nfsservctl",
    "iopl",
    "ioperm",
    "kcmp",
    "clock_settime",
    "settimeofday",
    "mbind",
    "set_mempolicy",
    "move_pages",
}


def denied(syscall: str, args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)) -> int | None:
    """The errno the OCI profile returns for this call (None: allowed), evaluated as runc would:
    entries are ORed, the args of one entry ANDed."""
    profile = sp.to_oci_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    for entry in profile["syscalls"]:
        if syscall not in entry["names"]:
            continue
        ok = True
        for cond in entry["args"]:
            value = args[cond["index"]]
            if cond["op"] == "SCMP_CMP_MASKED_EQ":
                ok &= (value & cond["value"]) == cond["valueTwo"]
            elif cond["op"] == "SCMP_CMP_GT":
                ok &= value > cond["value"]
            else:
                pytest.fail(f"unexpected operator {cond['op']}")
        if ok:
            return entry["errnoRet"]
    return None


def test_the_table_covers_the_default_profiles_denials() -> None:
    assert REQUIRED <= set(sp.syscalls()), REQUIRED - set(sp.syscalls())


def test_every_rule_has_a_reason_group_and_known_errno() -> None:
    for rule in sp.POLICY:
        assert rule.reason and rule.group, rule
        assert rule.errno in sp.ERRNOS, rule
        assert sum(x is not None for x in (rule.any_flags, rule.equals32, rule.allow_only)) <= 1, rule


def test_oci_profile_shape() -> None:
    profile = sp.to_oci_profile()
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    json.dumps(profile)  # plain JSON data
    for entry in profile["syscalls"]:
        assert set(entry) == {"names", "action", "errnoRet", "args"}
        assert entry["action"] == "SCMP_ACT_ERRNO"
        # runc cannot AND two comparisons of one argument: one per index at most.
        indexes = [a["index"] for a in entry["args"]]
        assert len(indexes) == len(set(indexes)), entry
    unconditional = {n for e in profile["syscalls"] if not e["args"] for n in e["names"]}
    assert {"keyctl", "io_uring_setup", "userfaultfd", "bpf", "unshare", "ptrace", "mount"} <= unconditional
    assert not {"clone", "ioctl", "personality"} & unconditional


def test_always_denied_calls_get_eperm_and_clone3_enosys() -> None:
    for name in (
        "keyctl",
        "add_key",
        "io_uring_setup",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "ptrace",
        "unshare",
        "setns",
        "mount",
        "pidfd_getfd",
    ):
        assert denied(name) == 1, name
    assert denied("clone3") == 38


def test_clone_is_denied_only_with_namespace_flags() -> None:
    sigchld = 17
    threads = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
    assert denied("clone", (sigchld, 0, 0, 0, 0, 0)) is None  # fork
    assert denied("clone", (threads, 0, 0, 0, 0, 0)) is None  # pthread_create
    for flag in (
        sp.CLONE_NEWUSER,
        sp.CLONE_NEWNS,
        sp.CLONE_NEWPID,
        sp.CLONE_NEWNET,
        sp.CLONE_NEWUTS,
        sp.CLONE_NEWIPC,
        sp.CLONE_NEWCGROUP,
    ):
        assert denied("clone", (flag | sigchld, 0, 0, 0, 0, 0)) == 1, hex(flag)
    assert denied("clone", (sp.CLONE_NEWUSER | threads | (1 << 40), 0, 0, 0, 0, 0)) == 1


def test_terminal_ioctls_use_a_masked_compare_of_the_low_32_bits() -> None:
    for cmd in (sp.TIOCSTI, sp.TIOCLINUX, sp.TIOCSTI | (1 << 32), sp.TIOCLINUX | (0xFFFF << 40)):
        assert denied("ioctl", (0, cmd, 0, 0, 0, 0)) == 1, hex(cmd)
    for cmd in (0x5401, 0x541B, 0x5413, 0x5412 << 4):  # TCGETS, FIONREAD, TIOCGWINSZ, a near miss
        assert denied("ioctl", (0, cmd, 0, 0, 0, 0)) is None, hex(cmd)


def test_personality_allows_exactly_docker_s_values() -> None:
    for value in sp.PERSONALITY_ALLOWED:
        assert denied("personality", (value, 0, 0, 0, 0, 0)) is None, hex(value)
    for value in (0x1, 0x7, 0x9, 0x40000, 0x0040008, 0x400000, 0xFFFFFFFE, 0x1FFFFFFFF, 0x100000000, 0x20009, 0x1FFFF):
        assert denied("personality", (value, 0, 0, 0, 0, 0)) == 1, hex(value)


def test_personality_blocks_cover_every_other_32_bit_value() -> None:
    blocks = sp._complement_blocks(sp.PERSONALITY_ALLOWED)
    size = sum(1 << (32 - bin(mask).count("1")) for mask, _ in blocks)
    assert size == 2**32 - len(sp.PERSONALITY_ALLOWED)  # disjoint, and nothing else is left out


def test_summary_names_every_group_and_call() -> None:
    text = sp.summary()
    assert text.startswith(f"seccomp: {len(sp.syscalls())} system calls")
    for name in sp.syscalls():
        assert name in text, name
    assert "clone3 (ENOSYS)" in text and "ioctl TIOCSTI" in text


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(
    not SYSTEM_PYTHON.exists() or shutil.which("bwrap") is None, reason="needs the system python3 and bubblewrap"
)
def test_compiles_to_bpf_through_the_system_python() -> None:
    has = subprocess.run([str(SYSTEM_PYTHON), "-c", "import seccomp"], capture_output=True).returncode == 0
    if not has:
        with pytest.raises(sp.SeccompUnavailable, match="python3-seccomp"):
            sp._compile_in(str(SYSTEM_PYTHON))
        pytest.skip("python3-seccomp is not installed")
    blob = sp._compile_in(str(SYSTEM_PYTHON))
    assert blob and len(blob) % 8 == 0 and len(blob) // 8 < 4096  # whole sock_filter instructions


def test_a_missing_binding_names_the_package() -> None:
    with pytest.raises(sp.SeccompUnavailable, match="python3-seccomp"):
        sp._compile_in("/nonexistent/python3")


def test_the_compiled_filter_is_cached_only_where_no_one_else_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "filter.bpf"
    monkeypatch.setattr(sp, "_cache_file", lambda: str(path))
    assert sp._cached() is None
    sp._store(b"\0" * 16)
    assert sp._cached() == b"\0" * 16
    path.write_bytes(b"\0" * 7)  # not whole instructions: ignored, compiled afresh
    assert sp._cached() is None
    monkeypatch.undo()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    monkeypatch.setenv("HOME", str(shared))
    if os.geteuid() != 0:  # root's cache is under /run/sandbox-kernel
        (shared / "sandbox-kernel").mkdir(mode=0o777)
        (shared / "sandbox-kernel").chmod(0o777)
        (shared / "sandbox-kernel" / "seccomp").mkdir(mode=0o777)
        (shared / "sandbox-kernel" / "seccomp").chmod(0o777)
        assert sp._cache_file() is None
