"""``sandbox-kernel render | list | gc``: study the manifests, see live sandboxes, reclaim abandoned ones.

``render`` uses the same pure builders as the running kernel (:mod:`.manifests`) with a fixed
kernel id, identity and time, so its output is reproducible and is what ``k8s/sandbox/`` holds.
``gc`` only ever considers namespaces labelled ``app.kubernetes.io/managed-by=sandbox-kernel``
whose name has the sandbox prefix, and deletes one only when its heartbeat Lease expired (or,
with no Lease at all, when it is older than ``heartbeat_ttl``).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import yaml

from ..config import Limits, Sandbox
from ..errors import SandboxError
from ..languages import get_language
from . import claims, egress, manifests
from .api import KubernetesApi, parse_time
from .settings import KubernetesSandbox

RENDER_USER = "system:serviceaccount:sandbox-kernel-system:sandbox-kernel"
"""The identity ``render`` shows the objects for: the service account of ``k8s/rbac/``."""
RENDER_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
DEFAULT_KERNEL_ID = "00000000-0000-0000-0000-000000000000"


def rendered_objects(
    language: str,
    kernel_id: str = DEFAULT_KERNEL_ID,
    settings: KubernetesSandbox | None = None,
    limits: Limits | None = None,
) -> list[dict[str, Any]]:
    """Every object a kernel of ``language`` applies, in order, for a fixed id, identity and time."""
    settings = settings or KubernetesSandbox()
    limits = limits or Sandbox().limits()
    settings.validate(limits)
    lang = get_language(language, "--language")
    hex_id = "".join(c for c in kernel_id.lower() if c in "0123456789abcdef")
    ident = manifests.SandboxIdentity(
        namespace=f"{settings.namespace_prefix}{(hex_id + '00000000')[:8]}",
        kernel_id=kernel_id,
        language=lang.name,
        owner=settings.owner or manifests.owner_label(RENDER_USER),
        user=RENDER_USER,
        created=RENDER_TIME.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    objects = manifests.sandbox_objects(
        ident,
        settings.quota(),
        settings.limit_range(),
        settings.pod_spec(lang, limits, "sandbox-1"),
        lang.agent_source(),
        settings.heartbeat_ttl,
        RENDER_TIME.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        manifests.Subject.from_username(RENDER_USER),
        settings.sandbox_role,
        # With Sandbox.allow_hosts: the egress annotations and policy (a real sandbox draws its own credential).
        egress.initial_spec(limits.allow_hosts, egress.widening(settings.config), "rendered")
        if limits.allow_hosts
        else None,
        lang.relay_source(),
    )
    return objects.in_order()


class _Dumper(yaml.SafeDumper):
    """Shows multi-line strings (the agent's source) as literal blocks, readable as code."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_yaml(objects: list[dict[str, Any]]) -> str:
    """YAML multi-document stream of ``objects``, as ``kubectl apply -f`` takes it."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def render(args: argparse.Namespace) -> int:
    sys.stdout.write(
        render_yaml(rendered_objects(args.language, getattr(args, "kernel_id", None) or DEFAULT_KERNEL_ID))
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Live sandboxes.


def _settings(args: argparse.Namespace) -> KubernetesSandbox:
    settings = KubernetesSandbox()
    if getattr(args, "kubeconfig", None):
        settings.kubeconfig = args.kubeconfig
    if getattr(args, "context", None):
        settings.context = args.context
    return settings


def _ago(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def heartbeat_expiry(lease: dict[str, Any] | None) -> datetime | None:
    """When a heartbeat Lease expires (renewTime + leaseDurationSeconds); None if it has no renewTime."""
    if not lease:
        return None
    spec = lease.get("spec") or {}
    renewed = parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    if renewed is None:
        return None
    return renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))


def is_ours(namespace: dict[str, Any], prefix: str) -> bool:
    """A namespace gc may consider: our label and our name prefix, both."""
    meta = namespace.get("metadata", {})
    labels = meta.get("labels") or {}
    return labels.get(manifests.LABEL_MANAGED_BY) == manifests.MANAGED_BY and str(meta.get("name", "")).startswith(
        prefix
    )


def verdict(namespace: dict[str, Any], lease: dict[str, Any] | None, now: datetime, ttl: int) -> tuple[bool, str]:
    """Whether gc deletes this sandbox namespace, and why (pure)."""
    meta = namespace.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return False, "already being deleted"
    expiry = heartbeat_expiry(lease)
    if expiry is not None:
        if expiry < now:
            return True, f"heartbeat expired {_ago(now - expiry)} ago"
        return False, f"heartbeat expires in {_ago(expiry - now)}"
    created = parse_time(meta.get("creationTimestamp")) or now
    if now - created > timedelta(seconds=ttl):
        return True, f"no heartbeat lease and {_ago(now - created)} old"
    return False, f"no heartbeat lease yet ({_ago(now - created)} old)"


def _lease(api: KubernetesApi, namespace: str) -> tuple[dict[str, Any] | None, str]:
    try:
        return api.read_lease(namespace, manifests.LEASE_NAME), ""
    except SandboxError as exc:
        return None, str(exc)


def origin(namespace: dict[str, Any]) -> str:
    """Who made a sandbox and, for the controller's, whether it is pooled, bound, and came from the pool (pure)."""
    meta = namespace.get("metadata", {})
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if labels.get(claims.LABEL_MADE_BY) != claims.MADE_BY_CONTROLLER:
        return "direct (kernel)"
    state = labels.get(claims.LABEL_STATE, "?")
    if state != "bound":
        return f"pool ({state})"
    pooled = " (from pool)" if annotations.get("sandbox-kernel/pooled") == "true" else ""
    return f"claim {annotations.get(claims.ANNOTATION_CLAIM, '?')}{pooled}"


def list_sandboxes(args: argparse.Namespace) -> int:
    settings = _settings(args)
    api = KubernetesApi(settings.kubeconfig, settings.context)
    now = datetime.now(timezone.utc)
    rows = [("NAMESPACE", "AGE", "OWNER", "LANGUAGE", "KERNEL", "HEARTBEAT", "SOURCE")]
    for ns in sorted(api.list_namespaces(manifests.SELECTOR), key=lambda n: n["metadata"]["name"]):
        if not is_ours(ns, settings.namespace_prefix):
            continue
        meta = ns["metadata"]
        labels = meta.get("labels") or {}
        created = parse_time(meta.get("creationTimestamp")) or now
        controllers = labels.get(claims.LABEL_MADE_BY) == claims.MADE_BY_CONTROLLER
        lease, error = (None, "") if controllers else _lease(api, meta["name"])
        expiry = heartbeat_expiry(lease)
        if meta.get("deletionTimestamp"):
            beat = "terminating"
        elif controllers:
            beat = "on its claim" if labels.get(claims.LABEL_STATE) == "bound" else "-"
        elif meta.get("deletionTimestamp"):
            beat = "terminating"
        elif error:
            beat = "unknown (cannot read lease)"
        elif expiry is None:
            beat = "none"
        elif expiry < now:
            beat = f"expired {_ago(now - expiry)} ago"
        else:
            renewed = parse_time(lease["spec"].get("renewTime")) if lease else None
            beat = f"renewed {_ago(now - renewed)} ago" if renewed else "alive"
        rows.append(
            (
                meta["name"],
                _ago(now - created),
                labels.get(manifests.LABEL_OWNER, "?"),
                labels.get(manifests.LABEL_LANGUAGE, "?"),
                labels.get(manifests.LABEL_KERNEL_ID, "?"),
                beat,
                origin(ns),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def gc(args: argparse.Namespace) -> int:
    settings = _settings(args)
    api = KubernetesApi(settings.kubeconfig, settings.context)
    now = datetime.now(timezone.utc)
    failures = 0
    seen = 0
    for ns in sorted(api.list_namespaces(manifests.SELECTOR), key=lambda n: n["metadata"]["name"]):
        if not is_ours(ns, settings.namespace_prefix):
            continue
        seen += 1
        name = ns["metadata"]["name"]
        if (ns["metadata"].get("labels") or {}).get(claims.LABEL_MADE_BY) == claims.MADE_BY_CONTROLLER:
            # Claims mode: the controller deletes these with their claim (or its expired heartbeat).
            print(f"kept {name}: the sandbox controller's ({origin(ns)}); it goes with its claim")
            continue
        lease, error = _lease(api, name)
        if error:
            # Another identity's sandbox (its RoleBinding names someone else): not ours to judge.
            print(f"kept {name}: cannot read its heartbeat ({error})")
            continue
        delete, why = verdict(ns, lease, now, settings.heartbeat_ttl)
        if not delete:
            print(f"kept {name}: {why}")
            continue
        if getattr(args, "dry_run", False):
            print(f"would delete {name}: {why}")
            continue
        try:
            api.delete_namespace(name)
            print(f"deleted {name}: {why}")
        except SandboxError as exc:
            print(f"could not delete {name}: {exc}")
            failures += 1
    if not seen:
        print("no sandbox namespaces")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# k8s/sandbox/: the rendered manifests kept in the repository.

FILE_HEADER = """\
# Generated by `sandbox-kernel render --language {language}`: every object a {language} kernel
# applies, for kernel id {kernel_id}, as the service account of k8s/rbac/.
# Do not edit: regenerate with `python -m sandbox_kernel.kubernetes.commands k8s/sandbox`.
# tests/unit/test_rendered_manifests_in_sync.py fails when this file drifts from the code.
"""


def rendered_file(language: str) -> str:
    """The exact text of ``k8s/sandbox/<language>.yaml`` (default settings, no environment overrides)."""
    return FILE_HEADER.format(language=language, kernel_id=DEFAULT_KERNEL_ID) + render_yaml(
        rendered_objects(
            language,
            settings=KubernetesSandbox(images={}),
            limits=Sandbox(memory_limit="256Mi", cpu_limit="500m").limits(),
        )
    )


if __name__ == "__main__":
    from pathlib import Path

    from ..languages import LANGUAGES

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "k8s/sandbox")
    for name in LANGUAGES:
        (target / f"{name}.yaml").write_text(rendered_file(name), encoding="utf-8")
        print(f"wrote {target / f'{name}.yaml'}")
