"""Controlled egress of a Kubernetes sandbox (issue 10, k8s/EGRESS.md): its credential, the
variables its pod gets, and ``%sandbox allow|deny|network`` on the running sandbox.

Only when ``Sandbox.allow_hosts`` is not empty (otherwise nothing of this exists and the sandbox
is deny-all exactly as before):

- the kernel draws a random proxy credential per sandbox namespace (:meth:`KubernetesEgress.new_namespace`);
  the namespace carries only its SHA-256 and the lists (:func:`.manifests.egress_annotations`),
  which the shared proxy's policy sync (:mod:`sandbox_kernel.egress.k8s_sync`) turns into that
  credential's policy, and the NetworkPolicy ``egress-proxy`` (:func:`.manifests.egress_network_policy`)
  opens the proxy pods' port 3128 to the sandbox pod, nothing else;
- the credential reaches the pod only over the attach stream, in the gate line
  (:func:`.pod_command.gate_line`): it is in no API object (not the pod's spec, no Secret), so
  reading namespaces, pods or Secrets does not reveal it. The policy also names the pod's
  address (``egress-source``), and the proxy takes the credential only from there;
- ``%sandbox allow``/``deny`` change the running list (the same :class:`~sandbox_kernel.egress.policy.RunningList`
  as locally: narrow only, unless ``EgressProxy.allow_widening``) and patch the namespace's allow
  and deny annotations; the sync applies the change within the watch's latency;
- ``%sandbox network`` shows the list and the last refused hosts: the proxy's sync records them as
  Events of reason ``EgressRefused`` in the sandbox's namespace (:mod:`sandbox_kernel.egress.refusals`),
  which the kernel's identity may list.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from typing import TYPE_CHECKING, Any

from ..config import Limits
from ..errors import ConfigError, SandboxError, SandboxStartError
from ..egress import policy, refusals
from . import claims, manifests

if TYPE_CHECKING:  # the early start imports this module before the kubernetes client (early_client.py)
    from .api import KubernetesApi

NO_PROXY = "localhost,127.0.0.1,::1"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def widening(config: Any) -> bool:
    """``EgressProxy.allow_widening`` (the same setting as the local backend's)."""
    from ..egress.host import EgressProxy

    return bool(EgressProxy(config=config).allow_widening)


def initial_spec(allow_hosts: tuple[str, ...], widen: bool, token: str) -> manifests.EgressSpec:
    """The egress of a new sandbox: the operator's list as it is (what the early start creates)."""
    egress = KubernetesEgress(allow_hosts, widen, "")
    egress.adopt(token)
    return egress.spec()


def _entries(entries: list[policy.Entry]) -> tuple[str, ...]:
    return tuple(e.name + ":" + ",".join(map(str, e.ports)) for e in entries)


def proxy_variables(url: str) -> list[tuple[str, str]]:
    """What points clients at the proxy (curl, urllib, requests, pip, npm, node), as locally."""
    return [
        ("HTTP_PROXY", url),
        ("HTTPS_PROXY", url),
        ("http_proxy", url),
        ("https_proxy", url),
        ("NO_PROXY", NO_PROXY),
        ("no_proxy", NO_PROXY),
        ("PIP_PROXY", url),
        ("npm_config_proxy", url),
        ("npm_config_https_proxy", url),
        ("NODE_USE_ENV_PROXY", "1"),  # Node.js 22.21+/24: fetch and https honour HTTP(S)_PROXY
    ]


def parse_proxy_setting(value: str) -> tuple[str, str] | tuple[str, int]:
    """``KubernetesSandbox.egress_proxy``: ``NAMESPACE/SERVICE`` (the Service's ClusterIP and
    port are looked up) or ``IPv4:PORT``; ConfigError otherwise."""
    if "/" in value:
        ns, _, name = value.partition("/")
        if re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", ns) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
            return ns, name
    else:
        host, _, port = value.rpartition(":")
        try:
            ipaddress.IPv4Address(host)
            if port.isdigit() and 0 < int(port) < 65536:
                return host, int(port)
        except ValueError:
            pass
    raise ConfigError("KubernetesSandbox.egress_proxy", f"{value!r} is neither NAMESPACE/SERVICE nor IPv4:PORT")


class KubernetesEgress:
    """One kernel's allow list and the credential of its current sandbox namespace."""

    def __init__(self, operator_hosts: tuple[str, ...], widen: bool, proxy_setting: str) -> None:
        self.running = policy.RunningList.from_operator(operator_hosts, widen)
        self.proxy_setting = proxy_setting
        self.token = ""
        self.namespace = ""
        self.source = ""
        self._address = ""
        self._api: KubernetesApi | None = None
        self._claim: tuple[str, str] | None = None  # claims mode: (namespace, name) of the claim

    @classmethod
    def for_session(cls, limits: Limits, settings: Any) -> KubernetesEgress | None:
        if not limits.allow_hosts:
            return None
        return cls(limits.allow_hosts, widening(settings.config), settings.egress_proxy)

    @property
    def enabled(self) -> bool:
        return bool(self.running.operator)

    # -- one sandbox namespace -------------------------------------------------------------------

    def new_namespace(self) -> manifests.EgressSpec:
        """A fresh credential for a namespace about to be created; its spec, with the list as it is now."""
        self.token, self.namespace, self.source = secrets.token_hex(32), "", ""
        return self.spec()

    def adopt(self, token: str) -> manifests.EgressSpec:
        """Take over the credential of the sandbox the early start created; its expected spec."""
        self.token, self.namespace, self.source = token, "", ""
        return self.spec()

    def spec(self) -> manifests.EgressSpec:
        r = self.running
        return manifests.EgressSpec(
            token_sha256(self.token), _entries(r.operator), _entries(r.allow), _entries(r.deny), r.widening
        )

    def attach_to(self, api: KubernetesApi, namespace: str, pod_ip: str) -> None:
        """The pod runs at ``pod_ip``: the proxy takes the credential from that address only; look up
        the proxy's address for the gate line (blocking)."""
        self.proxy_address(api)
        self._api, self.namespace = api, namespace
        if pod_ip != self.source:
            api.patch_namespace(namespace, {}, {manifests.ANNOTATION_EGRESS_SOURCE: pod_ip})
            self.source = pod_ip

    def claim_egress(self) -> claims.ClaimEgress:
        """Claims mode: a fresh credential for the claim about to be made; what its ``spec.egress`` says."""
        spec = self.new_namespace()
        return claims.ClaimEgress(spec.token_sha256, spec.operator)

    def attach_to_claim(self, api: KubernetesApi, claim: tuple[str, str], status: claims.ClaimStatus) -> None:
        """Claims mode: the controller made the sandbox, recorded the pod's address for the proxy and
        the proxy's address in the claim's status; ``%sandbox allow``/``deny`` patch the claim, and
        lists they changed for an earlier sandbox go on the new claim at once (blocking)."""
        if not status.egress_proxy:
            raise SandboxStartError(
                f"The sandbox controller served the SandboxClaim {claim[0]}/{claim[1]} without the egress proxy's "
                "address: is it a controller from before claims could have egress?"
            )
        self._api, self._claim, self.namespace = api, claim, status.namespace
        self._address, self.source = status.egress_proxy, "(recorded by the sandbox controller)"
        if self.changed():
            self.publish()

    def proxy_address(self, api: KubernetesApi) -> str:
        """``IP:PORT`` of the proxy: a ClusterIP, not a name, since the sandbox has no DNS (blocking)."""
        if not self._address:
            where = parse_proxy_setting(self.proxy_setting)
            if isinstance(where[1], int):
                self._address = f"{where[0]}:{where[1]}"
            else:
                service = api.read_service(where[0], where[1])
                spec = (service or {}).get("spec") or {}
                ip, ports = spec.get("clusterIP", ""), spec.get("ports") or []
                if not service or not ip or ip == "None" or not ports:
                    raise SandboxStartError(
                        f"The egress proxy Service {self.proxy_setting} was not found (or has no ClusterIP): deploy "
                        "k8s/egress/ (kubectl apply -k k8s/), or set KubernetesSandbox.egress_proxy to the proxy's IP:PORT."
                    )
                port = next((p["port"] for p in ports if p.get("name") == "proxy"), ports[0]["port"])
                self._address = f"{ip}:{port}"
        return self._address

    def gate_variables(self) -> list[tuple[str, str]]:
        assert self.token and self._address, "proxy_address() first"
        return proxy_variables(f"http://sandbox:{self.token}@{self._address}")

    # -- %sandbox allow / deny / network ----------------------------------------------------------

    def allow(self, hosts: list[str]) -> str:
        lines = [self.running.allow_host(h) for h in hosts]
        self.publish()
        return "\n".join(lines)

    def deny(self, hosts: list[str]) -> str:
        lines = [self.running.deny_host(h) for h in hosts]
        self.publish()
        return "\n".join(lines)

    def changed(self) -> bool:
        """Whether ``%sandbox allow``/``deny`` changed the list (a new sandbox starts from the operator's)."""
        return bool(self.running.deny) or self.running.allow != self.running.operator

    def publish(self) -> None:
        """Send the running lists where the proxy's sync reads them (blocking)."""
        if self._api is not None and self._claim is not None:  # the controller copies them to the namespace
            allow, deny = _entries(self.running.allow), _entries(self.running.deny)
            self._api.patch_claim_annotations(
                *self._claim,
                {claims.ANNOTATION_EGRESS_ALLOW: " ".join(allow), claims.ANNOTATION_EGRESS_DENY: " ".join(deny)},
                "change the egress allow list of",
            )
        elif self._api is not None and self.namespace:
            patch = manifests.egress_list_patch(_entries(self.running.allow), _entries(self.running.deny))
            self._api.patch_namespace(self.namespace, {}, dict(patch))

    def policy_line(self) -> str:
        """The line ``%sandbox policy`` adds for a sandbox with egress."""
        allowed = ", ".join(map(str, self.running.allow)) or "nothing"
        return (
            f"egress: only HTTP(S) through the shared egress proxy ({self.proxy_setting}, {self._address or 'not looked up yet'}; "
            f"NetworkPolicy {manifests.EGRESS_POLICY_NAME} opens its port {manifests.EGRESS_PROXY_PORT} and nothing else) to: "
            f"{allowed}; IP addresses, private/loopback/link-local/metadata addresses and TLS names other than the CONNECT "
            "host refused (%sandbox network); environment also HTTP(S)_PROXY (with this sandbox's credential), NO_PROXY, "
            "PIP_PROXY, npm_config_(https_)proxy, NODE_USE_ENV_PROXY"
        )

    def report(self) -> str:
        r = self.running
        lines = [
            f"egress: through the shared egress proxy {self.proxy_setting} ({self._address or 'not looked up yet'}), "
            f"namespace {self.namespace or '(not created yet)'}, pod address {self.source or '(no pod yet)'}",
            "allowed: " + (", ".join(map(str, r.allow)) or "(nothing)"),
        ]
        if r.deny:
            lines.append("denied: " + ", ".join(map(str, r.deny)))
        lines.append(
            "operator's list (Sandbox.allow_hosts): "
            + (", ".join(map(str, r.operator)) or "(empty)")
            + ("; widening allowed" if r.widening else "; %sandbox allow can only narrow it")
        )
        lines += self._refused_lines()
        return "\n".join(lines)

    def _refused_lines(self) -> list[str]:
        """The last refused hosts, from the namespace's EgressRefused Events (blocking)."""
        if self._api is None or not self.namespace:
            return ["last refused: none (no sandbox pod yet)"]
        try:
            events = self._api.list_events(self.namespace)
        except SandboxError as exc:
            return [f"last refused: the namespace's Events could not be listed ({exc})"]
        return refusals.report_lines(refusals.refused_from_events(events), self.running.widening)
