"""The notebook's directory in a local sandbox (``Sandbox.workspace``), at :data:`~.bwrap.WORKSPACE`.

- ``read-only``: the directory itself, bind-mounted read-only at ``/workspace`` (staged like the
  environment when the kernel is root, so a notebook under a 0700 ``/root`` is reachable:
  environment.py). Nothing is copied; the sandbox reads the files as its own unprivileged uid.
  When that uid could not even list the directory (a root kernel, a directory without
  ``o+rx``, e.g. 0700), the sandbox gets a read-only copy instead (as ``read-write`` makes one,
  never written back).
- ``read-write``: a private copy (:mod:`sandbox_kernel.workspace.staging`) at ``/workspace``,
  owned by the sandbox's uid; the kernel writes changed files back after each cell. Under gVisor
  the copy is a tmpfs of gVisor's, filled and written back through the agent protocol as on
  Kubernetes (:mod:`sandbox_kernel.workspace.writeback_remote`).
- ``hidden``: nothing of it; the working directory is the sandbox's private HOME.

A directory that would show more than the notebook's own files is never shown: ``/``, a system
directory, or the kernel's home directory (or one above it), which holds ``~/.ssh``, cloud
credentials and Jupyter's own secrets. Then the sandbox works in its private HOME and the first
cell says why.
"""

from __future__ import annotations

import os

from ..config import Limits
from ..quantity import format_bytes
from ..workspace import names
from ..workspace.staging import Staging
from .bwrap import SANDBOX_HOME, WORKSPACE, WorkspaceMount


class LocalWorkspace:
    """What one local session shows of the notebook's directory (see the module's docstring)."""

    def __init__(self, limits: Limits, gvisor: bool, host_dir: str | None = None, other_uid: bool = False) -> None:
        self.host_dir = os.path.realpath(host_dir or os.getcwd())
        self.mode = limits.workspace
        self.notice: str | None = None
        """Told on the first cell's stderr (why the directory is not shown, what was left out)."""
        self.staging: Staging | None = None
        why = names.directory_refusal(self.host_dir) if self.mode != "hidden" else None
        if why:
            self.notice = (
                f"{why}: it is not shown in the sandbox, which works in its private HOME instead. "
                "Keep the notebook and its files in a folder of their own."
            )
            self.mode = "hidden"
        self.through_agent = self.mode == "read-write" and gvisor
        """Read-write under gVisor: a private tmpfs at /workspace that the kernel fills and writes
        back through the agent protocol, as on Kubernetes (rootless runsc cannot create host files
        of the sandbox's user, so no host copy can be bound writable)."""
        if self.mode == "read-write" and not gvisor:
            self.staging = Staging(self.host_dir, limits.workspace_bytes, limits.workspace_files)
        self.copied_read_only = (
            self.mode == "read-only" and other_uid and os.stat(self.host_dir).st_mode & 0o005 != 0o005
        )
        if self.copied_read_only:  # the sandbox's uid could not list it: a copy it can read
            self.staging = Staging(self.host_dir, limits.workspace_bytes, limits.workspace_files, read_only=True)
        self.limits = limits

    @property
    def cwd(self) -> str:
        return SANDBOX_HOME if self.mode == "hidden" else WORKSPACE

    @property
    def read_only_source(self) -> str | None:
        """The host directory bound read-only at /workspace (read-only mode: the directory, or its
        copy), else None."""
        if self.copied_read_only:
            return self.staging.path if self.staging else None
        return self.host_dir if self.mode == "read-only" else None

    def prepare(self, uid: int | None) -> WorkspaceMount | None:
        """Before a sandbox starts: the read-write copy, made afresh (blocking: run in an executor)."""
        if self.staging is None:
            return None
        left_out = self.staging.prepare(None if self.copied_read_only else uid)
        if left_out:
            shown = "; ".join(left_out[:5]) + (f"; and {len(left_out) - 5} more" if len(left_out) > 5 else "")
            self.notice = f"Not copied into the sandbox's workspace: {shown}"
        assert self.staging.path is not None
        if self.copied_read_only:
            return None  # bound read-only through the mount plan (read_only_source)
        return WorkspaceMount(self.staging.path, writable=True)

    def hint(self, evalue: str) -> str | None:
        """The line added to a cell's "Read-only file system" error in read-only mode."""
        if self.mode != "read-only" or "Read-only file system" not in evalue:
            return None
        return (
            f"[sandbox] The notebook's directory is read-only in the sandbox ({WORKSPACE}, Sandbox.workspace = "
            "'read-only'). Write to /tmp or HOME and use %sandbox download NAME, or set "
            "c.Sandbox.workspace = 'read-write' (environment variable SANDBOX_WORKSPACE) and restart the kernel."
        )

    def add_notice(self, *lines: str | None) -> None:
        for line in lines:
            if line:
                self.notice = f"{self.notice}\n{line}" if self.notice else line

    def take_notice(self) -> str | None:
        notice, self.notice = self.notice, None
        return notice

    def write_back(self) -> list[str]:
        """After a cell: the read-write copy's changes onto the host; refusals as lines."""
        return self.staging.write_back() if self.staging is not None else []

    def close(self) -> None:
        if self.staging is not None:
            self.staging.close()

    def describe(self) -> str:
        if self.mode == "hidden":
            return f"hidden (the working directory is the private {SANDBOX_HOME})"
        if self.copied_read_only:
            return (
                f"{self.host_dir} read-only at {WORKSPACE} (the working directory; a copy: the sandbox's uid may not "
                "list the directory itself)"
            )
        if self.mode == "read-only":
            return f"{self.host_dir} read-only at {WORKSPACE} (the working directory)"
        if self.through_agent:
            return (
                f"{self.host_dir} read-write at {WORKSPACE} (the working directory; a copy in gVisor's memory, made "
                "through the agent protocol; changed files written back after each cell, at most "
                f"{format_bytes(self.limits.workspace_bytes)} in {self.limits.workspace_files:,} files)"
            )
        return (
            f"{self.host_dir} read-write at {WORKSPACE} (the working directory; a private copy, changed files "
            f"written back after each cell, at most {format_bytes(self.limits.workspace_bytes)} in "
            f"{self.limits.workspace_files:,} files)"
        )
