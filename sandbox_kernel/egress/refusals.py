"""Refused requests of the shared (Kubernetes) egress proxy as Kubernetes Events: pure parts.

The way a refusal travels (k8s/EGRESS.md, "Refused requests"):

1. the proxy (``runner --shared … --refusals DIR``, no API credential) appends one JSON line per
   refused request to ``DIR/refused.jsonl``, an emptyDir it shares with the ``sync`` container
   (:func:`record_line`; nothing when the file is already :data:`MAX_FILE_BYTES` long);
2. the sync (:mod:`.k8s_sync`, the pod's only API credential) takes the file over about once a
   second, reads it (:func:`parse_records`: everything in it came from a sandbox's request, so
   every field is checked and bounded) and folds the refusals into one Event per (namespace,
   host, port) and proxy replica (:class:`Aggregator`): created at once, its ``count`` patched at
   most every :data:`PATCH_INTERVAL` seconds, at most :data:`CALLS_PER_FLUSH` API calls per
   second, at most :data:`MAX_HOSTS_PER_NAMESPACE` Events per namespace (more hosts are counted
   in one Event for "other hosts"). A flood of refused requests costs the API server nothing more;
3. the kernel lists its namespace's Events (its identities may) and ``%sandbox network`` shows the
   most recent (:func:`refused_from_events`), as the local backend shows its proxy's log;
   ``kubectl get events -n sandbox-…`` shows them too (reason :data:`REASON`).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

REASON = "EgressRefused"
RECORD_FILE = "refused.jsonl"
MAX_FILE_BYTES = 256 * 1024
"""The proxy appends nothing more to a record file this long (the sync drains it every second)."""
MAX_LINE = 2048
MAX_HOST = 253
MAX_WHY = 300
MAX_HOSTS_PER_NAMESPACE = 30
"""Distinct hosts with an Event of their own per namespace (while remembered: :data:`FORGET_AFTER`)."""
MAX_KEYS = 5000
"""Refused (namespace, host, port) remembered in all; records beyond are dropped."""
CALLS_PER_FLUSH = 10
PATCH_INTERVAL = 5.0
FORGET_AFTER = 3600.0
"""Seconds after its last refusal a host is forgotten (the API server keeps Events for one hour)."""
OTHER_HOSTS = "(other hosts)"
COMPONENT = "sandbox-egress-proxy"
ANNOTATION_HOST = "sandbox-kernel/egress-host"
ANNOTATION_PORT = "sandbox-kernel/egress-port"

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_UNSAFE = re.compile(r"[^\x21-\x7e]")  # printable ASCII without space, in host names


def _bounded(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_host(host: str) -> str:
    return _bounded(_UNSAFE.sub("?", host), MAX_HOST) or "(none)"


@dataclass(frozen=True)
class Refusal:
    """One refused request, as the proxy recorded it."""

    namespace: str
    host: str
    port: int
    why: str
    time: float


def record_line(namespace: str, host: str, port: int, why: str, when: float) -> bytes:
    """The proxy's record of one refusal: one bounded JSON line."""
    record = {
        "time": round(when, 3),
        "namespace": namespace,
        "host": safe_host(host),
        "port": port if 0 <= port < 65536 else 0,
        "reason": _bounded(why, MAX_WHY),
    }
    return json.dumps(record, ensure_ascii=True).encode() + b"\n"


def parse_records(data: bytes) -> list[Refusal]:
    """The refusals in a record file; malformed or oversized lines are skipped."""
    out: list[Refusal] = []
    for line in data.split(b"\n"):
        if not line or len(line) > MAX_LINE:
            continue
        try:
            record = json.loads(line)
            namespace, host, port = record["namespace"], record["host"], record["port"]
            why, when = record["reason"], record["time"]
        except (ValueError, KeyError, TypeError):
            continue
        if not (isinstance(namespace, str) and _NAMESPACE.fullmatch(namespace)):
            continue
        if not (isinstance(host, str) and isinstance(why, str) and isinstance(port, int) and 0 <= port < 65536):
            continue
        if not isinstance(when, (int, float)) or isinstance(when, bool):
            continue
        out.append(Refusal(namespace, safe_host(host), port, _bounded(why, MAX_WHY), float(when)))
    return out


@dataclass
class Tally:
    """The refusals of one (namespace, host, port) and what its Event says so far."""

    namespace: str
    host: str
    port: int
    why: str
    first: float
    last: float
    count: int = 0
    reported: int = 0  # the count the Event has (0: not created yet)
    patched_at: float = 0.0
    name: str = field(default="", compare=False)

    @property
    def target(self) -> str:
        return self.host if self.host == OTHER_HOSTS else f"{self.host}:{self.port}"

    def message(self) -> str:
        if self.host == OTHER_HOSTS:
            return (
                f"{OTHER_HOSTS} refused: requests to more than {MAX_HOSTS_PER_NAMESPACE} hosts were refused "
                "within an hour; the proxy's log (kubectl logs -n sandbox-kernel-system deploy/sandbox-egress-proxy "
                f"-c proxy) has each; the last: {self.why}"
            )
        return f"{self.target} refused: {self.why}"


