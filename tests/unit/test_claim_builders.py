"""Claims mode's pure parts: the SandboxClaim a kernel creates, how the controller checks it, the
operator's bounds in the CRD and the controller, the pool key, and the RoleBinding it grants.
(The real controller and claims run against the test cluster in tests/e2e/test_claims.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sandbox_kernel.config import Sandbox
from sandbox_kernel.controller import pool, sandboxes
from sandbox_kernel.controller.settings import SandboxController
from sandbox_kernel.errors import ConfigError
from sandbox_kernel.kubernetes import claiming, claims, commands
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.languages import LANGUAGES

REPO = Path(__file__).resolve().parents[2]
USER = "system:serviceaccount:sandbox-kernel-system:sandbox-kernel-claims"
IMAGES = {
    "python": "localhost/sandbox-python:3.11",
    "node": "localhost/sandbox-node:18",
    "bash": "localhost/sandbox-bash:5",
}


def kernel_spec(**limits: str) -> claims.ClaimSpec:
    settings = KubernetesSandbox(images=IMAGES)
    return claiming.claim_spec(
        settings, LANGUAGES["python"], Sandbox(**limits).limits(), "k-1", USER, "sandbox-kernel-claims"
    )


def test_the_claim_a_kernel_creates_reads_back_as_what_it_asked() -> None:
    spec = kernel_spec()
    body = claims.claim_object("python-0a1b2c3d", "sandbox-kernel-system", spec, "2026-01-01T00:00:00.000000Z")
    assert body == {
        "apiVersion": "sandbox-kernel.dev/v1alpha1",
        "kind": "SandboxClaim",
        "metadata": {
            "name": "python-0a1b2c3d",
            "namespace": "sandbox-kernel-system",
            "labels": {
                "app.kubernetes.io/managed-by": "sandbox-kernel",
                "sandbox-kernel/kernel-id": "k-1",
                "sandbox-kernel/language": "python",
            },
            "annotations": {"sandbox-kernel.dev/heartbeat": "2026-01-01T00:00:00.000000Z"},
        },
        "spec": {
            "language": "python",
            "user": USER,
            "owner": "sandbox-kernel-claims",
            "kernelId": "k-1",
            "heartbeatSeconds": 60,
            "seccompProfile": "",
            "resources": {
                "cpu": "500m",
                "memory": "256Mi",
                "cpuRequest": "100m",
                "memoryRequest": "64Mi",
                "scratch": "64Mi",
            },
            "image": "localhost/sandbox-python:3.11",
        },
    }
    assert claims.parse_spec(body["spec"]) == spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"language": "ruby"}, "spec.language must be one of"),
        ({"user": ""}, "spec.user"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory 'lots' is not a quantity"),
        ({"heartbeatSeconds": 1}, "spec.heartbeatSeconds must be 5 to 3600"),
        ({"heartbeatSeconds": True}, "spec.heartbeatSeconds"),
        ({"seccompProfile": "profiles/allow-all.json"}, "spec.seccompProfile must be"),
        ({"image": "Evil Image"}, "spec.image is not valid"),
        ({"owner": "-x"}, "spec.owner is not valid"),
    ],
)
def test_the_controller_checks_every_field_of_a_claim_again(change: dict, message: str) -> None:
    spec = {"language": "python", "user": USER, **change}
    with pytest.raises(claims.ClaimInvalid, match=re.escape(message)):
        claims.parse_spec(spec)


def crd_bounds() -> dict[str, str]:
    crd = yaml.safe_load((REPO / "k8s" / "crd" / "sandboxclaims.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema["properties"]["spec"]["properties"]["resources"]["x-kubernetes-validations"]
    bounds = {}
    for rule in rules:
        found = re.fullmatch(
            r"!has\(self\.(\w+)\) \|\| quantity\(self\.\1\)\.compareTo\(quantity\('([^']+)'\)\) <= 0", rule["rule"]
        )
        if found:
            bounds[found.group(1)] = found.group(2)
    return bounds


def test_the_crd_and_the_controller_bound_claims_alike() -> None:
    bounds = SandboxController()
    assert crd_bounds() == {"cpu": bounds.max_cpu, "memory": bounds.max_memory, "scratch": bounds.max_scratch}


def test_a_claim_over_the_bounds_or_with_a_foreign_image_is_refused_with_the_bound_named() -> None:
    base, bounds = KubernetesSandbox(images=IMAGES), SandboxController()
    with pytest.raises(
        claims.ClaimInvalid, match=r"memory 2Gi is above the operator's bound of 1Gi \(SandboxController.max_memory\)"
    ):
        sandboxes.plan(claims.ClaimSpec("python", USER, memory="2Gi"), base, bounds)
    with pytest.raises(claims.ClaimInvalid, match=r"image docker.io/evil:1 is not one the operator allows for python"):
        sandboxes.plan(claims.ClaimSpec("python", USER, image="docker.io/evil:1"), base, bounds)
    # Within the bounds but above the operator's limit range: the setting's own message.
    with pytest.raises(claims.ClaimInvalid, match=r"512Mi is above KubernetesSandbox.limit_range_max_memory 256Mi"):
        sandboxes.plan(claims.ClaimSpec("python", USER, memory="512Mi"), base, bounds)
    plan = sandboxes.plan(kernel_spec(), base, bounds)
    assert (plan.image, plan.limits.memory, plan.settings.images["python"]) == (
        "localhost/sandbox-python:3.11",
        "256Mi",
        IMAGES["python"],
    )


def test_a_kernel_with_default_settings_matches_the_controller_s_default_pool() -> None:
    base, bounds = KubernetesSandbox(images=IMAGES), SandboxController(pool={"python": 3, "node": 0})
    (target,) = pool.targets(base, bounds, "system:serviceaccount:sandbox-kernel-system:sandbox-kernel-controller")
    assert (target.language, target.count) == ("python", 3)
    assert kernel_spec().pool_key(IMAGES["python"]) == target.plan.pool_key
    # Any difference in what shapes the pod is another pool: that claim gets a new sandbox.
    assert kernel_spec(memory_limit="200Mi").pool_key(IMAGES["python"]) != target.plan.pool_key


def test_the_pool_size_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_CONTROLLER_POOL", "python=3, node=1")
    assert SandboxController().pool == {"python": 3, "node": 1}
    with pytest.raises(ConfigError, match="SandboxController.pool: 'ruby' is not one of"):
        SandboxController(pool={"ruby": 1}).validate()
    monkeypatch.setenv("SANDBOX_CONTROLLER_POOL", "python")
    with pytest.raises(ConfigError, match="is not language=count"):
        SandboxController().validate()


def test_the_claimant_binding_names_exactly_the_claim_s_user() -> None:
    assert claims.claimant_binding("sandbox-0a1b2c3d", USER) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": "sandbox-kernel-claimant",
            "namespace": "sandbox-0a1b2c3d",
            "labels": {"app.kubernetes.io/managed-by": "sandbox-kernel"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sandbox-kernel-claimant"},
        "subjects": [{"kind": "ServiceAccount", "name": "sandbox-kernel-claims", "namespace": "sandbox-kernel-system"}],
    }
    assert claims.claimant_binding("sandbox-0a1b2c3d", "alice@example.org")["subjects"] == [
        {"kind": "User", "name": "alice@example.org", "apiGroup": "rbac.authorization.k8s.io"}
    ]


def test_the_kernel_follows_only_well_formed_names_in_a_claim_s_status() -> None:
    assert claims.parse_status({"status": {}}) is None
    status = claims.parse_status(
        {"status": {"phase": "Ready", "namespace": "../kube-system", "pod": "sandbox-1", "fromPool": True}}
    )
    assert status == claims.ClaimStatus("Ready", "", "sandbox-1", True, "")


def test_claims_go_to_the_service_account_s_own_namespace() -> None:
    assert claiming.claim_namespace(KubernetesSandbox(), USER) == "sandbox-kernel-system"
    assert claiming.claim_namespace(KubernetesSandbox(claim_namespace="lab"), "alice") == "lab"
    with pytest.raises(ConfigError, match="KubernetesSandbox.claim_namespace"):
        claiming.claim_namespace(KubernetesSandbox(), "alice")
    with pytest.raises(ConfigError, match="KubernetesSandbox.heartbeat_ttl"):
        KubernetesSandbox(mode="claims", heartbeat_ttl=4000).validate(Sandbox().limits())


def test_list_and_gc_tell_the_controller_s_sandboxes_apart() -> None:
    def ns(labels: dict, annotations: dict | None = None) -> dict:
        return {
            "metadata": {
                "name": "sandbox-0a1b2c3d",
                "labels": {"app.kubernetes.io/managed-by": "sandbox-kernel", **labels},
                "annotations": annotations or {},
            }
        }

    made = {"sandbox-kernel/made-by": "controller"}
    assert commands.origin(ns({})) == "direct (kernel)"
    assert commands.origin(ns({**made, "sandbox-kernel/state": "ready"})) == "pool (ready)"
    assert (
        commands.origin(ns({**made, "sandbox-kernel/state": "bound"}, {"sandbox-kernel/claim": "lab/python-1"}))
        == "claim lab/python-1"
    )
    assert (
        commands.origin(
            ns(
                {**made, "sandbox-kernel/state": "bound"},
                {"sandbox-kernel/claim": "lab/python-1", "sandbox-kernel/pooled": "true"},
            )
        )
        == "claim lab/python-1 (from pool)"
    )
    assert sandboxes.is_controllers(ns(made), "sandbox-") and not sandboxes.is_controllers(ns({}), "sandbox-")


def test_the_admission_policies_confine_the_controller_too_and_claims_name_their_creator() -> None:
    docs = list(yaml.safe_load_all((REPO / "k8s" / "rbac" / "admission-policy.yaml").read_text()))
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    for name, policy in policies.items():
        if name == "sandbox-kernel-claims":
            assert "matchConditions" not in policy["spec"]  # every user
            assert policy["spec"]["validations"][0]["expression"] == "object.spec.user == request.userInfo.username"
            continue
        (condition,) = policy["spec"]["matchConditions"]
        assert "sandbox-kernel-system:sandbox-kernel'" in condition["expression"], name
        assert "sandbox-kernel-system:sandbox-kernel-controller'" in condition["expression"], name
    bindings = {d["spec"]["policyName"] for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert bindings == set(policies)


def test_only_the_cli_imports_the_controller() -> None:
    """kopf is the controller's alone: the kernel, its session and backends never import it."""
    from tests.unit.test_import_graph import import_graph

    graph = import_graph()
    users = sorted(
        name
        for name, deps in graph.items()
        if any(d.startswith("sandbox_kernel.controller") for d in deps)
        and not name.startswith("sandbox_kernel.controller")
    )
    assert users == ["sandbox_kernel.cli"]


