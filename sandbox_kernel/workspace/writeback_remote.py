"""The Kubernetes backend's read-write workspace: the files a cell wrote in the pod, written back.

A pod cannot see the kernel's disk: its working directory got a copy of the notebook's directory
at start (:func:`.transfer.copy_notebook_dir`). With ``Sandbox.workspace = 'read-write'`` the
kernel then asks the agent for a listing of that directory (``file_list``, PROTOCOL.md): once
after the copy (what the sandbox starts with) and after each cell. The files that are new or
changed since the last listing are fetched with ``file_read`` (:class:`.transfer.Transfer`) and
written into the notebook's directory with :mod:`.hostfs`'s checks, as the kernel's own uid —
the same checks and messages as the local backend's write-back (:mod:`.staging`): symlinks and
special files are left out (the agent reports them, never follows them; the host's side refuses
a symlink of that name), names are checked again here (:func:`.names.split`: nothing outside
the directory), notebooks, hidden files and Jupyter configuration files are refused
(:func:`.names.protected`), and one cell writes back at most ``Sandbox.workspace_limit`` bytes
in ``workspace_files`` files. Files deleted in the sandbox stay on the host.

Everything in a listing comes from the sandbox and is checked before use (:func:`parse_listing`).
The write-back after one cell is bounded in time too (:data:`WRITE_BACK_SECONDS`): what it did
not reach is written back after the next cell.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Limits
from ..errors import SandboxError, WorkspaceError
from . import hostfs, names
from .staging import over_limit
from .transfer import FileChannel, Moved, Transfer

LIST_TIMEOUT = 20.0
"""Seconds the agent has to answer a ``file_list``."""

WRITE_BACK_SECONDS = 30.0
"""Seconds one cell's write-back may take; files not reached by then follow after the next cell."""

MAX_STAMP = 100
MAX_SKIPPED = 100

Stamp = tuple[int, str]
"""A file's (size, stamp) as the agent listed it: changes when the file is written."""


@dataclass
class Listing:
    """A ``file_list`` answer, checked: the files by name, and a line for each name left out."""

    files: dict[tuple[str, ...], Stamp] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def parse_listing(body: dict[str, Any], max_files: int) -> Listing:
    """The agent's ``file_reply`` to ``file_list``, trusting none of it: every name is checked
    with :func:`.names.split`, every size and stamp must be what PROTOCOL.md says; at most
    ``max_files`` files are kept. Raises :class:`WorkspaceError` for a reply that is no listing."""
    if body.get("error"):
        raise WorkspaceError(f"the sandbox could not list its files: {str(body['error'])[:200]}.")
    files, skipped = body.get("files"), body.get("skipped", [])
    if not isinstance(files, list) or not isinstance(skipped, list):
        raise WorkspaceError("the sandbox's list of its files is malformed.")
    listing = Listing()
    for item in files:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and _is_count(item[1])
            and isinstance(item[2], str)
            and 0 < len(item[2]) <= MAX_STAMP
        ):
            listing.notices.append("the sandbox listed a file malformed: left out")
            continue
        try:
            parts = names.split(item[0])
        except names.NameError_ as exc:
            listing.notices.append(str(exc))
            continue
        if parts in listing.files:
            continue  # listed twice: the first counts
        if len(listing.files) >= max_files:
            listing.notices.append(f"more than {max_files:,} files (Sandbox.workspace_files): the rest were left out")
            break
        listing.files[parts] = (item[1], item[2])
    for item in skipped[:MAX_SKIPPED]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            continue
        shown = names.shown(item[0])
        if item[1] == "symlink":
            listing.notices.append(f"{shown}: a symlink, left out")
        elif item[1] == "name":
            listing.notices.append(f"{shown} is not valid UTF-8")
        else:
            listing.notices.append(f"{shown}: not a regular file, left out")
    truncated = body.get("truncated")
    if truncated == "files":
        listing.notices.append(f"more than {max_files:,} files (Sandbox.workspace_files): the rest were left out")
    elif truncated == "entries":
        listing.notices.append(f"more than {10 * max_files + 100:,} names: the rest were not looked at")
    elif truncated:
        listing.notices.append("more names than one listing of the sandbox holds: the rest were not looked at")
    return listing


def changed(seen: dict[tuple[str, ...], Stamp], listing: Listing) -> list[tuple[tuple[str, ...], Stamp]]:
    """The files of ``listing`` that are new or differ from ``seen``, in name order."""
    return sorted((parts, stamp) for parts, stamp in listing.files.items() if seen.get(parts) != stamp)


