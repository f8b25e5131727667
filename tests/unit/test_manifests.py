"""The Kubernetes manifests, built by pure functions and compared as whole dicts (no cluster, no mocks).

Also the pure readings of pod and lease status that decide what the notebook is told, and the
settings validation of the Kubernetes backend.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from datetime import datetime, timedelta, timezone

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import ConfigError, Evicted, OutOfMemory, SandboxLost, SandboxStartError
from sandbox_kernel.kubernetes import manifests, pod_command
from sandbox_kernel.kubernetes.pod_status import end_reason, eviction_event, start_problem
from sandbox_kernel.kubernetes.settings import KubernetesSandbox, current_kernel_id
from sandbox_kernel.kubernetes.commands import heartbeat_expiry, is_ours, rendered_objects, verdict
from sandbox_kernel.languages import LANGUAGES

REPO = Path(__file__).resolve().parents[2]

IDENT = manifests.SandboxIdentity(
    namespace="sandbox-0123abcd",
    kernel_id="5f0c1a2b-0000-4000-8000-000000000001",
    language="python",
    owner="sandbox-kernel",
    user="system:serviceaccount:sandbox-kernel-system:sandbox-kernel",
    created="2025-01-02T03:04:05Z",
)
LABELS = {
    "app.kubernetes.io/managed-by": "sandbox-kernel",
    "sandbox-kernel/kernel-id": "5f0c1a2b-0000-4000-8000-000000000001",
    "sandbox-kernel/language": "python",
    "sandbox-kernel/owner": "sandbox-kernel",
}


def meta(name: str) -> dict:
    return {"name": name, "namespace": "sandbox-0123abcd", "labels": LABELS}


def test_namespace() -> None:
    assert manifests.namespace(IDENT) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "sandbox-0123abcd",
            "labels": {
                **LABELS,
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
            "annotations": {
                "sandbox-kernel/created": "2025-01-02T03:04:05Z",
                "sandbox-kernel/user": "system:serviceaccount:sandbox-kernel-system:sandbox-kernel",
            },
        },
    }


def test_resource_quota_has_the_original_design_values() -> None:
    assert manifests.resource_quota(IDENT, manifests.QuotaSpec()) == {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": meta("sandbox-quota"),
        "spec": {
            "hard": {
                "requests.cpu": "500m",
                "requests.memory": "256Mi",
                "limits.cpu": "1",
                "limits.memory": "512Mi",
                "pods": "3",
                "persistentvolumeclaims": "0",
                "services": "0",
            }
        },
    }


def test_limit_range_has_the_original_design_values() -> None:
    assert manifests.limit_range(IDENT, manifests.LimitRangeSpec()) == {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": meta("sandbox-limits"),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "max": {"cpu": "500m", "memory": "256Mi"},
                    "min": {"cpu": "10m", "memory": "10Mi"},
                    "default": {"cpu": "250m", "memory": "128Mi"},
                    "defaultRequest": {"cpu": "100m", "memory": "64Mi"},
                }
            ]
        },
    }


def test_network_policy_denies_everything() -> None:
    assert manifests.network_policy(IDENT) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("deny-all"),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def test_config_map_carries_the_agent_source_verbatim() -> None:
    assert manifests.agent_config_map(IDENT, {"python_agent.py": "print('hi')\n"}) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("sandbox-agent"),
        "immutable": True,
        "data": {"python_agent.py": "print('hi')\n"},
    }


def test_heartbeat_lease() -> None:
    assert manifests.heartbeat_lease(IDENT, 60, "2025-01-02T03:04:05.000000Z") == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta("sandbox-heartbeat"),
        "spec": {
            "holderIdentity": "5f0c1a2b-0000-4000-8000-000000000001",
            "leaseDurationSeconds": 60,
            "acquireTime": "2025-01-02T03:04:05.000000Z",
            "renewTime": "2025-01-02T03:04:05.000000Z",
        },
    }


def test_role_binding_for_a_service_account_and_for_a_user() -> None:
    sa = manifests.Subject.from_username("system:serviceaccount:sandbox-kernel-system:sandbox-kernel")
    assert manifests.role_binding(IDENT, sa, "sandbox-kernel-sandbox") == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta("sandbox-kernel"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sandbox-kernel-sandbox"},
        "subjects": [{"kind": "ServiceAccount", "name": "sandbox-kernel", "namespace": "sandbox-kernel-system"}],
    }
    user = manifests.Subject.from_username("alice@example.com")
    assert manifests.role_binding(IDENT, user, "r")["subjects"] == [
        {"kind": "User", "name": "alice@example.com", "apiGroup": "rbac.authorization.k8s.io"}
    ]


def test_pod_passes_restricted_as_written() -> None:
    spec = manifests.PodSpec(
        name="sandbox-1", image="python:3.12-slim-bookworm", interpreter="python3", agent_file="python_agent.py"
    )
    assert manifests.pod(IDENT, spec) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "sandbox-1",
            "namespace": "sandbox-0123abcd",
            "labels": {**LABELS, "app.kubernetes.io/name": "sandbox"},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 43200,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "agent",
                    "image": "python:3.12-slim-bookworm",
                    "imagePullPolicy": "IfNotPresent",
                    "command": [
                        "/bin/sh",
                        "-c",
                        "python3 -c "
                        + shlex.quote(
                            pod_command.POLICY_GUARDS["python3"][2].replace("WAIT", "10").replace("PORTS", "6443,10250")
                        )
                        + " && read -r _ && exec env -i HOME=/home/sandbox PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "
                        "python3 /opt/sandbox-agent/python_agent.py",
                    ],
                    "stdin": True,
                    "stdinOnce": False,
                    "tty": False,
                    "workingDir": "/home/sandbox",
                    "env": [
                        {"name": "HOME", "value": "/home/sandbox"},
                        {"name": "PATH", "value": "/usr/local/bin:/usr/bin:/bin"},
                        {"name": "LANG", "value": "C.UTF-8"},
                    ],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"cpu": "500m", "memory": "256Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                        "privileged": False,
                    },
                    "volumeMounts": [
                        {"name": "home", "mountPath": "/home/sandbox"},
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "agent", "mountPath": "/opt/sandbox-agent", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "home", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "agent", "configMap": {"name": "sandbox-agent", "defaultMode": 0o444}},
            ],
        },
    }


def test_agent_command_gate_and_policy_guard() -> None:
    assert pod_command.agent_command("bash", "bash_agent.sh", policy_wait=0) == [
        "/bin/sh",
        "-c",
        "read -r _ && exec env -i HOME=/home/sandbox PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 bash /opt/sandbox-agent/bash_agent.sh",
    ]
    for interpreter in ("python3", "node", "bash"):
        command = pod_command.agent_command(interpreter, "agent", policy_wait=7)[2]
        # The guard first (it overlaps the kernel attaching), then the gate, then the agent.
        assert command.startswith(f"{interpreter} -")
        assert (
            "WAIT" not in command
            and "7" in command
            and command.endswith(
                f" && read -r _ && exec env -i HOME=/home/sandbox PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 {interpreter} /opt/sandbox-agent/agent"
            )
        )


def test_policy_guard_also_probes_ipv6_link_local() -> None:
    # Every guard reads the pod's IPv6 addresses and, if it has any besides loopback, tries the
    # node's link-local address (EUI-64 of the IPv4 gateway's MAC, IPv6 default routes) on the
    # API server's and kubelet's ports; the placeholders are all filled in.
    assert pod_command.IPV6_PORTS == (6443, 10250)
    for interpreter in ("python3", "node", "bash"):
        command = pod_command.agent_command(interpreter, "agent", policy_wait=7)[2]
        for needle in (
            "/proc/net/if_inet6",
            "/proc/net/ipv6_route",
            "/proc/net/arp",
            "/proc/net/route",
            "fe80::",
            "6443",
            "10250",
        ):
            assert needle in command, (interpreter, needle)
        assert "PORTS" not in command and "WAIT" not in command


def test_admission_policy_admits_exactly_the_commands_agent_command_builds() -> None:
    """k8s/rbac/admission-policy.yaml carries agent_command_pattern() verbatim (regenerate it there
    when the guard or the gate changes); the pattern admits the backend's commands and nothing
    that runs other code before, beside or instead of the guard."""
    import re
    from pathlib import Path

    import yaml

    policy_file = Path(__file__).resolve().parents[2] / "k8s" / "rbac" / "admission-policy.yaml"
    docs = [d for d in yaml.safe_load_all(policy_file.read_text()) if d]
    policy = next(
        d
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"] == "sandbox-kernel-pods-command"
    )
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    pattern = pod_command.agent_command_pattern()
    assert variables["commandPattern"] == "r'''" + pattern + "'''", (
        "regenerate commandPattern from agent_command_pattern()"
    )
    assert "'''" not in pattern  # it must fit in a CEL raw string
    matches = re.compile(pattern).match  # RE2's syntax, as used here, is a subset of Python's
    for language in LANGUAGES.values():
        for shell_as_init in (False, True):
            for wait in (1, 10, 9999):
                command = pod_command.agent_command(language.interpreter, language.agent_file, wait, shell_as_init)
                assert command[:2] == ["/bin/sh", "-c"] and matches(command[2]), (language.name, shell_as_init, wait)
    good = pod_command.agent_command("python3", "python_agent.py", 10)[2]
    guard = good.split(" && read -r _")[0]
    for bad in [
        good + "; evil",
        good + " & evil",
        good + "\nevil",
        "evil; " + good,
        guard + " || evil",
        good.replace(" && read -r _", " || read -r _"),
        pod_command.agent_command("python3", "python_agent.py", 0)[2],
        good.replace("exec env -i", "exec env -i KUBERNETES_SERVICE_HOST=x"),
    ]:
        assert not matches(bad), bad


def test_pod_scheduling_options_appear_only_when_set() -> None:
    toleration = {"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}
    spec = manifests.PodSpec(
        name="sandbox-2",
        image="img",
        interpreter="node",
        agent_file="node_agent.js",
        image_pull_secrets=("regcred",),
        node_selector=(("pool", "sandbox"),),
        tolerations=(toleration,),
        runtime_class_name="gvisor",
    )
    body = manifests.pod(IDENT, spec)["spec"]
    assert body["imagePullSecrets"] == [{"name": "regcred"}]
    assert body["nodeSelector"] == {"pool": "sandbox"}
    assert body["tolerations"] == [toleration]
    assert body["runtimeClassName"] == "gvisor"


def test_settings_flow_into_the_pod_and_quota() -> None:
    settings = KubernetesSandbox(
        images={"python": "registry.example/py:1"},
        node_selector={"pool": "sandbox"},
        pod_lifetime=600,
        quota_pods=5,
        limit_range_max_memory="1Gi",
        quota_limits_memory="2Gi",
        quota_requests_memory="1Gi",
    )
    limits = Sandbox(memory_limit="512Mi", cpu_limit="250m", scratch_size="32Mi").limits()
    objects = rendered_objects("python", "abcdef12-0000", settings=settings, limits=limits)
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "Namespace",
        "RoleBinding",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "ConfigMap",
        "Lease",
        "Pod",
    ]
    pod = objects[-1]
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["namespace"] == "sandbox-abcdef12"
    assert container["image"] == "registry.example/py:1"
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "512Mi"}
    assert pod["spec"]["volumes"][0] == {"name": "home", "emptyDir": {"medium": "Memory", "sizeLimit": "32Mi"}}
    assert pod["spec"]["activeDeadlineSeconds"] == 600
    assert pod["spec"]["nodeSelector"] == {"pool": "sandbox"}
    assert objects[2]["spec"]["hard"]["pods"] == "5"
    assert objects[5]["data"] == {"python_agent.py": LANGUAGES["python"].agent_source()}


def test_image_environment_variables_are_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_IMAGE_PYTHON", "localhost/sandbox-python:3.11")
    monkeypatch.setenv("SANDBOX_KUBECONFIG", "/tmp/admin.kubeconfig")
    for language in ("NODE", "BASH"):  # the test cluster's images.env may be exported
        monkeypatch.delenv(f"SANDBOX_IMAGE_{language}", raising=False)
    settings = KubernetesSandbox()
    assert settings.image(LANGUAGES["python"]) == "localhost/sandbox-python:3.11"
    assert settings.image(LANGUAGES["bash"]) == "bash:5.2"
    assert settings.kubeconfig == "/tmp/admin.kubeconfig"


@pytest.mark.parametrize(
    "settings,limits,setting",
    [
        ({"limit_range_max_memory": "128Mi"}, {}, "Sandbox.memory_limit"),
        ({"quota_requests_cpu": "50m"}, {}, "Sandbox.cpu_request"),
        ({"quota_limits_memory": "12XB"}, {}, "KubernetesSandbox.quota_limits_memory"),
        ({"heartbeat_ttl": 5, "heartbeat_interval": 10}, {}, "KubernetesSandbox.heartbeat_ttl"),
        ({"namespace_prefix": "Sandbox_"}, {}, "KubernetesSandbox.namespace_prefix"),
        ({}, {"memory_limit": "1Gi"}, "Sandbox.memory_limit"),
        # HOME and /tmp are tmpfs within the memory limit: at least 32Mi must be left beside them.
        ({}, {"memory_limit": "100Mi"}, "Sandbox.memory_limit"),
        ({"tmp_size": "200Mi"}, {}, "Sandbox.memory_limit"),
        ({"tmp_size": "16MB"}, {}, "KubernetesSandbox.tmp_size"),
        ({"seccomp_profile": "/var/lib/kubelet/seccomp/x.json"}, {}, "KubernetesSandbox.seccomp_profile"),
        ({"seccomp_profile": "profiles/../../x.json"}, {}, "KubernetesSandbox.seccomp_profile"),
        ({"seccomp_profile": "profiles/x json"}, {}, "KubernetesSandbox.seccomp_profile"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict, limits: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        KubernetesSandbox(**settings).validate(Sandbox(**limits).limits())
    assert info.value.setting == setting


def test_scratch_and_tmp_fit_beside_the_interpreter_in_the_memory_limit() -> None:
    KubernetesSandbox().validate(Sandbox(memory_limit="112Mi").limits())  # 64Mi + 16Mi + 32Mi
    KubernetesSandbox(tmp_size="8Mi").validate(Sandbox(memory_limit="64Mi", scratch_size="24Mi").limits())
    with pytest.raises(ConfigError, match=r"leaves 31Mi beside the scratch volume .* held in memory"):
        KubernetesSandbox().validate(Sandbox(memory_limit="111Mi").limits())


def test_seccomp_profile_setting_selects_runtime_default_or_localhost() -> None:
    limits = Sandbox().limits()
    default = rendered_objects("python", settings=KubernetesSandbox(images={}), limits=limits)[-1]
    assert default["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert KubernetesSandbox().seccomp_profile == ""
    settings = KubernetesSandbox(images={}, seccomp_profile=manifests.SECCOMP_PROFILE)
    pod = rendered_objects("python", settings=settings, limits=limits)[-1]
    assert pod["spec"]["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/sandbox-kernel.json",
    }
    assert "seccompProfile" not in pod["spec"]["containers"][0]["securityContext"]  # the pod's applies


def test_admission_policy_admits_exactly_runtime_default_and_the_project_s_profile() -> None:
    """sandbox-kernel-pods-command names manifests.SECCOMP_PROFILE (and nothing else) as the one
    Localhost profile; the list is evaluated here the way its CEL does, on every profile the pod names."""
    from pathlib import Path

    import yaml

    policy_file = Path(__file__).resolve().parents[2] / "k8s" / "rbac" / "admission-policy.yaml"
    docs = [d for d in yaml.safe_load_all(policy_file.read_text()) if d]
    policy = next(
        d
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"] == "sandbox-kernel-pods-command"
    )
    [check] = [v["expression"] for v in policy["spec"]["validations"] if "seccompProfiles" in v["expression"]]
    assert f"['RuntimeDefault', 'Localhost {manifests.SECCOMP_PROFILE}']" in check
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert (
        "object.spec.containers.filter(c, has(c.securityContext) && has(c.securityContext.seccompProfile))"
        in variables["seccompProfiles"]
    )


def test_owner_label_and_kernel_id(monkeypatch: pytest.MonkeyPatch) -> None:
    assert manifests.owner_label("system:serviceaccount:team-a:notebooks") == "notebooks"
    assert manifests.owner_label("alice@example.com") == "alice-example.com"
    assert manifests.owner_label("::") == "unknown"
    monkeypatch.delenv("SANDBOX_KERNEL_ID", raising=False)
    monkeypatch.setattr("sys.argv", ["x", "-f", "/run/jupyter/kernel-1b2c3d4e-aaaa-bbbb-cccc-000000000000.json"])
    assert current_kernel_id() == "1b2c3d4e-aaaa-bbbb-cccc-000000000000"


# ---------------------------------------------------------------------------------------------
# What the notebook is told, from pod status (shapes as the API server returns them).

LIMITS = Sandbox().limits()


def pod_with(status: dict) -> dict:
    return {"metadata": {"name": "sandbox-1"}, "status": status}


def test_oomkilled_container_is_out_of_memory_with_the_limit() -> None:
    pod = pod_with(
        {
            "phase": "Failed",
            "containerStatuses": [{"name": "agent", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}],
        }
    )
    reason = end_reason(pod, LIMITS, 43200)
    assert isinstance(reason, OutOfMemory)
    assert "out of memory (limit 256Mi)" in str(reason)


def test_eviction_carries_the_kubelets_message() -> None:
    message = 'Usage of EmptyDir volume "home" exceeds the limit "64Mi".'
    reason = end_reason(pod_with({"phase": "Failed", "reason": "Evicted", "message": message}), LIMITS, 43200)
    assert isinstance(reason, Evicted) and message in str(reason)


def test_an_eviction_event_explains_a_cleanly_exited_pod() -> None:
    events = [
        {
            "reason": "Killing",
            "involvedObject": {"kind": "Pod", "name": "sandbox-1"},
            "message": "Stopping container agent",
        },
        {
            "reason": "Evicted",
            "involvedObject": {"kind": "Pod", "name": "sandbox-1"},
            "message": 'Usage of EmptyDir volume "home" exceeds the limit "64Mi". ',
        },
    ]
    reason = eviction_event(events, "sandbox-1")
    assert isinstance(reason, Evicted)
    assert str(reason).startswith(
        'Kubernetes evicted the sandbox pod: Usage of EmptyDir volume "home" exceeds the limit "64Mi". A new'
    )
    assert eviction_event(events, "sandbox-2") is None


def test_deadline_and_exit_codes_and_deletion() -> None:
    assert "maximum lifetime of 600 s" in str(
        end_reason(pod_with({"phase": "Failed", "reason": "DeadlineExceeded"}), LIMITS, 600)
    )
    exited = end_reason(
        pod_with(
            {
                "phase": "Failed",
                "containerStatuses": [{"name": "agent", "state": {"terminated": {"reason": "Error", "exitCode": 3}}}],
            }
        ),
        LIMITS,
        600,
    )
    assert isinstance(exited, SandboxLost) and "exit code 3" in str(exited)
    assert isinstance(end_reason(None, LIMITS, 600), SandboxLost)
    running = pod_with({"phase": "Running", "containerStatuses": [{"name": "agent", "state": {"running": {}}}]})
    assert end_reason(running, LIMITS, 600) is None


def test_policy_guard_exit_says_the_network_policy_is_not_enforced() -> None:
    pod = pod_with(
        {
            "phase": "Failed",
            "containerStatuses": [{"name": "agent", "state": {"terminated": {"reason": "Error", "exitCode": 97}}}],
        }
    )
    assert "NetworkPolicy is not enforced" in str(end_reason(pod, LIMITS, 600))


def test_relay_exit_names_the_stream_relay_setting() -> None:
    pod = pod_with(
        {
            "phase": "Failed",
            "containerStatuses": [{"name": "agent", "state": {"terminated": {"reason": "Error", "exitCode": 96}}}],
        }
    )
    problem = end_reason(pod, LIMITS, 600)
    assert isinstance(problem, SandboxStartError) and "user and PID namespace" in str(problem), problem
    assert "KubernetesSandbox.stream_relay" in str(problem.hint), problem.hint


@pytest.mark.parametrize(
    "runtime_class, relay, language, expected",
    [
        ("", "auto", "python", ""),
        ("gvisor", "auto", "python", "relay.py"),
        ("gvisor", "auto", "node", "relay.js"),
        ("gvisor", "auto", "bash", ""),
        ("gvisor", "off", "python", ""),
        ("", "on", "node", "relay.js"),
    ],
)
def test_the_stream_relay_runs_in_place_of_the_agent(
    runtime_class: str, relay: str, language: str, expected: str
) -> None:
    """stream_relay 'auto' follows runtime_class_name; a relayed pod runs the relay (the admission
    policy's command pattern admits it) and its ConfigMap carries the relay beside the agent."""
    settings = KubernetesSandbox(runtime_class_name=runtime_class, stream_relay=relay)
    objects = {o["kind"]: o for o in rendered_objects(language, "abcdef12-0000", settings=settings)}
    agent = LANGUAGES[language].agent_file
    command = objects["Pod"]["spec"]["containers"][0]["command"][2]
    data = objects["ConfigMap"]["data"]
    assert re.fullmatch(pod_command.agent_command_pattern(), command), command
    if expected:
        assert f"{pod_command.AGENT_DIR}/{expected}" in command and agent not in command, command
        assert set(data) == {agent, expected}, set(data)
        assert data[expected] == (REPO / "sandbox_kernel" / "agents" / expected).read_text()
    else:
        assert f"{pod_command.AGENT_DIR}/{agent}" in command and "relay" not in command, command
        assert set(data) == {agent}, set(data)


def test_image_pull_errors_name_the_image_and_reason() -> None:
    pod = pod_with(
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "agent",
                    "state": {
                        "waiting": {
                            "reason": "ErrImagePull",
                            "message": 'failed to pull and unpack image "docker.io/library/nope:1": not found',
                        }
                    },
                }
            ],
        }
    )
    problem = start_problem(pod, "nope:1")
    assert isinstance(problem, SandboxStartError)
    assert "nope:1" in str(problem) and "ErrImagePull" in str(problem) and "not found" in str(problem)


