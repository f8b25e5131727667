"""Files through the agent protocol: ``%sandbox upload`` / ``%sandbox download`` on every
backend, and the copy of the notebook's directory a Kubernetes sandbox gets at start.

The agent answers ``file_write`` / ``file_read`` (``agents/PROTOCOL.md``) in its supervisor, at
most :data:`CHUNK` bytes a request; up to :data:`WINDOW` requests are in flight at once, so a
copy does not wait a round trip per chunk. Host names are checked by :mod:`.names` both ways
(relative, inside the notebook's directory, no hidden files); host files are read and written by
:mod:`.hostfs` (no symlink followed). What comes from the sandbox is bounded before it is
written: the size it claims, the bytes it sends, ``Sandbox.workspace_limit`` and
``workspace_files`` per command.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..config import Limits
from ..errors import SandboxError, WorkspaceError
from . import hostfs, names

CHUNK = 512 * 1024
BASH_CHUNK = 32 * 1024
WINDOW = 16
REPLY_TIMEOUT = 60.0

Progress = Callable[[str, bool], None]
"""Told a line of progress (``final`` True for the last one) while a large file moves."""


class FileChannel(Protocol):
    """What a session offers for files (AgentSession.send_file_request)."""

    async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Any]": ...


@dataclass
class Moved:
    files: int = 0
    bytes: int = 0

    def line(self, verb: str) -> str:
        return f"{verb} {self.files} file{'s' if self.files != 1 else ''} ({format_bytes(self.bytes)})"


def format_bytes(n: int) -> str:
    """``52428800`` -> ``50.0 MiB`` (progress and summaries; limits keep their own spelling)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _bad(name: str, exc: names.NameError_) -> WorkspaceError:
    return WorkspaceError(f"{names.shown(name)} was not moved: {exc}.")


async def _reply(future: "asyncio.Future[Any]") -> dict[str, Any]:
    body: dict[str, Any] = (await asyncio.wait_for(future, REPLY_TIMEOUT)).body
    return body


