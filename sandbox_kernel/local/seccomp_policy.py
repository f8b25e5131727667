"""The seccomp policy of the local sandbox: one declarative table, the single source.

Every system call below is refused (``EPERM`` unless noted) to the code in a sandbox; all others
are allowed, as in Docker's and containerd's default profile, which this table is at least as
strict as for every call it names (Docker's profile is an allow list: where it allows a call only
with a capability the sandbox never has, the call is denied here outright). The kernel hands the
compiled filter to bubblewrap (``--seccomp FD``), which loads it right before it starts the agent.

The table is plain data, importable without libseccomp: :func:`to_oci_profile` turns it into the
JSON profile containerd, Docker and a Kubernetes ``Localhost`` seccompProfile read, and
:func:`summary` into the text ``%sandbox policy`` shows. :func:`compile_bpf` compiles it with
libseccomp's official Python bindings (Debian/Ubuntu ``python3-seccomp``); when the kernel's own
interpreter (a virtualenv, pyenv) cannot import them, it runs this file with the system's
``python3``, which can — so this module imports nothing but the standard library.

Compat ABIs: the local filter is for the native architecture only; system calls through another
ABI (32-bit ``int 0x80``, x32) fail with ``ENOSYS`` instead of slipping past the table. The OCI
profile lists x86, x32 and x86-64, so runc applies every rule to each of them.
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# Argument comparisons, named as in OCI profiles (and mapped to libseccomp's operators).
MASKED_EQ = "SCMP_CMP_MASKED_EQ"  # (arg & value) == value_two
GT = "SCMP_CMP_GT"  # arg > value

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# The namespace flags Docker checks in clone(2) (its mask 0x7E020000). CLONE_NEWTIME (0x80)
# means the exit signal in clone(2) and is reachable only through unshare/clone3, both denied.
NAMESPACE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)

TIOCSTI = 0x5412  # push a byte into a terminal's input queue: type commands into someone's shell
TIOCLINUX = 0x541C  # virtual console functions, including pasting the selection as input

# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, both, and the query.
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


@dataclass(frozen=True)
class Rule:
    """One denied system call. Without a condition the call is always denied; ``any_flags``,
    ``equals32`` and ``allow_only`` deny it only for the arguments they describe."""

    syscall: str
    group: str
    reason: str
    errno: str = "EPERM"
    any_flags: tuple[int, int] | None = None  # (arg index, flags): denied when any flag is set
    equals32: tuple[int, int] | None = None  # (arg index, value): denied when the low 32 bits equal it
    allow_only: tuple[int, tuple[int, ...]] | None = None  # (arg index, values): denied unless one of them


def _always(syscalls: str, group: str, reason: str, errno: str = "EPERM") -> tuple[Rule, ...]:
    return tuple(Rule(name, group, reason, errno) for name in syscalls.split())


# Not reformatted: the policy is one table, a rule a line, for review.
# fmt: off
POLICY: tuple[Rule, ...] = (
    # -- namespaces: a user namespace gives "root" with mount rights, the way into most kernel CVEs
    *_always("unshare", "namespaces", "new namespaces (unshare -r would be root in a user namespace)"),
    *_always("setns", "namespaces", "joining another namespace"),
    Rule("clone", "namespaces", "clone with a CLONE_NEW* flag (fork and threads still work)", any_flags=(0, NAMESPACE_FLAGS)),
    *_always("clone3", "namespaces", "its flags are in memory, out of a filter's reach: ENOSYS makes libc fall back to clone, as Docker does", errno="ENOSYS"),
    # -- kernel keyrings: the kernel's session keyring, per-uid key quotas shared across sandboxes
    *_always("keyctl add_key request_key", "keyrings", "kernel keyrings (the host's session keyring, per-uid quotas)"),
    # -- attack surface the sandbox has no use for: frequent sources of kernel exploits
    *_always("io_uring_setup io_uring_enter io_uring_register", "exploit surface", "io_uring (Docker denies it too)"),
    *_always("userfaultfd", "exploit surface", "stalls kernel page faults: a race-widening exploit primitive"),
    *_always("bpf", "exploit surface", "eBPF programs and maps"),
    *_always("perf_event_open", "exploit surface", "performance counters: kernel info leaks"),
    *_always("kcmp", "exploit surface", "compares kernel objects of other processes (needs CAP_SYS_PTRACE in Docker)"),
    *_always("fanotify_init", "exploit surface", "file system wide event monitoring (needs CAP_SYS_ADMIN in Docker)"),
    *_always("lookup_dcookie", "exploit surface", "kernel profiling interface"),
    # -- the host's kernel and machine
    *_always("kexec_load kexec_file_load reboot", "host kernel", "replacing or rebooting the host kernel"),
    *_always("init_module finit_module delete_module create_module get_kernel_syms query_module", "host kernel", "loading and unloading kernel modules"),
    *_always("syslog", "host kernel", "the kernel log (addresses, other tenants' messages)"),
    *_always("acct swapon swapoff quotactl quotactl_fd nfsservctl sysfs _sysctl uselib ustat", "host kernel", "host administration and obsolete interfaces"),
    *_always("clock_settime clock_adjtime settimeofday stime", "host kernel", "setting the host's clock"),
    *_always("iopl ioperm vm86 vm86old", "host kernel", "raw hardware I/O ports and virtual-8086 mode"),
    *_always("mbind set_mempolicy get_mempolicy move_pages migrate_pages", "host kernel", "NUMA memory placement (needs CAP_SYS_NICE in Docker)"),
    # -- mounts: the sandbox's file system view is fixed by bubblewrap before the agent starts
    *_always(
        "mount umount umount2 pivot_root move_mount open_tree open_tree_attr fsopen fsmount fsconfig fspick mount_setattr",
        "mounts",
        "changing the sandbox's file system view",
    ),
    *_always("name_to_handle_at open_by_handle_at", "mounts", "file handles open files by inode, around the mount view (the 'shocker' escape)"),
    # -- other processes' memory and file descriptors
    *_always("ptrace", "processes", "tracing processes (denied entirely: no debugger or strace inside)"),
    *_always("process_vm_readv process_vm_writev process_madvise", "processes", "reading, writing or advising another process's memory"),
    *_always("pidfd_getfd", "processes", "copying another process's file descriptors"),
    # -- terminals
    Rule("ioctl", "terminals", "TIOCSTI: typing into a terminal's input", equals32=(1, TIOCSTI)),
    Rule("ioctl", "terminals", "TIOCLINUX: pasting into a virtual console", equals32=(1, TIOCLINUX)),
    *_always("vhangup", "terminals", "hanging up the controlling terminal"),
    # -- execution domains
    Rule(
        "personality",
        "execution domain",
        "only PER_LINUX, PER_LINUX32, UNAME26 and the query: no ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...",
        allow_only=(0, PERSONALITY_ALLOWED),
    ),
)
# fmt: on

# Calls newer than the libseccomp this may be compiled with (Debian 12 has 2.5.4): their
# numbers on x86-64, used only when libseccomp does not know the name.
X86_64_NUMBERS = {"open_tree_attr": 467}

ERRNOS = {"EPERM": _errno.EPERM, "ENOSYS": _errno.ENOSYS}

Condition = tuple[int, str, int, int]  # (arg index, operator, value, value_two)


def _complement_blocks(allowed: tuple[int, ...], bits: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs whose masked matches cover every ``bits``-bit number not in ``allowed``.

    libseccomp (like runc) cannot AND two comparisons of one argument, so "none of these values"
    is spelled as a union of aligned blocks, each one masked compare."""
    out: list[tuple[int, int]] = []

    def block(prefix: int, level: int) -> None:
        low = prefix << (bits - level)
        high = low + (1 << (bits - level)) - 1
        if not any(low <= value <= high for value in allowed):
            out.append((((1 << level) - 1) << (bits - level), low))
        elif level < bits:
            block(prefix << 1, level + 1)
            block((prefix << 1) | 1, level + 1)

    block(0, 0)
    return out


