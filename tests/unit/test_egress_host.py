"""The local backend's egress hook (sandbox_kernel/egress/host.py), without starting anything."""

from __future__ import annotations

from pathlib import Path

from traitlets.config import Config

from sandbox_kernel.egress.host import (
    EgressController,
    EgressProxy,
    controller_for,
    proxy_env,
    sweep_stale,
)
from sandbox_kernel.local.backend import LocalSandbox


def test_no_allow_list_means_no_egress_at_all() -> None:
    assert controller_for((), LocalSandbox()) is None
    config = Config()
    config.EgressProxy.allow_widening = True
    assert controller_for((), LocalSandbox(config=config)) is not None


def test_bwrap_options_mount_the_socket_dir_read_only_and_set_the_proxy_variables() -> None:
    ctl = EgressController(["pypi.org"], EgressProxy())
    mounts = ctl.bwrap_mounts("7")
    assert mounts[:3] == ["--ro-bind", "<egress socket dir>", "/run/sandbox-egress"]
    assert ["--file", "7", "/opt/sandbox-agent/egress-relay.py"] == mounts[-3:]
    env = dict(proxy_env(3128))
    assert (
        env["HTTPS_PROXY"]
        == env["https_proxy"]
        == env["PIP_PROXY"]
        == env["npm_config_https_proxy"]
        == "http://127.0.0.1:3128"
    )
    assert "127.0.0.1" in env["NO_PROXY"]
    inner = ctl.inner("/usr/bin:/bin", ["/usr/bin/python3", "/opt/sandbox-agent/python_agent.py"])
    assert inner[2:] == [
        "/opt/sandbox-agent/egress-relay.py",
        "/run/sandbox-egress/proxy.sock",
        "3128",
        "--",
        "/usr/bin/python3",
        "/opt/sandbox-agent/python_agent.py",
    ]


def test_network_report_and_magic_errors() -> None:
    ctl = EgressController(["allowed.test"], EgressProxy())
    assert "allowed: allowed.test" in ctl.report() and "can only narrow" in ctl.report()
    assert "to: allowed.test;" in ctl.policy_line() and "HTTP(S)_PROXY" in ctl.policy_line()
    assert ctl.deny(["allowed.test"]) == "allowed.test is denied"
    assert "allowed: (nothing)" in ctl.report()


def test_stale_state_of_dead_kernels_is_swept(tmp_path: Path) -> None:
    (tmp_path / "local-999999999-1").mkdir()
    (tmp_path / "local-999999999-1.log").write_text("")
    (tmp_path / "local-1-1.log").write_text("")  # pid 1 lives
    sweep_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local-1-1.log"]


def test_kubernetes_policies_come_from_namespace_annotations(tmp_path: Path) -> None:
    import json

    from sandbox_kernel.egress import k8s_sync

    digest = "ab" * 32
    good = {
        k8s_sync.ANNOTATION_TOKEN: digest,
        k8s_sync.ANNOTATION_ALLOW: "pypi.org:443,80 *.pythonhosted.org:443",
        k8s_sync.ANNOTATION_DENY: "",
        k8s_sync.ANNOTATION_SOURCE: "10.244.0.7",
    }
    assert k8s_sync.policy_for_namespace("sandbox-1", good) == (
        digest + ".json",
        {
            "sandbox": "sandbox-1",
            "allow": ["pypi.org:443,80", "*.pythonhosted.org:443"],
            "deny": [],
            "source": "10.244.0.7",
            "log": "/dev/stdout",
        },
    )
    assert k8s_sync.policy_for_namespace("sandbox-2", None) is None
    assert k8s_sync.policy_for_namespace("sandbox-3", {**good, k8s_sync.ANNOTATION_TOKEN: "../../etc/passwd"}) is None
    assert k8s_sync.policy_for_namespace("sandbox-4", {**good, k8s_sync.ANNOTATION_ALLOW: "10.0.0.1:443"}) is None
    assert k8s_sync.policy_for_namespace("sandbox-5", {**good, k8s_sync.ANNOTATION_ALLOW: "not json"}) is None
    assert k8s_sync.policy_for_namespace("sandbox-6", {**good, k8s_sync.ANNOTATION_SOURCE: ""}) is None  # no pod yet
    assert k8s_sync.policy_for_namespace("sandbox-7", {**good, k8s_sync.ANNOTATION_DENY: "x.org:99999"}) is None
    assert k8s_sync.policy_for_namespace("sandbox-8", {**good, k8s_sync.ANNOTATION_ALLOW: "a.org:443 " * 101}) is None
    # Test-only settings come from the sync's command line, never from a namespace.
    assert k8s_sync.policy_for_namespace("sandbox-9", {**good, "hosts_file": "/etc/hosts"})[1].get("hosts_file") is None  # type: ignore[index]
    testing = k8s_sync.testing_options(["--hosts-file", "/h", "--exempt-network", "10.244.0.0/24"])
    assert testing == {"hosts_file": "/h", "exempt_networks": ["10.244.0.0/24"]}
    assert not (tmp_path / k8s_sync.SYNCED_MARKER).exists()  # a new proxy pod: not started yet
    k8s_sync.sync(tmp_path, [("sandbox-1", good)], testing)
    assert (tmp_path / k8s_sync.SYNCED_MARKER).exists()  # the sync container's startupProbe passes
    assert [p.name for p in tmp_path.glob("*.json")] == [digest + ".json"]
    assert json.loads((tmp_path / (digest + ".json")).read_text())["exempt_networks"] == ["10.244.0.0/24"]
    # One credential hash on two namespaces (a kernel copied another's): neither gets a policy.
    k8s_sync.sync(tmp_path, [("sandbox-1", good), ("sandbox-x", {**good, k8s_sync.ANNOTATION_ALLOW: "evil.org:443"})])
    assert list(tmp_path.glob("*.json")) == []
    k8s_sync.sync(tmp_path, [("sandbox-1", good)])
    k8s_sync.sync(tmp_path, [])
    assert [p.name for p in tmp_path.iterdir()] == [k8s_sync.SYNCED_MARKER]


def test_magic_on_a_sandbox_without_egress() -> None:
    import types

    import pytest

    from sandbox_kernel.egress.host import magic
    from sandbox_kernel.errors import ConfigError

    session = types.SimpleNamespace(backend="kubernetes", egress=None)
    assert "Sandbox.allow_hosts is empty" in magic(session, "network", [])
    with pytest.raises(ConfigError, match="started without egress"):
        magic(session, "allow", ["pypi.org"])