class Transfer:
    """Moves files between the notebook's directory (``host_dir``) and one sandbox."""

    def __init__(
        self,
        channel: FileChannel,
        host_dir: str,
        limits: Limits,
        progress: Progress | None = None,
        sandbox_dir: str = "the sandbox",
        budget: int | None = None,
    ) -> None:
        self.channel, self.host_dir, self.limits = channel, host_dir, limits
        self.progress = progress
        self.sandbox_dir = sandbox_dir
        self.budget = limits.workspace_bytes if budget is None else min(budget, limits.workspace_bytes)
        self.files_left = limits.workspace_files
        self._pending: collections.deque[tuple[str, asyncio.Future[Any]]] = collections.deque()
        # The Bash agent parses JSON with bash's own string operations, which copy the rest of
        # the message at every step: small chunks keep that cheap.
        bash = getattr(getattr(channel, "language", None), "name", "") == "bash"
        self.chunk, self.window = (BASH_CHUNK, 4) if bash else (CHUNK, WINDOW)

    # -- into the sandbox ----------------------------------------------------------------------

    async def upload(self, args: list[str]) -> str:
        """``%sandbox upload NAME…``: files or directories of the notebook's directory, to the same
        relative names in the sandbox's working directory."""
        why = names.directory_refusal(self.host_dir)
        if why:
            raise WorkspaceError(f"Nothing was uploaded: {why}.")
        moved = Moved()
        root = hostfs.open_root(self.host_dir)
        try:
            for arg in args:
                try:
                    parts = names.split(arg)
                except names.NameError_ as exc:
                    raise _bad(arg, exc) from None
                hidden = next((p for p in parts if p.startswith(".")), None)
                if hidden:
                    raise WorkspaceError(
                        f"{names.shown(arg)} was not uploaded: {names.shown(hidden)} is hidden (secrets live there)."
                    )
                try:
                    sub = hostfs.open_dir(root, parts)
                except (NotADirectoryError, WorkspaceError, FileNotFoundError):
                    await self._put_file(root, parts, moved)
                    continue
                try:
                    entries, skipped = hostfs.tree(sub, self.files_left, skip_hidden=True)
                finally:
                    os.close(sub)
                for entry in entries:
                    await self._put_file(root, (*parts, *entry.parts), moved)
            await self._drain()
        finally:
            os.close(root)
            await self._drain_quietly()
        return moved.line("uploaded") + f" to {self.sandbox_dir}"

    async def copy_in(self) -> tuple[Moved, list[str]]:
        """The whole notebook's directory into the sandbox's working directory (Kubernetes, at
        start): what moved, and a line for each file left out."""
        moved, notices = Moved(), list[str]()
        why = names.directory_refusal(self.host_dir)
        if why:
            return moved, [
                f"{why}: it is not copied into the sandbox. Keep the notebook and its files in a folder of their own."
            ]
        limit = self.budget
        root = hostfs.open_root(self.host_dir)
        try:
            entries, notices = hostfs.tree(root, self.limits.workspace_files, skip_hidden=True)
            for entry in entries:
                if entry.size > self.budget:
                    notices.append(
                        f"{names.shown(names.join(entry.parts))} ({format_bytes(entry.size)}): the copy would hold "
                        f"more than {format_bytes(limit)} (Sandbox.workspace_limit; on Kubernetes also 3/4 of Sandbox.scratch_size), so it was left out"
                    )
                    continue
                try:
                    await self._put_file(root, entry.parts, moved)
                except WorkspaceError as exc:
                    notices.append(str(exc))
            while self._pending:
                try:
                    await self._check_oldest()
                except WorkspaceError as exc:
                    notices.append(str(exc))
        finally:
            os.close(root)
            await self._drain_quietly()
        return moved, notices

    async def _put_file(self, root: int, parts: tuple[str, ...], moved: Moved) -> None:
        name = names.join(parts)
        try:
            fd, st = hostfs.open_file(root, parts)
        except FileNotFoundError:
            raise WorkspaceError(
                f"{names.shown(name)} was not uploaded: there is no such file in the notebook's directory."
            ) from None
        if self.files_left <= 0 or st.st_size > self.budget:
            os.close(fd)
            raise WorkspaceError(
                f"{names.shown(name)} was not uploaded: one command moves at most "
                f"{format_bytes(self.limits.workspace_bytes)} in {self.limits.workspace_files:,} files "
                "(Sandbox.workspace_limit, workspace_files)."
            )
        offset, meter = 0, _Meter(name, st.st_size, self.progress)
        try:
            chunks = hostfs.read_chunks(fd, self.budget, self.chunk)
            fd = -1  # read_chunks closes it
            for data in chunks:
                await self._queue(
                    name,
                    await self._send("file_write", name, offset, data=data),  # bytes: the session encodes them
                )
                offset += len(data)
                meter.tell(offset)
            if offset == 0:
                await self._queue(name, await self._send("file_write", name, 0, data=b""))
        finally:
            if fd >= 0:
                os.close(fd)
        meter.tell(offset, final=True)
        self.budget -= offset
        self.files_left -= 1
        moved.files += 1
        moved.bytes += offset

    async def _queue(self, name: str, future: "asyncio.Future[Any]") -> None:
        """One more write in flight (across files: a directory of small files is not a round
        trip per file); the oldest is checked once :data:`WINDOW` are."""
        self._pending.append((name, future))
        while len(self._pending) >= self.window:
            await self._check_oldest()

    async def _check_oldest(self) -> None:
        name, future = self._pending.popleft()
        self._check_write(name, await _reply(future))

    async def _drain_quietly(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    async def _drain(self) -> None:
        """Every write checked (raises for the first that failed); then none is in flight."""
        try:
            while self._pending:
                await self._check_oldest()
        finally:
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()

    def _check_write(self, name: str, reply: dict[str, Any]) -> None:
        error = reply.get("error")
        if error:
            if "Read-only file system" in error:
                raise WorkspaceError(
                    f"{names.shown(name)} was not uploaded: the sandbox's working directory is the notebook's "
                    "directory itself, read-only (Sandbox.workspace = 'read-only'): the file is already there."
                )
            raise WorkspaceError(f"{names.shown(name)} could not be written in the sandbox: {error}.")

    async def _send(self, kind: str, path: str, offset: int, **fields: Any) -> "asyncio.Future[Any]":
        return await self.channel.send_file_request({"type": kind, "path": path, "offset": offset, **fields})

    # -- out of the sandbox --------------------------------------------------------------------

    async def download(self, args: list[str]) -> str:
        """``%sandbox download NAME…``: files of the sandbox (relative to its working directory, or
        absolute: then saved under their last name) into the notebook's directory, as the kernel."""
        moved = Moved()
        root = hostfs.open_root(self.host_dir)
        try:
            for arg in args:
                inside = posixpath.normpath(arg) if arg.startswith("/") else arg
                try:
                    parts = names.split(posixpath.basename(inside) if arg.startswith("/") else arg)
                except names.NameError_ as exc:
                    raise _bad(arg, exc) from None
                await self._get_file(root, inside, parts, moved)
        finally:
            os.close(root)
        return moved.line("downloaded") + " to the notebook's directory"

    async def first_read(self, parts: tuple[str, ...]) -> "asyncio.Future[Any]":
        """The ``file_read`` of a file's first chunk, sent ahead (:meth:`fetch` takes its reply):
        files fetched one after the other do not wait a round trip each."""
        return await self._send("file_read", names.join(parts), 0, length=self.chunk)

    async def fetch(
        self, root: int, parts: tuple[str, ...], moved: Moved, first: "asyncio.Future[Any] | None" = None
    ) -> bool:
        """One file of the sandbox's working directory to the same name in the notebook's
        directory (the write-back, writeback_remote.py); False when it is gone in the sandbox."""
        return await self._get_file(root, names.join(parts), parts, moved, missing_ok=True, first=first)

    async def _get_file(
        self,
        root: int,
        inside: str,
        parts: tuple[str, ...],
        moved: Moved,
        missing_ok: bool = False,
        first: "asyncio.Future[Any] | None" = None,
    ) -> bool:
        name = names.join(parts)
        if self.files_left <= 0:
            raise WorkspaceError(
                f"{names.shown(name)} was not downloaded: one command moves at most "
                f"{self.limits.workspace_files:,} files (Sandbox.workspace_files)."
            )
        request = first if first is not None else await self._send("file_read", inside, 0, length=self.chunk)
        first_reply = await _reply(request)
        if missing_ok and str(first_reply.get("error")).lower() == "no such file or directory":  # Node: lower case
            return False
        if first_reply.get("error"):
            raise WorkspaceError(f"{names.shown(inside)} could not be read in the sandbox: {first_reply['error']}.")
        size = first_reply.get("size")
        if not isinstance(size, int) or size < 0:
            raise WorkspaceError(f"{names.shown(inside)}: the sandbox did not say how large it is.")
        if size > self.budget:
            raise WorkspaceError(
                f"{names.shown(inside)} was not downloaded: it is {format_bytes(size)}, more than "
                f"{format_bytes(self.budget)} (Sandbox.workspace_limit)."
            )
        writer = hostfs.HostWriter(root, parts, min(size, self.budget))
        meter = _Meter(name, size, self.progress)
        pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        try:
            done = self._take(writer, first_reply, 0, size)
            asked = done
            while done < size:
                while asked < size and len(pending) < self.window:
                    pending.append(await self._send("file_read", inside, asked, length=self.chunk))
                    asked += self.chunk
                reply = await _reply(pending.popleft())
                if reply.get("error"):
                    raise WorkspaceError(f"{names.shown(inside)} could not be read in the sandbox: {reply['error']}.")
                got = self._take(writer, reply, done, size)
                if got == 0:
                    break  # it shrank while it was read: keep what there was
                done += got
                meter.tell(done)
            written = writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            for future in pending:
                future.cancel()
        meter.tell(written, final=True)
        self.budget -= written
        self.files_left -= 1
        moved.files += 1
        moved.bytes += written
        return True

    def _take(self, writer: hostfs.HostWriter, reply: dict[str, Any], offset: int, size: int) -> int:
        try:
            data = binascii.a2b_base64(reply.get("data") or "")  # not strict: 3x faster, and bounded below
        except (binascii.Error, ValueError):
            raise WorkspaceError("the sandbox sent a chunk that is not base64.") from None
        data = data[: max(0, min(self.chunk, size - offset))]  # never more than it announced
        writer.write(data)
        return len(data)


class _Meter:
    """Progress of one large file: a line at most every 0.25 s (files under 1 MiB: none)."""

    def __init__(self, name: str, total: int, progress: Progress | None) -> None:
        self.name, self.total = name, total
        self.progress = progress if total >= 1 << 20 else None
        self.last = 0.0
        self.started = time.monotonic()

    def tell(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not final and now - self.last < 0.25):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6) / 2**20
        percent = 100 * done // self.total if self.total else 100
        self.progress(
            f"{self.name}: {format_bytes(done)} of {format_bytes(self.total)} ({percent}%, {rate:.1f} MiB/s)", final
        )


async def copy_notebook_dir(channel: FileChannel, limits: Limits, where: str) -> tuple[str | None, str | None]:
    """A new sandbox's copy of the notebook's directory (the kernel's working directory) into its
    working directory ``where`` (Kubernetes: its HOME, so at most 3/4 of Sandbox.scratch_size):
    a line for the events, and a notice for the user when files were left out."""
    if limits.workspace == "hidden":
        return None, None
    started = time.monotonic()
    transfer = Transfer(channel, os.getcwd(), limits, budget=limits.scratch_bytes * 3 // 4)
    try:
        moved, left_out = await transfer.copy_in()
    except (SandboxError, OSError) as exc:
        moved, left_out = None, [f"the copy stopped: {exc}"]
    event = f"workspace: {moved.line('copied')} into {where} in {time.monotonic() - started:.2f} s" if moved else None
    if not left_out:
        return event, None
    shown = "; ".join(left_out[:5]) + (f"; and {len(left_out) - 5} more" if len(left_out) > 5 else "")
    return event, f"Not copied into the sandbox's working directory: {shown}"