def conditions(rule: Rule) -> list[tuple[Condition, ...]]:
    """The rule as filter rules: the call is denied when all conditions of any one of them hold.
    ``[()]`` for a call that is always denied."""
    if rule.any_flags is not None:
        index, flags = rule.any_flags
        return [((index, MASKED_EQ, bit, bit),) for bit in (1 << n for n in range(64)) if flags & bit]
    if rule.equals32 is not None:
        index, value = rule.equals32
        return [((index, MASKED_EQ, 0xFFFFFFFF, value),)]
    if rule.allow_only is not None:
        index, values = rule.allow_only
        assert all(0 <= v <= 0xFFFFFFFF for v in values)
        rules: list[tuple[Condition, ...]] = [((index, GT, 0xFFFFFFFF, 0),)]
        rules += [((index, MASKED_EQ, mask, value),) for mask, value in _complement_blocks(values)]
        return rules
    return [()]


def syscalls() -> list[str]:
    """Every system call the policy filters, in table order, once each."""
    return list(dict.fromkeys(rule.syscall for rule in POLICY))


# -- the OCI / Docker / containerd profile -------------------------------------------------------

OCI_ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")


def to_oci_profile(architectures: tuple[str, ...] = OCI_ARCHITECTURES) -> dict[str, Any]:
    """The policy as a containerd/Docker seccomp profile (``defaultAction`` allow plus the deny
    list), e.g. for a Kubernetes ``Localhost`` profile. Unconditional denials are grouped by
    errno; each conditional one is an entry of its own (OCI ANDs the args of one entry)."""
    unconditional: dict[str, list[str]] = {}
    conditional: list[dict[str, Any]] = []
    for rule in POLICY:
        for conds in conditions(rule):
            if not conds:
                unconditional.setdefault(rule.errno, []).append(rule.syscall)
                continue
            conditional.append(
                {
                    "names": [rule.syscall],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": ERRNOS[rule.errno],
                    "args": [{"index": i, "value": v, "valueTwo": v2, "op": op} for i, op, v, v2 in conds],
                }
            )
    entries = [
        {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": ERRNOS[name], "args": []}
        for name, names in unconditional.items()
    ]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": list(architectures), "syscalls": entries + conditional}


# -- what %sandbox policy shows ------------------------------------------------------------------


def _describe(rule: Rule) -> str:
    if rule.any_flags is not None:
        return f"{rule.syscall} with CLONE_NEW*"
    if rule.equals32 is not None:
        name = {TIOCSTI: "TIOCSTI", TIOCLINUX: "TIOCLINUX"}.get(rule.equals32[1], hex(rule.equals32[1]))
        return f"{rule.syscall} {name}"
    if rule.allow_only is not None:
        return f"{rule.syscall} other than {', '.join(hex(v) for v in rule.allow_only[1])}"
    return rule.syscall + ("" if rule.errno == "EPERM" else f" ({rule.errno})")


def summary() -> str:
    """The table, one line per group, for ``%sandbox policy``."""
    groups: dict[str, list[str]] = {}
    for rule in POLICY:
        entry = _describe(rule)
        if entry not in groups.setdefault(rule.group, []):
            groups[rule.group].append(entry)
    width = max(len(g) for g in groups)
    lines = [
        f"seccomp: {len(syscalls())} system calls filtered (EPERM unless noted; clone, ioctl and personality "
        "only as described); every other call allowed"
    ]
    lines += [f"  {group.ljust(width)}  {', '.join(entries)}" for group, entries in groups.items()]
    return "\n".join(lines)


# -- compiling it --------------------------------------------------------------------------------

PACKAGE_HINT = "libseccomp's Python bindings (Debian/Ubuntu: apt-get install python3-seccomp)"


class SeccompUnavailable(RuntimeError):
    """The filter cannot be compiled here."""


def _compile_with(seccomp: Any) -> bytes:
    ops = {MASKED_EQ: seccomp.MASKED_EQ, GT: seccomp.GT}
    fil = seccomp.SyscallFilter(seccomp.ALLOW)
    # Another ABI (32-bit int 0x80, x32) must not walk around the table: refuse it outright.
    fil.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.ERRNO(_errno.ENOSYS))
    x86_64 = seccomp.system_arch() == seccomp.Arch.X86_64
    for rule in POLICY:
        call: str | int = rule.syscall
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, rule.syscall) == -1:  # unknown to this libseccomp
            if not (x86_64 and rule.syscall in X86_64_NUMBERS):
                continue
            call = X86_64_NUMBERS[rule.syscall]
        for conds in conditions(rule):
            args = [seccomp.Arg(i, ops[op], v, v2) for i, op, v, v2 in conds]
            fil.add_rule(seccomp.ERRNO(ERRNOS[rule.errno]), call, *args)
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb", closefd=True) as out:
            # The blob is a few KiB, far below a pipe's buffer: export cannot block.
            fil.export_bpf(out)
        chunks = []
        while chunk := os.read(read, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read)
    return b"".join(chunks)