class RemoteWriteBack:
    """One sandbox's write-back (see the module's docstring); made after its copy-in."""

    def __init__(self, channel: FileChannel, host_dir: str, limits: Limits) -> None:
        self.channel, self.host_dir, self.limits = channel, host_dir, limits
        self._seen: dict[tuple[str, ...], Stamp] = {}
        self._told: set[str] = set()

    async def _list(self) -> Listing:
        files = self.limits.workspace_files
        future = await self.channel.send_file_request(
            {"type": "file_list", "max_files": files, "max_entries": 10 * files + 100}
        )
        reply = await asyncio.wait_for(future, LIST_TIMEOUT)
        return parse_listing(reply.body, files)

    async def baseline(self) -> str | None:
        """What the sandbox starts with (after the copy-in): nothing of it is written back. A
        notice when the agent cannot list its files (then nothing is written back at all)."""
        try:
            listing = await self._list()
        except (asyncio.TimeoutError, SandboxError) as exc:
            why = str(exc) if isinstance(exc, SandboxError) else f"it did not answer within {LIST_TIMEOUT:g} s"
            return f"Files the cells write are not written back to the notebook's directory: {why}"
        self._seen = dict(listing.files)
        self._told = set(listing.notices)
        return None

    async def after_cell(self) -> list[str]:
        """Write the files that changed in the sandbox since the last listing back to the
        notebook's directory; a line for each refusal (each told once)."""
        started = time.monotonic()
        try:
            listing = await self._list()
        except asyncio.TimeoutError:
            return self._fresh([f"not written back: the sandbox did not list its files within {LIST_TIMEOUT:g} s"])
        except SandboxError as exc:
            return self._fresh([f"not written back: {exc}"])
        notices = [f"not written back: {line}" for line in listing.notices]
        try:
            root = hostfs.open_root(self.host_dir)
        except OSError as exc:
            return self._fresh([*notices, f"not written back: the notebook's directory cannot be opened ({exc})"])
        try:
            await self._write(changed(self._seen, listing), root, started, notices)
        except (asyncio.TimeoutError, SandboxError) as exc:
            notices.append(f"not written back: the sandbox stopped answering ({exc or 'no answer'})")
        finally:
            os.close(root)
        return self._fresh(notices)

    async def _write(
        self, todo: list[tuple[tuple[str, ...], Stamp]], root: int, started: float, notices: list[str]
    ) -> None:
        """Fetch ``todo`` into ``root`` in order, the first reads of the next few sent ahead."""
        transfer = Transfer(self.channel, self.host_dir, self.limits)
        ahead: dict[int, asyncio.Future[Any]] = {}  # first reads sent before their file's turn
        try:
            for i, (parts, stamp) in enumerate(todo):
                if time.monotonic() - started > WRITE_BACK_SECONDS:
                    notices.append(
                        f"not written back yet: the write-back after one cell stops after {WRITE_BACK_SECONDS:g} s; "
                        "the rest follows after the next cell"
                    )
                    return
                for j in range(i, min(i + transfer.window, len(todo))):
                    if j not in ahead and self._may_fetch(transfer, *todo[j]):
                        ahead[j] = await transfer.first_read(todo[j][0])
                self._seen[parts] = stamp
                try:
                    await self._fetch(transfer, root, parts, stamp[0], ahead.pop(i, None))
                except WorkspaceError as exc:
                    notices.append(str(exc))
                except OSError as exc:
                    notices.append(f"{names.shown(names.join(parts))} was not written back: {exc}")
        finally:
            for future in ahead.values():
                future.cancel()

    @staticmethod
    def _may_fetch(transfer: Transfer, parts: tuple[str, ...], stamp: Stamp) -> bool:
        """Whether :meth:`_fetch` would read the file (so its first read may be sent ahead)."""
        return transfer.files_left > 0 and stamp[0] <= transfer.budget and names.protected(parts) is None

    async def _fetch(
        self, transfer: Transfer, root: int, parts: tuple[str, ...], size: int, first: "asyncio.Future[Any] | None"
    ) -> None:
        try:
            if transfer.files_left <= 0 or size > transfer.budget:
                raise over_limit(parts, self.limits.workspace_bytes, self.limits.workspace_files)
            hostfs.refuse_protected(parts)  # before a byte is read
        except WorkspaceError:
            if first is not None:
                first.cancel()
            raise
        await transfer.fetch(root, parts, Moved(), first)

    def _fresh(self, notices: list[str]) -> list[str]:
        fresh = [n for n in dict.fromkeys(notices) if n not in self._told]
        self._told.update(fresh)
        return fresh


async def remote_write_back(channel: FileChannel, limits: Limits) -> tuple[RemoteWriteBack | None, str | None]:
    """After a Kubernetes sandbox's copy-in: its write-back in read-write mode (None otherwise,
    or when the notebook's directory is never shown to a sandbox), and a notice for the user."""
    host_dir = os.path.realpath(os.getcwd())
    if limits.workspace != "read-write" or names.directory_refusal(host_dir):
        return None, None
    write_back = RemoteWriteBack(channel, host_dir, limits)
    notice = await write_back.baseline()
    return (None if notice else write_back), notice
