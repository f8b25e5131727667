"""Raw system calls from a cell, by name, with the errno each got: the kernel-facing attack probe
shared by the local attack suite (tests/security/test_local_seccomp.py, bubblewrap and gVisor)
and the Kubernetes one (tests/security/test_kubernetes_runtimes.py, runc and gVisor).

``PROBE % json.dumps(SYSCALLS)`` is a Python cell that prints one JSON line
``{name: "ok" | errno name}``. x86-64 numbers, with arguments that would succeed (or fail with
another errno than the filter's) where the call is allowed, so "refused" and "allowed" are told
apart by the errno.
"""

from __future__ import annotations

# x86-64 numbers and arguments that would succeed (or fail differently) without the filter.
SYSCALLS = {
    "io_uring_setup": (425, [8, "params"]),
    "userfaultfd": (323, [1]),  # UFFD_USER_MODE_ONLY: allowed to unprivileged users since 5.11
    "keyctl": (250, [0, -3, 1]),  # KEYCTL_GET_KEYRING_ID of the session keyring, creating it
    "add_key": (248, ["b'user'", "b'planted'", "b'x'", 1, -3]),  # into the session keyring
    "request_key": (249, ["b'user'", "b'planted'", 0, -3]),
    "bpf": (321, [0, 0, 0]),
    "perf_event_open": (298, ["attr", 0, -1, -1, 0]),
    "ptrace": (101, [0, 0, 0, 0]),  # PTRACE_TRACEME
    "mount": (165, [1, "b'/tmp'", 1, 0, 0]),  # bad pointers: EFAULT before the capability check
    "setns": (308, [0, 0]),
    "unshare": (272, [0x10000000]),  # CLONE_NEWUSER
    "process_vm_readv": (310, [1, 0, 0, 0, 0, 0]),
    "pidfd_getfd": (438, [0, 0, 0]),
    "personality": (135, [0x0040000]),  # ADDR_NO_RANDOMIZE
    "kexec_load": (246, [0, 0, 0, 0]),
    "open_by_handle_at": (304, [0, 0, 0]),
    "clone3": (435, [0, 0]),
}

# Calls gVisor's kernel does not implement at all (its OCI seccomp cannot name them either).
GVISOR_LACKS = {"pidfd_getfd"}

PROBE = """
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
attr = ctypes.create_string_buffer(128)
ctypes.c_uint32.from_buffer(attr, 4).value = 128  # perf_event_attr.size; type 0 = hardware
results = {}
for name, (nr, args) in %s.items():
    values = [ctypes.c_long(a) if isinstance(a, int) else (eval(a) if a in ("params", "attr") else ctypes.c_char_p(eval(a))) for a in args]
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *values)
    results[name] = "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print(json.dumps(results))
"""
