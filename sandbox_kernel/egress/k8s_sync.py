"""``python -m sandbox_kernel.egress.k8s_sync POLICY_DIR [--refusals DIR] [--hosts-file F] [--exempt-network CIDR]``:
the Kubernetes proxy's policies (and, with ``--refusals``, its refused requests as Events in the
sandbox's namespace: :mod:`.k8s_events`).

Runs next to the shared proxy (``runner --shared``) in the egress-proxy pod, with the only API
credential of that pod (get/list/watch namespaces; create/patch events, for :mod:`.k8s_events`). For every sandbox namespace
(label ``app.kubernetes.io/managed-by=sandbox-kernel``) whose annotations carry an egress
credential, an allow list and the sandbox pod's address, it writes
``POLICY_DIR/<sha256 of the token>.json`` in the format the proxy reads (the same as the local
backend's, plus ``source``: the proxy takes the credential only from that address), and removes
it when the namespace or its annotations go. The token itself never leaves the sandbox's pod and
the kernel: the namespace holds only its hash, so reading namespaces does not let anyone use
another sandbox's list. Two namespaces with the same hash get no policy at all.

Annotations (set by the kernel, :func:`sandbox_kernel.kubernetes.manifests.egress_annotations`;
``%sandbox allow``/``deny`` patch the lists, which reach the proxy within the watch's latency):

- ``sandbox-kernel/egress-token-sha256``: hex SHA-256 of the sandbox's proxy credential,
- ``sandbox-kernel/egress-allow``, ``sandbox-kernel/egress-deny``: space-separated entries in the
  policy's ``name:port,port`` form (what the admission policy's CEL can split),
- ``sandbox-kernel/egress-source``: the sandbox pod's IPv4 address, set once it runs.

``--hosts-file`` and ``--exempt-network`` are for the project's tests only (the e2e tests' own
hosts live at private addresses): they come from the proxy Deployment's command line, which only
the platform's administrators can change, never from a namespace.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import policy

ANNOTATION_TOKEN = "sandbox-kernel/egress-token-sha256"
ANNOTATION_ALLOW = "sandbox-kernel/egress-allow"
ANNOTATION_DENY = "sandbox-kernel/egress-deny"
ANNOTATION_SOURCE = "sandbox-kernel/egress-source"
SELECTOR = "app.kubernetes.io/managed-by=sandbox-kernel"
MAX_ENTRIES = 100
# Written once the directory holds the policies of a full list of the namespaces: the sync
# container's startupProbe (k8s/egress/proxy.yaml) waits for it, so a new proxy pod (a rollout, a
# restart) gets no traffic while it would still answer every sandbox with a 407.
SYNCED_MARKER = ".synced"

log = logging.getLogger("sandbox_kernel.egress")


def _entries(text: str) -> list[policy.Entry]:
    entries = policy.entries_from_json(text.split())
    if len(entries) > MAX_ENTRIES:
        raise ValueError("too many entries")
    for entry in entries:  # the same rules as the setting: names, not addresses
        for port in entry.ports:
            policy.parse_entry(entry.name + ":" + str(port))
    return entries


def policy_for_namespace(
    name: str, annotations: dict[str, str] | None, test_only: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """(file name, policy) for one sandbox namespace, or None when it has no (valid) egress.
    ``test_only``: ``hosts_file``/``exempt_networks`` from the sync's command line (tests)."""
    annotations = annotations or {}
    digest = annotations.get(ANNOTATION_TOKEN, "")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    try:
        allow = _entries(annotations.get(ANNOTATION_ALLOW, ""))
        deny = _entries(annotations.get(ANNOTATION_DENY, ""))
        source = str(ipaddress.IPv4Address(annotations.get(ANNOTATION_SOURCE, "")))
    except (ValueError, AttributeError, TypeError, IndexError):
        log.warning("namespace %s: malformed or missing egress annotations; no egress", name)
        return None
    data = {
        "sandbox": name,
        "allow": [e.name + ":" + ",".join(map(str, e.ports)) for e in allow],
        "deny": [e.name + ":" + ",".join(map(str, e.ports)) for e in deny],
        "source": source,
        "log": "/dev/stdout",
        **(test_only or {}),
    }
    return digest + ".json", data


