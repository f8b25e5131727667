"""The lines a cell may start with that the kernel answers itself, a mixin of
:class:`~sandbox_kernel.kernel.SandboxKernel`: ``%timeout`` (the cell time limit) and
``%sandbox TOPIC`` (reports of the session, the cluster questions, usage, the isolation selftest,
the egress allow list, and moving files with ``upload`` / ``download``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time

from . import output_policy, selftest, widget_policy
from .config import check_timeout
from .errors import ConfigError, SandboxError
from .kernel_usage import UsageReports
from .session import CLUSTER_TOPICS, REPORT_TOPICS, ErrorOutput, ReportTopic, SandboxSession, Stream

MAGIC = re.compile(r"^\s*%(timeout|sandbox)\b[ \t]*(.*)$")
"""A ``%timeout`` or ``%sandbox`` line (only at the top of a cell)."""
KERNEL_TOPICS = ("usage", "selftest", "network", "allow", "deny", "upload", "download")
"""The ``%sandbox`` topics the kernel answers itself; the session answers :data:`REPORT_TOPICS`."""
SANDBOX_TOPICS = (*REPORT_TOPICS, *KERNEL_TOPICS, *CLUSTER_TOPICS)


class CellMagics(UsageReports):
    """``%timeout`` and ``%sandbox`` (see the module's docstring)."""

    # Provided by SandboxKernel:
    language_name: str

    async def _run_magics(self, code: str, session: SandboxSession, silent: bool) -> str:
        """Handle ``%timeout`` and ``%sandbox`` lines at the top of a cell; return the rest."""
        lines = code.split("\n")
        while lines:
            match = MAGIC.match(lines[0])
            if not match:
                break
            lines.pop(0)
            name, arg = match.group(1), match.group(2).strip()
            if name == "timeout":
                if arg:
                    session.timeout = check_timeout(arg)
                text = f"cell time limit: {session.timeout:g} s" + (" (no limit)" if not session.timeout else "")
            else:
                topic, _, hosts = (arg or ReportTopic.STATUS.value).partition(" ")
                if topic not in SANDBOX_TOPICS:
                    raise ConfigError("%sandbox", f"unknown topic {topic!r}; use one of {', '.join(SANDBOX_TOPICS)}")
                if topic == "selftest":
                    text = await self._selftest(session)
                    if not silent:
                        self._publish("stream", {"name": "stdout", "text": text})
                    continue
                if topic in ("upload", "download"):  # files (sandbox_kernel/workspace/transfer.py)
                    text = await self._move_files(session, topic, hosts, silent)
                    if not silent:
                        self._publish("stream", {"name": "stdout", "text": text + "\n"})
                    continue
                if topic in ("network", "allow", "deny"):  # egress allow list (sandbox_kernel/egress)
                    from .egress.host import magic

                    # Off the event loop: on Kubernetes, allow/deny patch the sandbox namespace.
                    text = await asyncio.get_running_loop().run_in_executor(None, magic, session, topic, hosts.split())
                    if not silent:
                        self._publish("stream", {"name": "stdout", "text": text.rstrip("\n") + "\n"})
                    continue
                loop = asyncio.get_running_loop()
                if topic in CLUSTER_TOPICS:  # the kernel's identity asks the cluster; dry-run's manifests: the rest
                    body, lines = ("\n".join(lines), []) if topic == "dry-run" and not hosts.strip() else ("", lines)
                    text = await loop.run_in_executor(None, session.inspect_cluster, topic, hosts.split(), body)
                elif topic == "usage":
                    text = self._accounting.report(await self._sandbox_usage())
                else:
                    # Reports may call the Kubernetes API (blocking): keep the event loop free.
                    text = await loop.run_in_executor(None, session.report, topic)
                if topic == ReportTopic.POLICY.value:
                    text = text.rstrip("\n") + "\n" + output_policy.describe(self.active_content)
                    if self.active_content != "allow":
                        text += widget_policy.describe()
            if not silent:
                self._publish("stream", {"name": "stdout", "text": text.rstrip("\n") + "\n"})
        return "\n".join(lines)

    async def _move_files(self, session: SandboxSession, topic: str, rest: str, silent: bool) -> str:
        """``%sandbox upload|download NAME…``, with progress of large files as one display that is
        updated (update_display_data)."""
        from .workspace.transfer import Transfer

        try:
            args = shlex.split(rest)
        except ValueError as exc:
            raise ConfigError(f"%sandbox {topic}", str(exc)) from None
        if not args:
            raise ConfigError(f"%sandbox {topic}", f"name at least one file, e.g. %sandbox {topic} data.csv")
        if not hasattr(session, "send_file_request"):
            raise SandboxError(f"This {session.backend} sandbox cannot move files.")
        display_id = f"sandbox-{topic}-{time.monotonic_ns()}"
        shown = False

        def progress(line: str, final: bool) -> None:
            nonlocal shown
            if not silent:
                kind = "update_display_data" if shown else "display_data"
                self._publish(
                    kind, {"data": {"text/plain": line}, "metadata": {}, "transient": {"display_id": display_id}}
                )
                shown = True

        transfer = Transfer(
            session, os.getcwd(), session.limits, progress, sandbox_dir="the sandbox's working directory"
        )
        result: str = await (transfer.upload(args) if topic == "upload" else transfer.download(args))
        return result

    async def _selftest(self, session: SandboxSession) -> str:
        """Run the isolation probe in this kernel's own sandbox and judge what it saw (selftest.py)."""
        language = self.language_name
        output: list[str] = []
        async for event in session.execute(selftest.program(language)):
            if isinstance(event, Stream) and event.name == "stdout":
                output.append(event.text)
            elif isinstance(event, ErrorOutput):
                raise SandboxError(f"the selftest probe failed in the sandbox: {event.ename}: {event.evalue}")
        found = selftest.observations("".join(output))
        if found is None:
            raise SandboxError("the selftest probe printed no observations")
        visible = tuple(getattr(session, "visible_paths", ()))  # read-only host paths shown on purpose
        rows = selftest.evaluate(found, session.limits.memory_bytes, session.backend, language, visible)
        return f"selftest of this {session.backend} sandbox ({language}):\n" + selftest.format_table(rows)