def event_name(namespace: str, host: str, port: int, instance: str) -> str:
    """One Event per (namespace, host, port) and proxy replica (replicas never share a count)."""
    key = hashlib.sha256(f"{namespace}\0{host}\0{port}".encode()).hexdigest()[:16]
    return f"egress-refused.{key}.{hashlib.sha256(instance.encode()).hexdigest()[:6]}"


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def event_body(tally: Tally, instance: str) -> dict[str, Any]:
    """The Event of a tally (core/v1, the kind ``kubectl get events`` and ``describe`` show)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": tally.name,
            "namespace": tally.namespace,
            "labels": {"app.kubernetes.io/component": "egress"},
            "annotations": {ANNOTATION_HOST: tally.host, ANNOTATION_PORT: str(tally.port)},
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Namespace",
            "name": tally.namespace,
            "namespace": tally.namespace,
        },
        "reason": REASON,
        "message": tally.message(),
        "type": "Warning",
        "count": tally.count,
        "firstTimestamp": _stamp(tally.first),
        "lastTimestamp": _stamp(tally.last),
        "source": {"component": COMPONENT, "host": instance},
        "reportingComponent": f"sandbox-kernel.dev/{COMPONENT}",
        "reportingInstance": instance,
    }


def count_patch(tally: Tally) -> dict[str, Any]:
    """The merge patch that brings an existing Event up to date."""
    return {"count": tally.count, "lastTimestamp": _stamp(tally.last), "message": tally.message()}


class Aggregator:
    """Folds refusals into tallies and says which Events to create or patch, within the budget."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.tallies: dict[tuple[str, str, int], Tally] = {}
        self.dropped = 0

    def add(self, refusals: list[Refusal]) -> None:
        for r in refusals:
            key = (r.namespace, r.host, r.port)
            tally = self.tallies.get(key)
            if tally is None:
                hosts = sum(1 for k in self.tallies if k[0] == r.namespace and k[1] != OTHER_HOSTS)
                if hosts >= MAX_HOSTS_PER_NAMESPACE:
                    key = (r.namespace, OTHER_HOSTS, 0)
                    tally = self.tallies.get(key)
                if tally is None:
                    if len(self.tallies) >= MAX_KEYS:
                        self.dropped += 1
                        continue
                    tally = self.tallies[key] = Tally(key[0], key[1], key[2], r.why, r.time, r.time)
                    tally.name = event_name(key[0], key[1], key[2], self.instance)
            tally.count += 1
            tally.why = r.why
            tally.first, tally.last = min(tally.first, r.time), max(tally.last, r.time)

    def due(self, now: float) -> list[Tally]:
        """The tallies whose Event to create (``reported == 0``) or patch now: new ones first,
        then the longest unreported, at most :data:`CALLS_PER_FLUSH`."""
        waiting = [t for t in self.tallies.values() if t.count != t.reported]
        new = sorted((t for t in waiting if not t.reported), key=lambda t: t.first)
        old = sorted(
            (t for t in waiting if t.reported and now - t.patched_at >= PATCH_INTERVAL), key=lambda t: t.patched_at
        )
        return (new + old)[:CALLS_PER_FLUSH]

    def done(self, tally: Tally, now: float, exists: bool = True) -> None:
        """The Event of ``tally`` now says its count (``exists`` False: it is gone, create it anew)."""
        tally.reported, tally.patched_at = (tally.count, now) if exists else (0, 0.0)

    def forget(self, now: float, namespaces: set[str] | None = None) -> None:
        """Drop tallies refused long ago, or of namespaces that are gone (``namespaces``: those that exist)."""
        for key, tally in list(self.tallies.items()):
            if now - tally.last > FORGET_AFTER or (namespaces is not None and key[0] not in namespaces):
                del self.tallies[key]


# -- the kernel's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """A refused host as ``%sandbox network`` shows it (from one or more Events)."""

    target: str
    why: str
    count: int
    last: str  # RFC 3339, UTC


def refused_from_events(events: list[dict[str, Any]], limit: int = 10) -> list[Refused]:
    """The refused hosts of a namespace's Events, most recent first (replicas' Events merged)."""
    merged: dict[str, Refused] = {}
    for event in events:
        if event.get("reason") != REASON or (event.get("source") or {}).get("component") != COMPONENT:
            continue
        message = str(event.get("message") or "")
        target, sep, why = message.partition(" refused: ")
        if not sep:
            continue
        last = str(event.get("lastTimestamp") or event.get("eventTime") or "")
        raw = event.get("count")
        count = raw if isinstance(raw, int) and raw > 0 else 1
        seen = merged.get(target)
        if seen is not None:
            newer = last >= seen.last
            merged[target] = Refused(target, why if newer else seen.why, seen.count + count, max(last, seen.last))
        else:
            merged[target] = Refused(target, why, count, last)
    return sorted(merged.values(), key=lambda r: r.last, reverse=True)[:limit]


def report_lines(refused: list[Refused], widening: bool = False) -> list[str]:
    """``%sandbox network``'s lines for the refused hosts (the local backend's wording)."""
    if not refused:
        return ["last refused: none"]
    lines = ["last refused (most recent first; Events of reason EgressRefused in this namespace):"]
    for r in refused:
        try:
            when = time.strftime(
                "%H:%M:%S", time.localtime(calendar.timegm(time.strptime(r.last, "%Y-%m-%dT%H:%M:%SZ")))
            )
        except ValueError:
            when = r.last or "?"
        times = f" ({r.count} times)" if r.count > 1 else ""
        lines.append(f"  {when}  {r.target}  {r.why}{times}")
    lines.append("allow one: %sandbox allow HOST" + ("" if widening else " (within the operator's list)"))
    return lines
