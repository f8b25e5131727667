"""The local backend's read-write workspace: a private copy, written back after each cell.

The sandbox never writes into the notebook's directory itself. At every sandbox start the
kernel copies the directory (regular files only, hidden ones left out, up to ``Sandbox.workspace_limit`` and
``workspace_files``) into a fresh private directory, owned by the sandbox's own uid, which the
sandbox sees as its working directory. After each cell the kernel looks for files that changed
there and writes each back with :mod:`.hostfs`'s checks, as the kernel's own uid: a symlink or
special file the sandbox made is left out (never followed), a name outside the directory is
impossible (the walk starts at the copy), notebooks, hidden files and Jupyter configuration files
are refused (:func:`.names.protected`), and each write-back is bounded in bytes and files. Files
deleted in the sandbox stay on the host (deleting the user's files is never done for the sandbox).

The copy lives on ``/dev/shm`` when it is a tmpfs: what the sandbox writes there is memory
charged to the sandbox's own cgroup, so it is bounded by ``Sandbox.memory_limit`` and cannot fill
the host's disk; it is removed when the sandbox goes away.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from ..errors import WorkspaceError
from ..quantity import format_bytes
from . import hostfs, names

SHM = "/dev/shm"
PREFIX = "sandbox-workspace-"
"""Copies are named ``sandbox-workspace-<kernel pid>-…``: a SIGKILLed kernel's are swept."""


def sweep_stale(base: str) -> None:
    """Remove the copies of kernels that are gone (killed before they could clean up)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(PREFIX) :].split("-", 1)[0]
        if not entry.name.startswith(PREFIX) or not pid.isdigit() or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass


def _base() -> str:
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            if any(line.split()[1:3] == [SHM, "tmpfs"] for line in f if len(line.split()) > 2):
                return SHM
    except OSError:
        pass
    return tempfile.gettempdir()


@dataclass
class Copied:
    """What :func:`copy_tree` did."""

    files: int = 0
    bytes: int = 0
    notices: list[str] = field(default_factory=list)


def copy_tree(src_fd: int, dst_fd: int, limit: int, max_files: int, uid: int | None = None) -> Copied:
    """Copy the regular files below ``src_fd`` into ``dst_fd`` (a directory nobody else writes
    to yet), at most ``limit`` bytes and ``max_files`` files; chowned to ``uid`` when given."""
    done = Copied()
    entries, skipped = hostfs.tree(src_fd, max_files, skip_hidden=True)
    done.notices += skipped
    for entry in entries:
        if done.bytes + entry.size > limit:
            done.notices.append(
                f"{names.shown(names.join(entry.parts))} ({format_bytes(entry.size)}): the copy would hold more than "
                f"{format_bytes(limit)} (Sandbox.workspace_limit), so it was left out"
            )
            continue
        try:
            fd, _ = hostfs.open_file(src_fd, entry.parts)
            done.bytes += hostfs.write_file(
                dst_fd, entry.parts, hostfs.read_chunks(fd, limit - done.bytes), limit, protect=False
            )
            done.files += 1
        except (OSError, WorkspaceError) as exc:
            done.notices.append(f"{names.shown(names.join(entry.parts))}: {exc}")
    if uid is not None:
        _chown_tree(dst_fd, uid)
    return done


def _chown_tree(fd: int, uid: int) -> None:
    """Give the copy (made by the kernel, not yet seen by any sandbox) to the sandbox's uid."""
    os.chown(fd, uid, uid)
    with os.scandir(fd) as entries:
        for entry in entries:
            os.chown(entry.name, uid, uid, dir_fd=fd, follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    _chown_tree(sub, uid)
                finally:
                    os.close(sub)


def over_limit(parts: tuple[str, ...], limit: int, max_files: int) -> WorkspaceError:
    """The refusal of a file past what one cell may write back (here and on Kubernetes)."""
    return WorkspaceError(
        f"{names.shown(names.join(parts))} was not written back: one cell may write back "
        f"at most {format_bytes(limit)} in {max_files:,} files (Sandbox.workspace_limit, workspace_files)."
    )


class Staging:
    """The private copy of one kernel's notebook directory (see the module's docstring)."""

    def __init__(self, host_dir: str, limit: int, max_files: int, read_only: bool = False) -> None:
        self.host_dir = host_dir
        self.read_only = read_only
        """A copy the sandbox only reads (it is bound read-only): nothing is written back."""
        self.limit = limit
        self.max_files = max_files
        self.path: str | None = None
        self._host_fd = hostfs.open_root(host_dir)
        self._fd: int | None = None
        self._seen: dict[tuple[str, ...], tuple[int, int, int]] = {}
        self._told: set[str] = set()

    def prepare(self, uid: int | None) -> list[str]:
        """A fresh copy for a new sandbox (the last one's is removed); what was left out."""
        self.discard()
        sweep_stale(_base())
        self.path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=_base())
        if self.read_only:
            os.chmod(self.path, 0o755)  # the kernel's, readable by the sandbox's uid
        self._fd = hostfs.open_root(self.path)
        copied = copy_tree(self._host_fd, self._fd, self.limit, self.max_files, uid)
        entries, _ = hostfs.tree(self._fd, self.max_files)
        self._seen = {e.parts: e.stamp for e in entries}
        self._told = set(copied.notices)
        return copied.notices

    def write_back(self) -> list[str]:
        """Write the files that changed in the copy back to the notebook's directory; a line
        for each refusal (each told once)."""
        if self._fd is None or self.read_only:
            return []
        entries, skipped = hostfs.tree(self._fd, self.max_files)
        notices = [f"not written back: {line}" for line in skipped]
        budget, files = self.limit, self.max_files
        for entry in entries:
            if self._seen.get(entry.parts) == entry.stamp:
                continue
            try:
                fd, st = hostfs.open_file(self._fd, entry.parts)
                self._seen[entry.parts] = (st.st_size, st.st_mtime_ns, st.st_ino)
                if files <= 0 or st.st_size > budget:
                    os.close(fd)
                    raise over_limit(entry.parts, self.limit, self.max_files)
                budget -= hostfs.write_file(self._host_fd, entry.parts, hostfs.read_chunks(fd, budget), budget)
                files -= 1
            except FileNotFoundError:
                continue  # gone since it was listed
            except (OSError, WorkspaceError) as exc:
                notices.append(
                    str(exc)
                    if isinstance(exc, WorkspaceError)
                    else f"{names.shown(names.join(entry.parts))} was not written back: {exc}"
                )
        fresh = [n for n in notices if n not in self._told]
        self._told.update(fresh)
        return fresh

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        self.discard()
        os.close(self._host_fd)
