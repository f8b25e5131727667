"""A host uid of its own for every local sandbox, when the kernel runs as root.

Sandboxes that share a uid share everything the kernel accounts per uid (inotify instances,
key quotas, RLIMIT_NPROC) and may signal or trace each other's processes. So each sandbox
leases a uid from ``LocalSandbox.uid_range``, like systemd's DynamicUser:

- the lease is an exclusive ``flock`` on ``/run/sandbox-kernel/uids/<uid>``, held by the kernel
  process for as long as the sandbox lives. Concurrent kernels never get the same uid, and the
  lock of a kernel that dies (even by SIGKILL) is released by the host kernel itself, so a dead
  kernel's uids are reclaimed without any sweep; the file's content (the owner's pid) is only
  for people looking;
- a uid is skipped while any process on the host still runs with it (a dead kernel's sandbox
  that is still being torn down), while it has a passwd or group entry, and when it lies in a
  range of ``/etc/subuid`` or ``/etc/subgid`` (rootless containers' uids).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR = Path("/run/sandbox-kernel/uids")


def parse_range(text: str) -> tuple[int, int]:
    """'FIRST-LAST' (inclusive) as a pair; ValueError when malformed."""
    first, sep, last = text.strip().partition("-")
    try:
        lo, hi = int(first), int(last)
    except ValueError:
        raise ValueError(f"uid range {text!r} is not FIRST-LAST, e.g. '1879048192-1879113727'") from None
    if not sep or lo < 1000 or hi < lo or hi >= 2**31 - 1 or lo <= 65534 <= hi:
        raise ValueError(
            f"uid range {text!r} must be FIRST-LAST with 1000 <= FIRST <= LAST < 2^31-1, without 65534 (nobody)"
        )
    return lo, hi


@dataclass
class UidLease:
    uid: int
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # drops the flock


def _subid_ranges() -> list[tuple[int, int]]:
    ranges = []
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(name).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                start, count = int(parts[1]), int(parts[2])
                ranges.append((start, start + count - 1))
    return ranges


def uids_in_use() -> set[int]:
    """Every real, effective, saved and file-system uid of a process on this host."""
    used: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        used.update(int(x) for x in line.split()[1:])
                        break
        except OSError:
            continue
    return used


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def allocate(first: int, last: int, lock_dir: Path = LOCK_DIR) -> UidLease:
    """Lease the lowest free uid of [first, last]; OSError when every one is taken."""
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    busy = uids_in_use()
    subids = _subid_ranges()
    for uid in range(first, last + 1):
        if uid in busy or any(lo <= uid <= hi for lo, hi in subids) or _has_account(uid):
            continue
        fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue
            raise
        # The process scan above may predate the previous holder's last moments: check again
        # now that no one else can take this uid.
        if uid in uids_in_use():
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return UidLease(uid, fd)
    raise OSError(errno.EUSERS, f"every uid of {first}-{last} is in use by another sandbox or process")