def sync(
    directory: Path, namespaces: Iterable[tuple[str, dict[str, str] | None]], test_only: dict[str, Any] | None = None
) -> None:
    """Make ``directory`` hold exactly the policies of ``namespaces`` (atomic per file); ``namespaces``
    is always all of them (a list, then the watch's view), so the directory is then synced (:data:`SYNCED_MARKER`)."""
    wanted: dict[str, dict[str, Any]] = {}
    twice: set[str] = set()
    for name, notes in namespaces:
        found = policy_for_namespace(name, notes, test_only)
        if found:
            if found[0] in wanted:
                twice.add(found[0])
            wanted[found[0]] = found[1]
    for fname in twice:  # one credential hash on two namespaces: neither list is that credential's
        log.warning("credential hash %s is on more than one namespace; no egress for it", fname[:12])
        del wanted[fname]
    for fname, data in wanted.items():
        path = directory / fname
        text = json.dumps(data)
        if path.exists() and path.read_text() == text:
            continue
        tmp = directory / f".{fname}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    for path in directory.glob("*.json"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)
    marker = directory / SYNCED_MARKER
    if not marker.exists():
        marker.write_text("")


def testing_options(argv: list[str]) -> dict[str, Any]:
    """``--hosts-file F`` and ``--exempt-network CIDR`` (repeatable) → the policies' test-only fields."""
    options: dict[str, Any] = {}
    it = iter(argv)
    for arg in it:
        if arg == "--hosts-file":
            options["hosts_file"] = next(it)
        elif arg == "--exempt-network":
            options.setdefault("exempt_networks", []).append(str(ipaddress.ip_network(next(it))))
        else:
            raise SystemExit(f"k8s_sync: unknown option {arg}")
    return options


def refusals_option(argv: list[str]) -> tuple[Path | None, list[str]]:
    """``--refusals DIR`` (the proxy's record directory, :mod:`.refusals`) and the other options."""
    if argv[:1] == ["--refusals"] and len(argv) >= 2:
        return Path(argv[1]), argv[2:]
    return None, argv


def main() -> None:  # pragma: no cover - needs a cluster
    import socket
    import threading

    from kubernetes import client, config, watch

    from . import k8s_events

    logging.basicConfig(level=logging.INFO)
    directory = Path(sys.argv[1])
    records, rest = refusals_option(sys.argv[2:])
    test_only = testing_options(rest)
    if test_only:
        log.warning("TEST-ONLY options in force: %s", test_only)
    directory.mkdir(parents=True, exist_ok=True)
    config.load_incluster_config()
    api = client.CoreV1Api()
    known: list[set[str] | None] = [None]  # the sandbox namespaces, for the Events thread (replaced whole)
    if records is not None:
        events_api = client.CoreV1Api(client.ApiClient())  # its own connection pool, for its own thread
        threading.Thread(
            target=k8s_events.run,
            args=(records, events_api, socket.gethostname(), lambda: known[0]),
            daemon=True,
            name="egress-events",
        ).start()
    while True:
        try:
            listed = api.list_namespace(label_selector=SELECTOR)
            current: dict[str, dict[str, str] | None] = {
                ns.metadata.name: ns.metadata.annotations  # type: ignore[union-attr,misc]
                for ns in listed.items
            }
            sync(directory, current.items(), test_only)
            known[0] = set(current)
            stream = watch.Watch().stream(
                api.list_namespace,
                label_selector=SELECTOR,
                resource_version=listed.metadata.resource_version,  # type: ignore[union-attr]
                timeout_seconds=300,
            )
            for event in stream:
                ns = event["object"]
                if event["type"] == "DELETED":
                    current.pop(ns.metadata.name, None)
                else:
                    current[ns.metadata.name] = ns.metadata.annotations
                sync(directory, current.items(), test_only)
                known[0] = set(current)
        except Exception:  # keep serving the last policies; relist
            log.exception("namespace watch failed; relisting")
            time.sleep(2)


if __name__ == "__main__":  # pragma: no cover
    main()
