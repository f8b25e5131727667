"""The troubleshooting lab's broken pods (notebook 06) and the study magics' argument parsing, pure.

Each broken pod is the kernel's own pod with exactly one thing wrong, and still one the admission
policy ``sandbox-kernel-pods-command`` admits (the real refusals are seen on the cluster, in
tests/e2e/test_notebooks.py).
"""

from __future__ import annotations

import re

import pytest

from sandbox_kernel.errors import ConfigError
from sandbox_kernel.kubernetes import lab, manifests, pod_command, study
from sandbox_kernel.kubernetes.settings import KubernetesSandbox
from sandbox_kernel.config import Sandbox
from sandbox_kernel.languages import LANGUAGES

IDENT = manifests.SandboxIdentity("sandbox-0123abcd", "kernel-1", "python", "owner", "user", "2025-01-02T03:04:05Z")
SETTINGS = KubernetesSandbox(
    images={
        "python": "localhost/sandbox-python:3.11",
        "node": "localhost/sandbox-node:18",
        "bash": "localhost/sandbox-bash:5",
    }
)
BASE = SETTINGS.pod_spec(LANGUAGES["python"], Sandbox().limits(), "sandbox-1")


def without(d: dict, *paths: str) -> dict:
    """``d`` with the dotted ``paths`` removed (for comparing pods up to their one difference)."""
    import copy

    d = copy.deepcopy(d)
    for path in paths:
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return d


SMALL = [
    "spec.containers.0.resources",
    "metadata.name",
    "metadata.labels",
    "spec.activeDeadlineSeconds",
    "spec.volumes",
]


@pytest.mark.parametrize("scenario", list(lab.SCENARIOS))
def test_a_lab_pod_is_the_kernels_pod_made_small(scenario: str) -> None:
    own = manifests.pod(IDENT, BASE)
    pod = lab.lab_pod(IDENT, BASE, scenario, SETTINGS)
    assert pod["metadata"]["name"] == f"lab-{scenario}"
    assert pod["metadata"]["namespace"] == IDENT.namespace
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "sandbox-lab"
    assert pod["spec"]["activeDeadlineSeconds"] == lab.LIFETIME
    differs = {
        "missing-image": ["spec.containers.0.image"],
        "crash-loop": ["spec.containers.0.image", "spec.containers.0.command", "spec.restartPolicy"],
    }.get(scenario, [])
    assert without(pod, *SMALL, *differs) == without(own, *SMALL, *differs)
    # Pod Security restricted and the sandbox's securityContext as the kernel's own pod has them.
    assert pod["spec"]["securityContext"] == own["spec"]["securityContext"]
    # Admitted by sandbox-kernel-pods-command: the agent behind its policy guard.
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"] and re.fullmatch(pod_command.agent_command_pattern(), command[2]), command


def test_what_is_wrong_with_each() -> None:
    resources = {s: lab.lab_pod(IDENT, BASE, s, SETTINGS)["spec"]["containers"][0]["resources"] for s in lab.SCENARIOS}
    assert resources["over-limits"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"cpu": "100m", "memory": "512Mi"},
    }
    assert resources["over-quota"] == {
        "requests": {"cpu": "10m", "memory": "256Mi"},
        "limits": {"cpu": "100m", "memory": "256Mi"},
    }
    small = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}}
    assert resources["missing-image"] == small and resources["crash-loop"] == small
    assert (
        lab.lab_pod(IDENT, BASE, "missing-image", SETTINGS)["spec"]["containers"][0]["image"]
        == "localhost/sandbox-python:no-such-tag"
    )
    crash = lab.lab_pod(IDENT, BASE, "crash-loop", SETTINGS)
    assert crash["spec"]["containers"][0]["image"] == "localhost/sandbox-bash:5"
    assert crash["spec"]["containers"][0]["command"][2].startswith("python3 -c ")  # Python's guard, Bash's image
    assert crash["spec"]["restartPolicy"] == "Always"
    with pytest.raises(ValueError):
        lab.lab_pod(IDENT, BASE, "nope", SETTINGS)


def test_status_word_is_kubectls_status_column() -> None:
    waiting = {
        "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
    }
    assert lab.status_word(waiting) == "ImagePullBackOff"
    ended = {
        "status": {
            "phase": "Running",
            "containerStatuses": [{"state": {"terminated": {"reason": "Error", "exitCode": 127}}}],
        }
    }
    assert lab.status_word(ended) == "Error"
    assert (
        lab.status_word({"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}})
        == "Running"
    )
    assert lab.status_word({"status": {"phase": "Failed", "reason": "DeadlineExceeded"}}) == "DeadlineExceeded"
    assert lab.status_word(None) == "-"
    # What the node wrote is untrusted: no escape sequences reach the notebook or a terminal.
    assert lab.status_word({"status": {"phase": "\x1b[2J\x1b]0;evil\x07Pending"}}) == "Pending"


def test_namespace_options_and_names() -> None:
    assert study._namespace_option("can-i", ["create", "pods", "-n", "default"], "sandbox-1") == (
        "default",
        ["create", "pods"],
    )
    assert study._namespace_option("can-i", ["--namespace=kube-system", "get", "pods"], "sandbox-1") == (
        "kube-system",
        ["get", "pods"],
    )
    assert study._namespace_option("can-i", ["get", "pods"], "sandbox-1") == ("sandbox-1", ["get", "pods"])
    for bad in (["-n"], ["-n", "Default"], ["-n", "a/b"], ["--namespace=../x"]):
        with pytest.raises(ConfigError):
            study._namespace_option("can-i", bad, "sandbox-1")
    assert study._kind("namespace") == study._kind("namespaces") == study._kind("Namespace") == "Namespace"
    assert study._kind("networkpolicies") == "NetworkPolicy"
    with pytest.raises(ConfigError, match="kind 'widgets' is not one dry-run sends"):
        study._kind("widgets")
