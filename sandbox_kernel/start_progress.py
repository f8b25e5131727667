"""What a cell shows while it waits for a slow sandbox start (issue 13, item 4).

A sandbox usually starts in well under two seconds and the first cell shows nothing of it. When
it takes longer (an image pull, a pod waiting for a node, an empty warm pool), the waiting cell
gets one line saying what the start waits for, in the backend's words
(:attr:`.session.SandboxSession.start_progress`), as ``display_data`` and then updated in place
(``update_display_data``, same ``display_id``) as it changes; the line is cleared
(``clear_output``) once the sandbox is ready or has failed, before the cell's own output (the
cell has none before this).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Callable

PROGRESS_AFTER = 2.0
"""Seconds into a sandbox start after which a waiting cell shows what the start waits for."""
PROGRESS_INTERVAL = 0.5
"""Seconds between updates of that line (``update_display_data``)."""


async def show_while_starting(
    starting: asyncio.Future[Any],
    began: float,
    progress: Callable[[], str],
    publish: Callable[[str, dict[str, Any]], None],
) -> None:
    """Until ``starting`` is done: the line for a start that began at ``began`` (``time.monotonic()``),
    saying ``progress()``, published with ``publish(msg_type, content)`` on IOPub."""
    display_id = f"sandbox-start-{secrets.token_hex(4)}"
    shown = ""
    try:
        while not starting.done():
            await asyncio.wait({starting}, timeout=PROGRESS_INTERVAL)
            waited = time.monotonic() - began
            if starting.done() or waited < PROGRESS_AFTER:
                continue
            text = f"Starting the sandbox ({waited:.0f} s): {progress() or 'starting'}"
            if text != shown:
                publish(
                    "update_display_data" if shown else "display_data",
                    {"data": {"text/plain": text}, "metadata": {}, "transient": {"display_id": display_id}},
                )
                shown = text
    finally:
        if shown:
            publish("clear_output", {"wait": False})