_cache: dict[str, bytes] = {}


def compile_bpf(system_python: str = "/usr/bin/python3") -> bytes:
    """The policy as a classic-BPF program for ``bwrap --seccomp`` (cached per process).

    Compiled in this interpreter when it can import ``seccomp``, else by running this file with
    ``system_python``. Raises :class:`SeccompUnavailable` naming the package to install."""
    if "bpf" in _cache:
        return _cache["bpf"]
    try:
        import seccomp
    except ImportError:
        blob = _cached() or _compile_in(system_python)
    else:
        blob = _compile_with(seccomp)
    if not blob or len(blob) % 8:
        raise SeccompUnavailable(f"libseccomp produced no valid filter ({len(blob)} bytes)")
    _store(blob)
    _cache["bpf"] = blob
    return blob


def _cache_file() -> str | None:
    """Where the compiled filter is kept between kernels (the system python3 takes ~0.2 s):
    a directory only this user can write, the name keyed by this file's content."""
    import hashlib

    if os.geteuid() == 0:
        base = "/run/sandbox-kernel"
    else:
        base = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or os.path.expanduser("~/.cache"), "sandbox-kernel")
    try:
        with open(os.path.abspath(__file__), "rb") as f:
            key = hashlib.sha256(f.read()).hexdigest()[:24]
        directory = os.path.join(base, "seccomp")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
    except OSError:
        return None
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None  # someone else could have written it: do not trust what is there
    return os.path.join(directory, f"filter-{key}.bpf")


def _cached() -> bytes | None:
    path = _cache_file()
    try:
        with open(path or "", "rb") as f:
            blob = f.read()
    except OSError:
        return None
    return blob if blob and len(blob) % 8 == 0 else None


def _store(blob: bytes) -> None:
    path = _cache_file()
    if path is None or os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _compile_in(python: str) -> bytes:
    try:
        done = subprocess.run(
            [python, "-I", os.path.abspath(__file__), "--bpf"],
            capture_output=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SeccompUnavailable(
            f"cannot run {python} to compile the seccomp filter ({exc}); install {PACKAGE_HINT}"
        ) from exc
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise SeccompUnavailable(
            f"neither this Python nor {python} can import seccomp ({detail[0]}); install {PACKAGE_HINT}"
        )
    return done.stdout


def _main() -> int:
    if sys.argv[1:] == ["--bpf"]:
        try:
            import seccomp
        except ImportError as exc:
            print(f"{exc}", file=sys.stderr)
            return 3
        sys.stdout.buffer.write(_compile_with(seccomp))
        return 0
    if sys.argv[1:] == ["--oci"]:
        import json

        json.dump(to_oci_profile(), sys.stdout, indent=2)
        print()
        return 0
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