def test_the_controller_command_takes_settings_and_refuses_anything_else(capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox_kernel import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["controller", "--bogus"])
    assert (
        exited.value.code == 2 and "controller settings are --Class.trait=value, not --bogus" in capsys.readouterr().err
    )
    assert cli.main(["controller", "--SandboxController.pool=ruby=1"]) == 1
    assert "Invalid setting SandboxController.pool: 'ruby' is not one of python, node, bash" in capsys.readouterr().err


def test_kopf_logs_in_with_the_controller_s_own_kubeconfig(tmp_path: Path) -> None:
    from sandbox_kernel.controller.handlers import connection_info
    from sandbox_kernel.kubernetes.api import KubernetesApi

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {"name": "k", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    info = connection_info(KubernetesApi(str(kubeconfig)))
    assert (info.server, info.scheme, info.token, info.insecure) == ("https://127.0.0.1:6443", "Bearer", "t0ken", True)


def test_claims_mode_refuses_a_runtime_class_instead_of_ignoring_it() -> None:
    """A kernel asking for gVisor in claims mode would silently get the controller's runtime."""
    with pytest.raises(ConfigError, match="KubernetesSandbox.runtime_class_name.*ignored in claims mode"):
        KubernetesSandbox(mode="claims", runtime_class_name="gvisor").validate(Sandbox().limits())
    KubernetesSandbox(mode="direct", runtime_class_name="gvisor").validate(Sandbox().limits())
    KubernetesSandbox(mode="claims").validate(Sandbox().limits())


def test_a_claim_is_reclaimed_once_its_heartbeat_or_before_the_first_its_creation_is_older_than_its_ttl() -> None:
    from datetime import datetime, timezone

    from sandbox_kernel.controller.handlers import heartbeat_expired

    now = datetime(2026, 12, 3, 8, 0, 30, tzinfo=timezone.utc)

    def claim(created: str, beat: str | None = None, ttl: object = 10, deleting: bool = False) -> dict[str, object]:
        meta: dict[str, object] = {
            "creationTimestamp": created,
            "annotations": {claims.ANNOTATION_HEARTBEAT: beat} if beat else {},
        }
        if deleting:
            meta["deletionTimestamp"] = created
        return {"metadata": meta, "spec": {"heartbeatSeconds": ttl}}

    assert heartbeat_expired(claim("2026-12-03T08:00:25Z"), now) is None
    assert heartbeat_expired(claim("2026-12-03T08:00:10Z"), now) == 10
    assert heartbeat_expired(claim("2026-12-03T08:00:00Z", beat="2026-12-03T08:00:29.500000Z"), now) is None
    assert heartbeat_expired(claim("2026-12-03T08:00:00Z", beat="2026-12-03T08:00:19.000000Z"), now) == 10
    assert heartbeat_expired(claim("2026-12-03T08:00:00Z", deleting=True), now) is None  # already going
    # A heartbeat that cannot be read counts from the creation; a ttl that is not a positive int is 60 s.
    assert heartbeat_expired(claim("2026-12-03T08:00:25Z", beat="yesterday"), now) is None
    assert heartbeat_expired(claim("2026-12-03T07:59:00Z", ttl=True), now) == 60
    assert heartbeat_expired(claim("2026-12-03T07:59:45Z", ttl=-5), now) is None