def test_unschedulable_is_told_in_words() -> None:
    pod = pod_with(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient memory.",
                }
            ],
        }
    )
    assert "Insufficient memory" in str(start_problem(pod, "img"))
    assert start_problem(pod_with({"phase": "Pending"}), "img") is None


# ---------------------------------------------------------------------------------------------
# gc's decisions.

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def ns(name: str = "sandbox-0123abcd", created: datetime = NOW - timedelta(hours=1), **extra: str) -> dict:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "labels": {"app.kubernetes.io/managed-by": "sandbox-kernel"},
            **extra,
        }
    }


def lease(renewed: datetime, seconds: int = 60) -> dict:
    return {"spec": {"renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "leaseDurationSeconds": seconds}}


def test_gc_deletes_only_expired_heartbeats() -> None:
    assert verdict(ns(), lease(NOW - timedelta(seconds=61)), NOW, 60)[0] is True
    assert verdict(ns(), lease(NOW - timedelta(seconds=30)), NOW, 60) == (False, "heartbeat expires in 30s")
    assert heartbeat_expiry(lease(NOW, 5)) == NOW + timedelta(seconds=5)


def test_gc_without_lease_waits_for_the_ttl_and_skips_terminating() -> None:
    assert verdict(ns(created=NOW - timedelta(seconds=10)), None, NOW, 60)[0] is False
    assert verdict(ns(created=NOW - timedelta(seconds=600)), None, NOW, 60)[0] is True
    assert verdict(ns(deletionTimestamp="2025-06-01T11:00:00Z"), None, NOW, 60) == (False, "already being deleted")


def test_gc_never_considers_foreign_namespaces() -> None:
    assert is_ours(ns(), "sandbox-")
    assert not is_ours(ns(name="kube-system"), "sandbox-")
    assert not is_ours({"metadata": {"name": "sandbox-0123abcd", "labels": {}}}, "sandbox-")
