"""Controlled egress in claims mode, the pure parts (claims.py's spec.egress and annotations,
controller/egress.py's bound and lists, the kernel's side in kubernetes/egress.py). The cluster
side, with the real controller and proxy, is in tests/e2e/test_egress_kubernetes.py."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.controller import egress as controller_egress
from sandbox_kernel.controller import sandboxes
from sandbox_kernel.controller.settings import SandboxController
from sandbox_kernel.errors import ConfigError, SandboxStartError
from sandbox_kernel.kubernetes import claiming, claims, manifests
from sandbox_kernel.kubernetes.egress import KubernetesEgress
from sandbox_kernel.kubernetes.provision import expected_objects
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

USER = "system:serviceaccount:sandbox-kernel-system:sandbox-kernel-claims"
SHA = "c0" * 32


def egress_spec(*hosts: str) -> claims.ClaimSpec:
    return claims.ClaimSpec("python", USER, egress=claims.ClaimEgress(SHA, hosts))


def test_a_claim_with_egress_carries_only_the_credential_s_hash_and_reads_back_the_same() -> None:
    kernel = KubernetesEgress(("PyPI.org", "*.pythonhosted.org", "example.org:8443"), False, "")
    asked = kernel.claim_egress()
    assert asked == claims.ClaimEgress(
        hashlib.sha256(kernel.token.encode()).hexdigest(),
        ("pypi.org:443,80", "*.pythonhosted.org:443,80", "example.org:8443"),
    )
    spec = claiming.claim_spec(KubernetesSandbox(), LANGUAGES["python"], Sandbox().limits(), "k-1", USER, "o", asked)
    body = claims.claim_object("python-0a1b2c3d", "sandbox-kernel-system", spec, "2026-01-01T00:00:00.000000Z")
    assert body["spec"]["egress"] == {"tokenSha256": asked.token_sha256, "hosts": list(asked.hosts)}
    assert kernel.token not in repr(body)
    assert claims.parse_spec(body["spec"]) == spec
    assert claims.parse_spec({k: v for k, v in body["spec"].items() if k != "egress"}).egress is None


@pytest.mark.parametrize(
    "egress, message",
    [
        ("pypi.org", "spec.egress must be an object"),
        ({"tokenSha256": "x" * 64, "hosts": ["pypi.org:443"]}, "tokenSha256 must be a hex SHA-256"),
        ({"tokenSha256": SHA, "hosts": []}, "must list 1 to 100 hosts"),
        ({"tokenSha256": SHA, "hosts": ["a.org:443"] * 101}, "must list 1 to 100 hosts"),
        ({"tokenSha256": SHA, "hosts": ["10.0.0.1:443"]}, "IP addresses are not allowed"),
        ({"tokenSha256": SHA, "hosts": ["pypi.org"]}, "is not a name:port,port entry"),
        ({"tokenSha256": SHA, "hosts": ["pypi.org:0"]}, "port must be 1-65535"),
        ({"tokenSha256": SHA, "hosts": ["*.org:443"]}, "a wildcard needs a domain of two labels"),
    ],
)
def test_the_controller_checks_a_claim_s_egress_again(egress: Any, message: str) -> None:
    with pytest.raises(claims.ClaimInvalid, match=re.escape(message)):
        claims.parse_spec({"language": "python", "user": USER, "egress": egress})


def test_a_claim_gets_egress_only_within_the_controller_s_bound() -> None:
    base = KubernetesSandbox()
    with pytest.raises(claims.ClaimInvalid, match=r"SandboxController.allow_hosts is empty"):
        sandboxes.plan(egress_spec("pypi.org:443"), base, SandboxController())
    bounds = SandboxController(allow_hosts=["*.pythonhosted.org", "pypi.org:443"])
    with pytest.raises(claims.ClaimInvalid, match=r"pypi.org:80 is not within the operator's bound"):
        sandboxes.plan(egress_spec("pypi.org:443,80"), base, bounds)
    with pytest.raises(claims.ClaimInvalid, match=r"evil.org:443 is not within"):
        sandboxes.plan(egress_spec("evil.org:443,80"), base, bounds)
    plan = sandboxes.plan(egress_spec("pypi.org:443", "files.pythonhosted.org:443,80"), base, bounds)
    assert plan.egress == manifests.EgressSpec(
        SHA,
        ("pypi.org:443", "files.pythonhosted.org:443,80"),
        ("pypi.org:443", "files.pythonhosted.org:443,80"),
        (),
        False,
    )
    assert plan.limits.allow_hosts == ("pypi.org:443", "files.pythonhosted.org:443", "files.pythonhosted.org:80")
    # The sandbox the controller makes: the namespace's egress annotations, the egress-proxy policy,
    # and a pod whose command reads the proxy variables from the gate line.
    ident = manifests.SandboxIdentity("sandbox-0123abcd", "k-1", "python", "o", USER, "2026-01-01T00:00:00Z")
    objects = expected_objects(plan.settings, LANGUAGES["python"], plan.limits, ident, "t", "sandbox-1", plan.egress)
    notes = objects.namespace["metadata"]["annotations"]
    assert notes[manifests.ANNOTATION_EGRESS_TOKEN] == SHA
    assert notes[manifests.ANNOTATION_EGRESS_WIDENING] == "false"
    assert objects.egress_policy is not None and objects.egress_policy["metadata"]["name"] == "egress-proxy"
    assert "read -r _ egress" in " ".join(objects.pod["spec"]["containers"][0]["command"])
    plain = sandboxes.plan(claims.ClaimSpec("python", USER), base, bounds)
    assert plain.egress is None and plain.limits.allow_hosts == ()
    assert plain.pool_key == plan.pool_key  # which is why egress claims never take a pooled sandbox (handlers.serve)


def test_the_controller_s_bound_is_checked_as_a_setting() -> None:
    with pytest.raises(ConfigError, match="SandboxController.allow_hosts"):
        SandboxController(allow_hosts=["10.0.0.1"]).validate()
    SandboxController(allow_hosts=["pypi.org", "*.pythonhosted.org:443"]).validate()


def claim(allow: str | None = None, deny: str | None = None) -> dict[str, Any]:
    notes = {}
    if allow is not None:
        notes[claims.ANNOTATION_EGRESS_ALLOW] = allow
    if deny is not None:
        notes[claims.ANNOTATION_EGRESS_DENY] = deny
    return {"metadata": {"annotations": notes}}


def test_the_lists_a_kernel_writes_on_its_claim_never_go_beyond_the_claim_s_hosts() -> None:
    egress = claims.ClaimEgress(SHA, ("*.example.org:443,80", "pypi.org:443"))
    assert claims.egress_lists(claim(), egress) == (egress.hosts, (), [])
    assert claims.egress_lists(claim("a.example.org:443", "b.example.org:443,80"), egress) == (
        ("a.example.org:443",),
        ("b.example.org:443,80",),
        [],
    )
    allow, deny, refused = claims.egress_lists(
        claim("pypi.org:443,80 evil.org:443 10.0.0.1:443 a.example.org:443 x", ""), egress
    )
    assert (allow, deny) == (("a.example.org:443",), ())
    assert [r.split(":", 1)[0] for r in refused] == [
        claims.ANNOTATION_EGRESS_ALLOW,
        claims.ANNOTATION_EGRESS_ALLOW,
        "pypi.org",
        "evil.org",
    ], refused
    assert claims.egress_lists(claim(""), egress)[0] == ()  # %sandbox deny of everything


class RecordingApi:
    def __init__(self, namespace: dict[str, Any] | None) -> None:
        self.namespace = namespace
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        return self.namespace

    def patch_namespace(self, name: str, labels: dict[str, Any], annotations: dict[str, Any]) -> None:
        self.patches.append((name, annotations))


def ready_claim(allow: str, uid: str = "u-1") -> dict[str, Any]:
    body = claims.claim_object("python-1", "kernels", egress_spec("*.example.org:443"), "t")
    body["metadata"]["uid"] = uid
    body["metadata"]["annotations"][claims.ANNOTATION_EGRESS_ALLOW] = allow
    body["status"] = {"phase": "Ready", "namespace": "sandbox-0123abcd", "pod": "sandbox-1"}
    return body


def test_the_controller_copies_a_claim_s_lists_to_its_own_sandbox_once_per_change() -> None:
    notes = {claims.ANNOTATION_CLAIM_UID: "u-1", manifests.ANNOTATION_EGRESS_TOKEN: SHA}
    api = RecordingApi({"metadata": {"annotations": notes}})
    lists = controller_egress.RunningLists()
    lists.apply(api, ready_claim("a.example.org:443"))  # type: ignore[arg-type]
    lists.apply(api, ready_claim("a.example.org:443"))  # type: ignore[arg-type]  # a heartbeat: nothing to do
    lists.apply(api, ready_claim("a.example.org:443 evil.org:443"))  # type: ignore[arg-type]  # evil.org left out
    lists.apply(api, ready_claim(""))  # type: ignore[arg-type]
    allow = manifests.ANNOTATION_EGRESS_ALLOW
    assert [(ns, a[allow]) for ns, a in api.patches] == [
        ("sandbox-0123abcd", "a.example.org:443"),
        ("sandbox-0123abcd", ""),
    ]
    other = RecordingApi({"metadata": {"annotations": {**notes, claims.ANNOTATION_CLAIM_UID: "u-2"}}})
    lists.apply(other, ready_claim("a.example.org:443"))  # type: ignore[arg-type]  # not this claim's sandbox
    pending = ready_claim("a.example.org:443", uid="u-3")
    pending["status"]["phase"] = "Pending"
    lists.apply(other, pending)  # type: ignore[arg-type]
    assert other.patches == []


def test_the_kernel_takes_the_proxy_s_address_from_the_claim_and_patches_the_claim() -> None:
    kernel = KubernetesEgress(("*.example.org",), False, "sandbox-kernel-system/sandbox-egress-proxy")
    kernel.claim_egress()
    status = claims.ClaimStatus("Ready", "sandbox-0123abcd", "sandbox-1", False, "", "")
    with pytest.raises(SandboxStartError, match="without the egress proxy's address"):
        kernel.attach_to_claim(None, ("kernels", "python-1"), status)  # type: ignore[arg-type]

    class Api:
        def __init__(self) -> None:
            self.patched: list[tuple[str, str, dict[str, str]]] = []

        def patch_claim_annotations(self, namespace: str, name: str, notes: dict[str, str], action: str) -> None:
            self.patched.append((namespace, name, notes))

    api = Api()
    kernel.attach_to_claim(
        api,
        ("kernels", "python-1"),
        claims.ClaimStatus("Ready", "sandbox-0123abcd", "sandbox-1", False, "", "10.96.0.9:3128"),
    )  # type: ignore[arg-type]
    assert dict(kernel.gate_variables())["HTTPS_PROXY"] == f"http://sandbox:{kernel.token}@10.96.0.9:3128"
    assert not kernel.changed()
    kernel.deny(["a.example.org"])
    assert kernel.changed()
    assert api.patched == [
        (
            "kernels",
            "python-1",
            {
                claims.ANNOTATION_EGRESS_ALLOW: "*.example.org:443,80",
                claims.ANNOTATION_EGRESS_DENY: "a.example.org:443,80",
            },
        )
    ]


def test_a_claim_s_status_gives_the_kernel_only_a_well_formed_proxy_address() -> None:
    for given, kept in (("10.96.0.9:3128", "10.96.0.9:3128"), ("evil.example:3128", ""), ("10.96.0.9:3128 x", "")):
        status = claims.parse_status({"status": {"phase": "Ready", "egressProxy": given}})
        assert status is not None and status.egress_proxy == kept


def test_no_early_claim_with_an_allow_list_the_session_draws_the_credential() -> None:
    from traitlets.config import Config

    from sandbox_kernel.kubernetes import early

    config = Config()
    config.KubernetesSandbox.mode = "claims"
    config.Sandbox.allow_hosts = ["pypi.org"]
    with pytest.raises(ValueError, match="no early claim"):
        early.start_early(config, "python")
