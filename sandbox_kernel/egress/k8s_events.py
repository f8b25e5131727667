"""The sync container's second job: the proxy's refused requests as Events (:mod:`.refusals`).

``python -m sandbox_kernel.egress.k8s_sync POLICY_DIR --refusals DIR`` runs :func:`run` in a
thread next to the namespace watch: about once a second it takes the proxy's record file over
(:func:`take_records`), folds it into the :class:`~.refusals.Aggregator` and creates or patches
at most :data:`~.refusals.CALLS_PER_FLUSH` Events. Its API rights for this: ``events`` create and
patch (k8s/egress/proxy.yaml), and the admission policy ``sandbox-egress-proxy-events`` admits
only Events of reason EgressRefused about a sandbox namespace, in that namespace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import refusals

log = logging.getLogger("sandbox_kernel.egress")
INTERVAL = 1.0


def take_records(directory: Path) -> bytes:
    """The record file's content, at most :data:`~.refusals.MAX_FILE_BYTES` of it; the file is
    gone afterwards (renamed first, so the proxy's next refusal starts a new one)."""
    path, taken = directory / refusals.RECORD_FILE, directory / f".{refusals.RECORD_FILE}.taken"
    try:
        os.replace(path, taken)
    except FileNotFoundError:
        return b""
    try:
        with open(taken, "rb") as f:
            return f.read(refusals.MAX_FILE_BYTES + refusals.MAX_LINE)
    finally:
        taken.unlink(missing_ok=True)


def flush(
    aggregator: refusals.Aggregator, api: Any, now: float, status_of: Callable[[BaseException], int | None]
) -> None:
    """Create or patch the Events that are due (``api``: a kubernetes CoreV1Api)."""
    for tally in aggregator.due(now):
        try:
            if not tally.reported:
                api.create_namespaced_event(tally.namespace, refusals.event_body(tally, aggregator.instance))
            else:
                api.patch_namespaced_event(tally.name, tally.namespace, refusals.count_patch(tally))
            aggregator.done(tally, now)
        except Exception as exc:  # noqa: BLE001 - the API's errors are logged; refusals go on
            status = status_of(exc)
            if status == 409 and not tally.reported:  # a restarted sync with the same name: bring it up to date
                aggregator.done(tally, now)
                tally.reported = -1
            elif status == 404:  # expired (one hour) or deleted: create it anew
                aggregator.done(tally, now, exists=False)
            else:
                log.warning("egress Event for %s in %s: %s", tally.target, tally.namespace, exc)
                aggregator.done(tally, now)  # no retry storm: the next refusal tries again


def run(
    directory: Path, api: Any, instance: str, namespaces: Callable[[], set[str] | None]
) -> None:  # pragma: no cover - needs a cluster
    """Forever: records → Events (``namespaces``: the sandbox namespaces the watch knows, or None)."""
    from kubernetes.client.exceptions import ApiException

    def status_of(exc: BaseException) -> int | None:
        return exc.status if isinstance(exc, ApiException) else None

    aggregator = refusals.Aggregator(instance)
    while True:
        try:
            now = time.time()
            known = namespaces()
            records = [
                r for r in refusals.parse_records(take_records(directory)) if known is None or r.namespace in known
            ]
            aggregator.add(records)
            aggregator.forget(now, known)
            flush(aggregator, api, now, status_of)
            if aggregator.dropped:
                log.warning("%d refused requests got no Event (too many hosts remembered)", aggregator.dropped)
                aggregator.dropped = 0
        except Exception:  # keep going: the proxy's log has every refusal anyway
            log.exception("egress Events failed")
        time.sleep(INTERVAL)
