"""``python -m sandbox_kernel.egress.k8s_sync POLICY_DIR``: the Kubernetes proxy's policies.

Runs next to the shared proxy (``runner --shared``) in the egress-proxy pod, with the only API
credential of that pod (get/list/watch namespaces, nothing else). For every sandbox namespace
(label ``app.kubernetes.io/managed-by=sandbox-kernel``) whose annotations carry an egress
credential and allow list, it writes ``POLICY_DIR/<sha256 of the token>.json`` in the format the
proxy reads (the same as the local backend's), and removes it when the namespace or its
annotations go. The token itself never leaves the sandbox's pod and the kernel: the namespace
holds only its hash, so reading namespaces does not let anyone use another sandbox's list.

Annotations (set by the kernel when it creates the namespace; ``%sandbox allow``/``deny`` patch
the list, which reaches the proxy within the watch's latency):

- ``sandbox-kernel/egress-token-sha256``: hex SHA-256 of the sandbox's proxy credential,
- ``sandbox-kernel/egress-allow``: JSON ``{"allow": [...], "deny": [...]}`` in the policy's
  ``name:ports`` form (:meth:`.policy.RunningList.as_json`).
"""

from __future__ import annotations

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
SELECTOR = "app.kubernetes.io/managed-by=sandbox-kernel"

log = logging.getLogger("sandbox_kernel.egress")


def policy_for_namespace(name: str, annotations: dict[str, str] | None) -> tuple[str, dict[str, Any]] | None:
    """(file name, policy) for one sandbox namespace, or None when it has no (valid) egress."""
    annotations = annotations or {}
    digest = annotations.get(ANNOTATION_TOKEN, "")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    try:
        lists = json.loads(annotations.get(ANNOTATION_ALLOW, ""))
        allow = policy.entries_from_json(lists.get("allow", []))
        deny = policy.entries_from_json(lists.get("deny", []))
        for entry in allow + deny:  # the same rules as the setting: names, not addresses
            policy.parse_entry(entry.name + ":" + str(entry.ports[0]))
    except (ValueError, AttributeError, TypeError, IndexError):
        log.warning("namespace %s: malformed %s; no egress", name, ANNOTATION_ALLOW)
        return None
    data = {
        "sandbox": name,
        "allow": [e.name + ":" + ",".join(map(str, e.ports)) for e in allow],
        "deny": [e.name + ":" + ",".join(map(str, e.ports)) for e in deny],
        "log": "/dev/stdout",
    }
    return digest + ".json", data


def sync(directory: Path, namespaces: Iterable[tuple[str, dict[str, str] | None]]) -> None:
    """Make ``directory`` hold exactly the policies of ``namespaces`` (atomic per file)."""
    wanted: dict[str, dict[str, Any]] = {}
    for name, notes in namespaces:
        found = policy_for_namespace(name, notes)
        if found:
            wanted[found[0]] = found[1]
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


def main() -> None:  # pragma: no cover - needs a cluster
    from kubernetes import client, config, watch

    logging.basicConfig(level=logging.INFO)
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    config.load_incluster_config()
    api = client.CoreV1Api()
    while True:
        try:
            listed = api.list_namespace(label_selector=SELECTOR)
            current: dict[str, dict[str, str] | None] = {
                ns.metadata.name: ns.metadata.annotations for ns in listed.items  # type: ignore[union-attr,misc]
            }
            sync(directory, current.items())
            stream = watch.Watch().stream(api.list_namespace, label_selector=SELECTOR,
                                          resource_version=listed.metadata.resource_version,  # type: ignore[union-attr]
                                          timeout_seconds=300)
            for event in stream:
                ns = event["object"]
                if event["type"] == "DELETED":
                    current.pop(ns.metadata.name, None)
                else:
                    current[ns.metadata.name] = ns.metadata.annotations
                sync(directory, current.items())
        except Exception:  # keep serving the last policies; relist
            log.exception("namespace watch failed; relisting")
            time.sleep(2)


if __name__ == "__main__":  # pragma: no cover
    main()
