"""Controlled egress on Kubernetes, the pure parts (sandbox_kernel/kubernetes/egress.py and the
builders in manifests.py, pod_command.py): whole dicts, the gate line as a real /bin/sh reads it,
the running list and the settings. The cluster side is tests/e2e/test_egress_kubernetes.py."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from concurrent.futures import Future
from typing import Any

import pytest
from traitlets.config import Config

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import ConfigError
from sandbox_kernel.kubernetes import early, manifests, pod_command
from sandbox_kernel.kubernetes.commands import rendered_objects
from sandbox_kernel.kubernetes.egress import KubernetesEgress, initial_spec, parse_proxy_setting, proxy_variables
from sandbox_kernel.kubernetes.provision import PreparedSandbox, expected_objects
from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

IDENT = manifests.SandboxIdentity(
    namespace="sandbox-0123abcd",
    kernel_id="kernel-1",
    language="python",
    owner="sandbox-kernel",
    user="system:serviceaccount:sandbox-kernel-system:sandbox-kernel",
    created="2025-01-02T03:04:05Z",
)
TOKEN = "ab" * 32
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()


def test_the_namespace_carries_the_hash_and_the_lists_never_the_token() -> None:
    spec = initial_spec(("pypi.org", "*.pythonhosted.org", "example.org:8443"), False, TOKEN)
    ns = manifests.namespace(IDENT, spec)
    assert ns["metadata"]["annotations"] == {
        "sandbox-kernel/created": "2025-01-02T03:04:05Z",
        "sandbox-kernel/user": "system:serviceaccount:sandbox-kernel-system:sandbox-kernel",
        "sandbox-kernel/egress-token-sha256": DIGEST,
        "sandbox-kernel/egress-operator": "pypi.org:443,80 *.pythonhosted.org:443,80 example.org:8443",
        "sandbox-kernel/egress-widening": "false",
        "sandbox-kernel/egress-allow": "pypi.org:443,80 *.pythonhosted.org:443,80 example.org:8443",
        "sandbox-kernel/egress-deny": "",
    }
    assert TOKEN not in str(ns)
    assert manifests.namespace(IDENT) == manifests.namespace(IDENT, None)
    assert "sandbox-kernel/egress-token-sha256" not in manifests.namespace(IDENT)["metadata"]["annotations"]


def test_the_egress_policy_opens_the_proxy_pods_port_and_nothing_else() -> None:
    assert manifests.egress_network_policy(IDENT) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "egress-proxy", "namespace": "sandbox-0123abcd", "labels": manifests._labels(IDENT)},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "sandbox"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "sandbox-kernel-system"}
                            },
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "sandbox-egress-proxy"}},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 3128}],
                }
            ],
        },
    }


def test_the_egress_policy_exists_only_with_an_allow_list() -> None:
    settings, limits = KubernetesSandbox(), Sandbox().limits()
    plain = [
        o["metadata"]["name"] for o in expected_objects(settings, LANGUAGES["python"], limits, IDENT, "t").in_order()
    ]
    spec = initial_spec(("pypi.org",), False, TOKEN)
    with_egress = expected_objects(settings, LANGUAGES["python"], limits, IDENT, "t", egress=spec).in_order()
    names = [o["metadata"]["name"] for o in with_egress]
    assert "egress-proxy" not in plain
    assert names == [*plain[: plain.index("deny-all") + 1], "egress-proxy", *plain[plain.index("deny-all") + 1 :]]
    assert with_egress[0] == manifests.namespace(IDENT, spec)
    rendered = rendered_objects("python", limits=Sandbox(allow_hosts=["pypi.org"]).limits())
    assert [o["metadata"]["name"] for o in rendered if o["kind"] == "NetworkPolicy"] == ["deny-all", "egress-proxy"]


def _shell_env(gate: bytes, shell_as_init: bool = False, egress: bool = True) -> dict[str, str]:
    """Run the pod's real command line under /bin/sh (guard off, `env` for the agent) and return
    the environment the agent would get after this gate line."""
    command = pod_command.agent_command("python3", "python_agent.py", 0, shell_as_init, egress)[2]
    command = command.replace("python3 /opt/sandbox-agent/python_agent.py", "/usr/bin/env")
    out = subprocess.run(["/bin/sh", "-c", command], input=gate, capture_output=True, timeout=10, check=True).stdout
    return dict(line.split("=", 1) for line in out.decode().splitlines())


def test_the_gate_line_hands_the_proxy_variables_to_the_agent_only() -> None:
    plain = {"HOME": "/home/sandbox", "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    assert pod_command.gate_line() == pod_command.GATE_LINE == b"go\n"
    assert _shell_env(pod_command.GATE_LINE) == _shell_env(pod_command.GATE_LINE, egress=False) == plain
    # A sandbox without egress keeps the command it always had: the rest of its gate line goes nowhere.
    assert _shell_env(pod_command.gate_line([("HTTP_PROXY", "http://x:1")]), egress=False) == plain
    assert "$egress" not in pod_command.agent_command("python3", "python_agent.py")[2]
    url = f"http://sandbox:{TOKEN}@10.96.12.34:3128"
    for shell_as_init in (False, True):
        env = _shell_env(pod_command.gate_line(proxy_variables(url)), shell_as_init)
        assert env == {**plain, **dict(proxy_variables(url))}
        assert (
            env["HTTPS_PROXY"] == env["http_proxy"] == env["PIP_PROXY"] == url
            and env["NO_PROXY"] == "localhost,127.0.0.1,::1"
        )


@pytest.mark.parametrize("value", ["a b", "x;rm -rf /", "$(id)", "*", "'q'", "a\nb", ""])
def test_the_gate_line_takes_only_plain_words(value: str) -> None:
    with pytest.raises(ValueError):
        pod_command.gate_line([("HTTP_PROXY", value)])
    with pytest.raises(ValueError):
        pod_command.gate_line([("BAD NAME", "x")])


def test_allow_and_deny_narrow_the_operator_list_and_patch_only_the_lists() -> None:
    egress = KubernetesEgress(("*.example.org", "pypi.org"), False, "sandbox-kernel-system/sandbox-egress-proxy")
    first = egress.new_namespace()
    assert len(egress.token) == 64 and first.token_sha256 == hashlib.sha256(egress.token.encode()).hexdigest()
    egress.deny(["*.example.org"])
    egress.allow(["api.example.org"])  # covered by the operator's wildcard: may come back
    with pytest.raises(ValueError, match="can only narrow"):
        egress.allow(["evil.org"])
    spec = egress.spec()
    assert spec.operator == ("*.example.org:443,80", "pypi.org:443,80")
    assert spec.allow == ("pypi.org:443,80", "api.example.org:443,80") and spec.deny == ()
    assert manifests.egress_list_patch(spec.allow, spec.deny) == {
        "sandbox-kernel/egress-allow": "pypi.org:443,80 api.example.org:443,80",
        "sandbox-kernel/egress-deny": "",
    }
    assert egress.new_namespace().token_sha256 != first.token_sha256  # a new namespace, a new credential
    widening = KubernetesEgress(("pypi.org",), True, "10.96.0.9:3128")
    assert widening.allow(["evil.org"]) == "evil.org is allowed" and widening.spec().widening


def test_the_proxy_setting() -> None:
    assert parse_proxy_setting("sandbox-kernel-system/sandbox-egress-proxy") == (
        "sandbox-kernel-system",
        "sandbox-egress-proxy",
    )
    assert parse_proxy_setting("10.96.0.9:3128") == ("10.96.0.9", 3128)
    for bad in ("proxy.example.org:3128", "10.96.0.9", "[::1]:3128", "a/b/c", "Sys/x", "10.96.0.9:0"):
        with pytest.raises(ConfigError, match="KubernetesSandbox.egress_proxy"):
            parse_proxy_setting(bad)
    with pytest.raises(ConfigError, match="egress_proxy"):
        KubernetesSandbox(egress_proxy="nope").validate(Sandbox(allow_hosts=["pypi.org"]).limits())
    KubernetesSandbox(egress_proxy="nope").validate(Sandbox().limits())  # unused without a list


def test_claims_mode_takes_an_allow_list_but_refuses_widening_instead_of_ignoring_it() -> None:
    KubernetesSandbox(mode="claims").validate(Sandbox(allow_hosts=["pypi.org"]).limits())
    config = Config()
    config.EgressProxy.allow_widening = True
    with pytest.raises(ConfigError, match="EgressProxy.allow_widening.*claims mode"):
        KubernetesSandbox(mode="claims", config=config).validate(Sandbox(allow_hosts=["pypi.org"]).limits())


class _RecordingApi:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_namespace(self, name: str) -> bool:
        self.deleted.append(name)
        return True


def _take_over(session: KubernetesSandboxSession, prepared: PreparedSandbox, monkeypatch: pytest.MonkeyPatch) -> Any:
    future: Future[PreparedSandbox] = Future()
    future.set_result(prepared)
    monkeypatch.setattr(early, "_pending", future)
    return asyncio.run(session._claim_early())


def test_the_session_takes_over_an_early_sandbox_with_its_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    # Built with an explicit (empty) kubeconfig: the default follows $SANDBOX_KUBECONFIG, which the
    # test run exports for the e2e tier, and the early sandbox must name the session's own cluster.
    settings, limits = KubernetesSandbox(kubeconfig="", context=""), Sandbox(allow_hosts=["pypi.org"]).limits()
    objects = expected_objects(
        settings, LANGUAGES["python"], limits, IDENT, "t", egress=initial_spec(("pypi.org",), False, TOKEN)
    )
    api = _RecordingApi()
    prepared = PreparedSandbox(
        api, settings.kubeconfig, settings.context, IDENT, "t", "sandbox-1", objects.in_order(), 0.0, TOKEN
    )  # type: ignore[arg-type]
    session = KubernetesSandboxSession(LANGUAGES["python"], limits, settings, kernel_id="kernel-1")
    assert _take_over(session, prepared, monkeypatch) is prepared and session.egress is not None
    assert session.egress.token == TOKEN and api.deleted == []
    # An early sandbox made without the list (the guess missed it) is not taken: it is deleted.
    plain = expected_objects(settings, LANGUAGES["python"], Sandbox().limits(), IDENT, "t")
    prepared = PreparedSandbox(
        api, settings.kubeconfig, settings.context, IDENT, "t", "sandbox-1", plain.in_order(), 0.0
    )  # type: ignore[arg-type]
    session = KubernetesSandboxSession(LANGUAGES["python"], limits, settings, kernel_id="kernel-1")
    assert _take_over(session, prepared, monkeypatch) is None and api.deleted == [IDENT.namespace]


def test_the_admission_pattern_admits_the_egress_command_too() -> None:
    import re

    pattern = re.compile(pod_command.agent_command_pattern())
    for language in LANGUAGES.values():
        for shell_as_init in (False, True):
            for egress in (False, True):
                command = pod_command.agent_command(
                    language.interpreter, language.agent_file, 10, shell_as_init, egress
                )[2]
                assert pattern.match(command), (language.name, shell_as_init, egress)
    bad = pod_command.agent_command("python3", "python_agent.py", 10, False, True)[2].replace("$egress", "$egress; id")
    assert not pattern.match(bad)
