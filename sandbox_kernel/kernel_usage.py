"""What the kernel tells of the sandbox's resource use, a mixin of
:class:`~sandbox_kernel.kernel.SandboxKernel`: each cell's usage (``execute_reply`` metadata,
``%sandbox usage``, a warning near the memory limit) and jupyter-resource-usage's
``usage_request``, answered with the SANDBOX's memory and CPU against its limits (``usage.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from . import usage
from .errors import SandboxError
from .kernel_comms import CommsAndStdin
from .session import SandboxSession

log = logging.getLogger("sandbox_kernel")


class UsageReports(CommsAndStdin):
    """Per-cell accounting and the usage_request reply (see the module's docstring)."""

    # Provided by SandboxKernel:
    _config_error: SandboxError | None

    def _publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.send_response(self.iopub_socket, msg_type, content)

    def _init_usage(self) -> None:
        self._accounting = usage.Accounting()  # per-cell usage (%sandbox usage, execute_reply metadata)
        self._cell_usage: usage.CellUsage | None = None
        self._cpu_meter = usage.CpuMeter()  # kernel_cpu between two usage_requests

    def _account(self, session: SandboxSession, wall: float, silent: bool) -> None:
        """Record the cell that just ended; warn when it came close to the memory limit."""
        try:
            cell = session.cell_usage_end(wall)
        except Exception:  # noqa: BLE001 - accounting must never fail a cell
            log.warning("per-cell accounting failed", exc_info=True)
            cell = usage.CellUsage(wall, reason="per-cell accounting failed (see the kernel log)")
        self._cell_usage = cell
        self._accounting.add(self.execution_count, cell)
        warning = cell.warning()
        if warning and not silent:
            self._publish("stream", {"name": "stderr", "text": warning})

    def finish_metadata(self, parent: Any, metadata: dict[str, Any], reply_content: Any) -> dict[str, Any]:
        cell, self._cell_usage = self._cell_usage, None
        if cell is not None:
            metadata["sandbox_usage"] = cell.metadata()
        return metadata

    async def _sandbox_usage(self) -> usage.Usage | None:
        """The session's usage, asked on the shell loop (from either thread), never raising."""
        session = self.session_obj
        if session is None or self._config_error is not None:
            return None
        loop = self._loop
        try:
            if loop is None or loop is asyncio.get_running_loop():
                return await asyncio.wait_for(session.usage(), 5)
            future = asyncio.run_coroutine_threadsafe(session.usage(), loop)
            return await asyncio.wait_for(asyncio.wrap_future(future), 5)
        except Exception:  # noqa: BLE001 - no figures rather than no reply
            log.warning("reading the sandbox's usage failed", exc_info=True)
            return None

    async def usage_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """jupyter-resource-usage's question (control channel): the SANDBOX's memory and CPU,
        against its limits (ipykernel's default would measure this kernel's process tree)."""
        if not self.session:
            return
        now = await self._sandbox_usage()
        content = usage.usage_reply(
            now,
            self._cpu_meter.percent(now.cpu_seconds, now.uptime) if now else None,
            socket.gethostname(),
            os.getpid(),
        )
        self.session.send(stream, "usage_reply", content, parent, ident)
