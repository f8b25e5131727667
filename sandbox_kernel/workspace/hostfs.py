"""The host's side of the notebook's directory, touched without trusting any name in it.

Every path is walked from an open directory descriptor one component at a time, with
``O_NOFOLLOW`` (a symlink anywhere — planted by the sandbox in its copy, or already in the
directory — is refused, never followed), so nothing can lead outside the directory.
Regular files only: a FIFO, a device or a socket is refused before it is read (opened with
``O_NONBLOCK``, checked with ``fstat`` on the descriptor that is then read, so a file swapped for
a symlink or a FIFO after a check is caught by the open itself). A file is written to a new name
(``O_CREAT | O_EXCL``) and renamed over the old one, so an existing file's inode — perhaps a
hard link to a file elsewhere — is never written into, and a reader never sees half a file.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..errors import WorkspaceError
from . import names

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


def open_root(path: str) -> int:
    """A descriptor of the directory ``path`` itself (reached the usual way: the user chose it)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _refusal(parts: tuple[str, ...], why: str) -> WorkspaceError:
    return WorkspaceError(f"{names.shown(names.join(parts))} was not copied: {why}.")


def open_dir(root_fd: int, parts: tuple[str, ...], create: bool = False, mode: int = 0o755) -> int:
    """The directory ``parts`` below ``root_fd`` (``create``: made when missing); every component
    a real directory, never a symlink."""
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refusal(parts[: i + 1], "it is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(root_fd: int, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
    """A regular file below ``root_fd``, open for reading, and its ``fstat``."""
    dir_fd = open_dir(root_fd, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], _READ, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refusal(parts, "it is a symlink") from None
            if exc.errno == errno.ENXIO:
                raise _refusal(parts, "it is a socket, not a regular file") from None
            raise
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device or special file"
        )
        raise _refusal(parts, f"it is {kind}, not a regular file")
    return fd, st


def read_chunks(fd: int, limit: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """At most ``limit`` bytes of ``fd``; closes it. More than ``limit`` raises."""
    try:
        total = 0
        while True:
            data = os.read(fd, min(chunk, limit + 1 - total))
            if not data:
                return
            total += len(data)
            if total > limit:
                raise WorkspaceError(f"a file grew past the limit of {limit:,} bytes while it was read.")
            yield data
    finally:
        os.close(fd)


def refuse_protected(parts: tuple[str, ...]) -> None:
    """Raise the refusal of a name the sandbox may never write back (:func:`names.protected`)."""
    why = names.protected(parts)
    if why:
        raise _refusal(parts, why)


class HostWriter:
    """One file written below ``root_fd``, chunk by chunk: a new file, renamed over ``parts`` by
    :meth:`commit` (see the module's docstring). Refuses a protected name
    (:func:`names.protected`, unless ``protect`` is False: a copy the kernel makes for the
    sandbox) and an existing entry that is not a regular file (a symlink, a directory, a FIFO)."""

    def __init__(
        self, root_fd: int, parts: tuple[str, ...], limit: int, mode: int = 0o644, protect: bool = True
    ) -> None:
        if protect:
            refuse_protected(parts)
        self.parts, self.limit, self.size = parts, limit, 0
        self._dir = open_dir(root_fd, parts[:-1], create=True)
        self._fd = -1
        try:
            try:
                old = os.stat(parts[-1], dir_fd=self._dir, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None and not stat.S_ISREG(old.st_mode):
                kind = (
                    "a symlink"
                    if stat.S_ISLNK(old.st_mode)
                    else "a directory"
                    if stat.S_ISDIR(old.st_mode)
                    else "a special file"
                )
                raise _refusal(parts, f"{kind} of that name is in the notebook's directory")
            self._tmp = f".{parts[-1][:200]}.sandbox-{secrets.token_hex(6)}"
            self._fd = os.open(
                self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self._dir
            )
        except BaseException:
            os.close(self._dir)
            raise

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.abort()
            raise _refusal(self.parts, f"it is larger than the limit of {self.limit:,} bytes")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> int:
        try:
            os.close(self._fd)
            self._fd = -1
            os.rename(self._tmp, self.parts[-1], src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except BaseException:
            self.abort()
            raise
        os.close(self._dir)
        self._dir = -1
        return self.size

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir >= 0:
            try:
                os.unlink(self._tmp, dir_fd=self._dir)
            except OSError:
                pass
            os.close(self._dir)
            self._dir = -1


def write_file(
    root_fd: int, parts: tuple[str, ...], chunks: Iterable[bytes], limit: int, mode: int = 0o644, protect: bool = True
) -> int:
    """Write ``parts`` below ``root_fd`` from ``chunks`` (at most ``limit`` bytes) with a
    :class:`HostWriter`; return its size."""
    writer = HostWriter(root_fd, parts, limit, mode, protect)
    try:
        for data in chunks:
            writer.write(data)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


@dataclass(frozen=True)
class Entry:
    """A regular file found by :func:`tree`."""

    parts: tuple[str, ...]
    size: int
    stamp: tuple[int, int, int]
    """(size, mtime_ns, inode): changes when the file is written."""


def tree(
    root_fd: int, max_files: int, max_entries: int | None = None, skip_hidden: bool = False
) -> tuple[list[Entry], list[str]]:
    """Every regular file below ``root_fd`` (symlinks and special files skipped, never followed),
    and a line for each name skipped; at most ``max_files`` files (then a line says so) and
    ``max_entries`` directory entries looked at (default 10 × ``max_files``). ``skip_hidden``:
    names starting with a dot are passed over silently (``.git``, ``.ipynb_checkpoints``, ``.env``)."""
    budget = max_entries if max_entries is not None else 10 * max_files + 100
    files: list[Entry] = []
    skipped: list[str] = []
    stack: list[tuple[str, ...]] = [()]
    while stack:
        prefix = stack.pop()
        try:
            fd = open_dir(root_fd, prefix)
        except (OSError, WorkspaceError) as exc:
            skipped.append(f"{names.shown(names.join(prefix))}: {exc}")
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    budget -= 1
                    if budget < 0:
                        skipped.append(
                            f"more than {max_entries or 10 * max_files + 100:,} names: the rest were not looked at"
                        )
                        return files, skipped
                    parts = (*prefix, entry.name)
                    if skip_hidden and entry.name.startswith("."):
                        continue
                    try:
                        names.split(names.join(parts))
                    except names.NameError_ as exc:
                        skipped.append(str(exc))
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone since it was listed
                    if stat.S_ISDIR(st.st_mode):
                        if len(parts) < names.MAX_DEPTH:
                            stack.append(parts)
                    elif stat.S_ISREG(st.st_mode):
                        if len(files) >= max_files:
                            skipped.append(
                                f"more than {max_files:,} files (Sandbox.workspace_files): the rest were left out"
                            )
                            return files, skipped
                        files.append(Entry(parts, st.st_size, (st.st_size, st.st_mtime_ns, st.st_ino)))
                    else:
                        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                        skipped.append(f"{names.shown(names.join(parts))}: {kind}, left out")
        finally:
            os.close(fd)
    files.sort(key=lambda e: e.parts)
    return files, skipped
