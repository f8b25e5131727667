"""Refused requests of the Kubernetes egress proxy as Events, the pure parts
(sandbox_kernel/egress/refusals.py, the file hand-over of k8s_events.py and plugin.py, and what
``%sandbox network`` makes of the Events). The cluster side is tests/e2e/test_egress_kubernetes.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.egress import k8s_events, k8s_sync, plugin, refusals
from sandbox_kernel.egress.refusals import Aggregator, Refusal, Refused
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.kubernetes.egress import KubernetesEgress

NS = "sandbox-0123abcd"


def _refusal(host: str = "denied.test", port: int = 443, when: float = 1000.0, ns: str = NS) -> Refusal:
    return Refusal(ns, host, port, f"{host} is not on the allow list", when)


def test_a_record_is_one_bounded_json_line_and_parses_back() -> None:
    line = refusals.record_line(NS, "denied.test", 443, "denied.test is not on the allow list", 1000.1234)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "time": 1000.123,
        "namespace": NS,
        "host": "denied.test",
        "port": 443,
        "reason": "denied.test is not on the allow list",
    }
    assert refusals.parse_records(line) == [
        Refusal(NS, "denied.test", 443, "denied.test is not on the allow list", 1000.123)
    ]
    # What a sandbox controls (the host, a Host header in the reason) is bounded and made printable.
    long = refusals.parse_records(refusals.record_line(NS, "a" * 5000 + " b\x1b[2J", 443, "x\n" * 400, 1.0))[0]
    assert len(long.host) == refusals.MAX_HOST and " " not in long.host and "\x1b" not in long.host
    assert len(long.why) == refusals.MAX_WHY and "\n" not in long.why
    empty = refusals.parse_records(refusals.record_line(NS, "", 70000, "no host", 1.0))[0]
    assert (empty.host, empty.port) == ("(none)", 0)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"namespace": "sandbox-1", "host": "h", "port": 443, "reason": "r"}',  # no time
        b'{"time": 1, "namespace": "Not_A_Namespace", "host": "h", "port": 443, "reason": "r"}',
        b'{"time": 1, "namespace": "sandbox-1", "host": 5, "port": 443, "reason": "r"}',
        b'{"time": 1, "namespace": "sandbox-1", "host": "h", "port": "443", "reason": "r"}',
        b'{"time": 1, "namespace": "sandbox-1", "host": "h", "port": 99999, "reason": "r"}',
        b'{"time": true, "namespace": "sandbox-1", "host": "h", "port": 443, "reason": "r"}',
        b'{"time": 1, "namespace": "sandbox-1", "host": "h", "port": 443, "reason": "' + b"r" * 3000 + b'"}',
    ],
)
def test_malformed_or_oversized_records_are_skipped_and_the_rest_kept(line: bytes) -> None:
    good = refusals.record_line(NS, "denied.test", 80, "why", 2.0)
    assert (
        refusals.parse_records(good + line + b"\n" + good + b"\xff\xfe\n")
        == [Refusal(NS, "denied.test", 80, "why", 2.0)] * 2
    )


def test_the_proxy_stops_appending_once_the_sync_is_behind(tmp_path: Path) -> None:
    path = tmp_path / refusals.RECORD_FILE
    record = refusals.record_line(NS, "denied.test", 443, "why", 1.0)
    for _ in range(refusals.MAX_FILE_BYTES // len(record) + 100):
        plugin.record_refusal(str(path), record)
    size = path.stat().st_size
    assert refusals.MAX_FILE_BYTES <= size < refusals.MAX_FILE_BYTES + len(record)
    # The sync takes the file over; the proxy's next refusal starts a new one.
    taken = k8s_events.take_records(tmp_path)
    assert len(taken) == size and not path.exists() and list(tmp_path.iterdir()) == []
    plugin.record_refusal(str(path), record)
    assert k8s_events.take_records(tmp_path) == record and k8s_events.take_records(tmp_path) == b""
    plugin.record_refusal(str(tmp_path / "missing" / "x"), record)  # no directory: no record, no error


def test_many_refusals_of_one_host_make_one_event_with_a_count() -> None:
    agg = Aggregator("proxy-1")
    agg.add([_refusal(when=1000.0 + i) for i in range(500)])
    assert len(agg.tallies) == 1
    (tally,) = agg.due(1000.0)
    assert tally.count == 500 and tally.reported == 0
    assert refusals.event_body(tally, "proxy-1") == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": refusals.event_name(NS, "denied.test", 443, "proxy-1"),
            "namespace": NS,
            "labels": {"app.kubernetes.io/component": "egress"},
            "annotations": {"sandbox-kernel/egress-host": "denied.test", "sandbox-kernel/egress-port": "443"},
        },
        "involvedObject": {"apiVersion": "v1", "kind": "Namespace", "name": NS, "namespace": NS},
        "reason": "EgressRefused",
        "message": "denied.test:443 refused: denied.test is not on the allow list",
        "type": "Warning",
        "count": 500,
        "firstTimestamp": "1970-01-01T00:16:40Z",
        "lastTimestamp": "1970-01-01T00:24:59Z",
        "source": {"component": "sandbox-egress-proxy", "host": "proxy-1"},
        "reportingComponent": "sandbox-kernel.dev/sandbox-egress-proxy",
        "reportingInstance": "proxy-1",
    }
    name = tally.name
    assert name.startswith("egress-refused.") and len(name) < 64
    assert name != refusals.event_name(NS, "denied.test", 443, "proxy-2")  # replicas never share a count
    assert name != refusals.event_name(NS, "denied.test", 80, "proxy-1")
    agg.done(tally, 1000.0)
    assert agg.due(1000.0) == []
    # More refusals: the count is patched, but at most every PATCH_INTERVAL seconds.
    agg.add([_refusal(when=1600.0)])
    assert agg.due(1000.0 + refusals.PATCH_INTERVAL - 0.1) == []
    assert agg.due(1000.0 + refusals.PATCH_INTERVAL) == [tally]
    assert refusals.count_patch(tally) == {
        "count": 501,
        "lastTimestamp": "1970-01-01T00:26:40Z",
        "message": "denied.test:443 refused: denied.test is not on the allow list",
    }


def test_a_flood_of_hosts_stays_within_the_budget_and_the_per_namespace_cap() -> None:
    agg = Aggregator("proxy-1")
    agg.add([_refusal(f"h{i}.test", when=float(i)) for i in range(1000)])
    hosts = {t.host for t in agg.tallies.values()}
    assert len(hosts) == refusals.MAX_HOSTS_PER_NAMESPACE + 1 and refusals.OTHER_HOSTS in hosts
    other = agg.tallies[(NS, refusals.OTHER_HOSTS, 0)]
    assert other.count == 1000 - refusals.MAX_HOSTS_PER_NAMESPACE
    assert other.message().startswith("(other hosts) refused: requests to more than 30 hosts were refused")
    calls = 0
    for second in range(10):
        due = agg.due(float(second))
        assert len(due) <= refusals.CALLS_PER_FLUSH
        calls += len(due)
        for tally in due:
            agg.done(tally, float(second))
    assert calls == refusals.MAX_HOSTS_PER_NAMESPACE + 1  # one create each, in order of first refusal
    # Another namespace still gets its own Events; the whole memory is bounded too.
    agg.add([_refusal("denied.test", ns="sandbox-ffffffff")])
    assert (("sandbox-ffffffff", "denied.test", 443)) in agg.tallies
    for i in range(refusals.MAX_KEYS):
        agg.add([_refusal("h.test", ns=f"sandbox-{i:08x}")])
    assert len(agg.tallies) == refusals.MAX_KEYS and agg.dropped > 0


def test_tallies_are_forgotten_after_an_hour_or_with_their_namespace() -> None:
    agg = Aggregator("p")
    agg.add([_refusal(when=0.0), _refusal(ns="sandbox-00000001", when=3000.0)])
    agg.forget(refusals.FORGET_AFTER + 1)
    assert list(agg.tallies) == [("sandbox-00000001", "denied.test", 443)]
    agg.forget(3001.0, namespaces={NS})
    assert agg.tallies == {}


class _Events:
    """Records the calls flush() makes; answers each with the status queued for it (pure logic only)."""

    def __init__(self, statuses: list[int | None]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[str, str]] = []

    def _answer(self, what: str, name: str) -> None:
        self.calls.append((what, name))
        status = self.statuses.pop(0) if self.statuses else None
        if status is not None:
            raise _Status(status)

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._answer("create", body["metadata"]["name"])

    def patch_namespaced_event(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self._answer("patch", name)


class _Status(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, _Status) else None


def test_flush_creates_then_patches_and_recreates_an_expired_event() -> None:
    agg = Aggregator("p")
    agg.add([_refusal()])
    api = _Events([None, 404, None, 500])
    k8s_events.flush(agg, api, 0.0, _status_of)
    (tally,) = agg.tallies.values()
    agg.add([_refusal()])
    k8s_events.flush(agg, api, 10.0, _status_of)  # patch: 404, the Event expired
    k8s_events.flush(agg, api, 10.0, _status_of)  # so it is created anew, with the whole count
    agg.add([_refusal()])
    k8s_events.flush(agg, api, 20.0, _status_of)  # a failing patch is not retried in a loop
    k8s_events.flush(agg, api, 20.0, _status_of)
    assert api.calls == [("create", tally.name), ("patch", tally.name), ("create", tally.name), ("patch", tally.name)]
    assert tally.count == 3 and tally.reported == 3


def test_a_restarted_sync_finds_its_event_and_patches_it() -> None:
    agg = Aggregator("p")
    agg.add([_refusal()])
    api = _Events([409])
    k8s_events.flush(agg, api, 0.0, _status_of)
    k8s_events.flush(agg, api, refusals.PATCH_INTERVAL, _status_of)
    assert [c[0] for c in api.calls] == ["create", "patch"]


def _event(host: str, port: int, last: str, count: int = 1, instance: str = "p1", **over: Any) -> dict[str, Any]:
    agg = Aggregator(instance)
    agg.add([_refusal(host, port)])
    (tally,) = agg.tallies.values()
    tally.count = count
    body = refusals.event_body(tally, instance)
    body["lastTimestamp"] = last
    body.update(over)
    return body


def test_the_kernel_lists_the_most_recent_refused_hosts_with_replicas_merged() -> None:
    events = [
        _event("denied.test", 443, "2026-01-01T10:00:05Z", 3, "p1"),
        _event("denied.test", 443, "2026-01-01T10:00:09Z", 2, "p2"),
        _event("evil.test", 80, "2026-01-01T10:00:07Z"),
        _event("other.test", 443, "2026-01-01T10:00:08Z", reason="Scheduled"),
        _event("spoof.test", 443, "2026-01-01T10:00:08Z", source={"component": "kubelet"}),
        {"reason": "EgressRefused", "message": "no separator", "source": {"component": "sandbox-egress-proxy"}},
    ]
    assert refusals.refused_from_events(events) == [
        Refused("denied.test:443", "denied.test is not on the allow list", 5, "2026-01-01T10:00:09Z"),
        Refused("evil.test:80", "evil.test is not on the allow list", 1, "2026-01-01T10:00:07Z"),
    ]
    many = [_event(f"h{i}.test", 443, f"2026-01-01T10:{i:02d}:00Z") for i in range(30)]
    listed = refusals.refused_from_events(many)
    assert len(listed) == 10 and listed[0].target == "h29.test:443" and listed[-1].target == "h20.test:443"


def test_the_report_names_the_hosts_and_how_to_allow_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        lines = refusals.report_lines(
            [
                Refused("denied.test:443", "denied.test is not on the allow list", 5, "2026-01-01T10:00:09Z"),
                Refused("evil.test:80", "evil.test is denied", 1, "2026-01-01T10:00:07Z"),
            ]
        )
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert lines == [
        "last refused (most recent first; Events of reason EgressRefused in this namespace):",
        "  10:00:09  denied.test:443  denied.test is not on the allow list (5 times)",
        "  10:00:07  evil.test:80  evil.test is denied",
        "allow one: %sandbox allow HOST (within the operator's list)",
    ]
    assert refusals.report_lines([]) == ["last refused: none"]
    one = [Refused("a.test:443", "why", 1, "")]  # no time: "?"
    assert refusals.report_lines(one)[1] == "  ?  a.test:443  why"
    assert refusals.report_lines(one, widening=True)[-1] == "allow one: %sandbox allow HOST"  # any host


class _Api:
    def __init__(self, events: list[dict[str, Any]] | Exception) -> None:
        self.events = events

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        if isinstance(self.events, Exception):
            raise self.events
        return self.events


def test_sandbox_network_on_kubernetes_shows_the_last_refused_hosts() -> None:
    egress = KubernetesEgress(("allowed.test",), False, "10.96.0.9:3128")
    assert egress.report().endswith("last refused: none (no sandbox pod yet)")
    egress._api, egress.namespace = _Api([_event("denied.test", 443, "2026-01-01T10:00:09Z")]), NS  # type: ignore[assignment]
    out = egress.report()
    assert "allowed: allowed.test" in out and "last refused (most recent first" in out, out
    assert "denied.test:443  denied.test is not on the allow list" in out and "%sandbox allow HOST" in out, out
    egress._api = _Api(SandboxError("forbidden"))  # type: ignore[assignment]
    assert egress.report().endswith("last refused: the namespace's Events could not be listed (forbidden)")


def test_the_options_of_the_proxy_and_the_sync() -> None:
    assert k8s_sync.refusals_option(["--refusals", "/refusals", "--hosts-file", "f"]) == (
        Path("/refusals"),
        ["--hosts-file", "f"],
    )
    assert k8s_sync.refusals_option(["--hosts-file", "f"]) == (None, ["--hosts-file", "f"])
