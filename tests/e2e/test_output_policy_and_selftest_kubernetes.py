"""On the real cluster, as the least-privilege service account: the output policy holds for a
pod's output as for a local sandbox's, and ``%sandbox selftest`` in a pod reports the pod's
isolation (run as the kernel's identity, the same probe an operator would run)."""

from __future__ import annotations

import re
from typing import Callable

import pytest

from fixtures_kubernetes import K8sKernel

from sandbox_kernel import selftest

pytestmark = pytest.mark.cluster

Start = Callable[..., K8sKernel]
ACTIVE = re.compile(r"<script|\son\w+\s*=|=[\"']?\s*javascript:|<iframe|srcdoc", re.I)

# What a restricted pod must show, whatever the runtime's seccomp profile blocks.
MUST_PASS = {
    "non-root user",
    "no capabilities",
    "no new privileges",
    "seccomp filter",
    "no user namespaces",
    "no keyring",
    "read-only system",
    "writable home",
    "no service account token",
    "no secrets in environment",
    "network isolated",
    "memory limit",
}


def test_pod_output_reaches_the_frontend_without_active_content(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("python")
    cell = kernel.run(
        'display({"text/html": "<script>alert(1)</script><img src=x onerror=alert(2)><b>kept</b>",'
        ' "application/javascript": "alert(3)", "text/plain": "p"}, raw=True)'
    )
    assert cell.reply["status"] == "ok"
    [shown] = [o for o in cell.outputs if o["msg_type"] == "display_data"]
    assert "application/javascript" not in shown["data"]
    assert "<b>kept</b>" in shown["data"]["text/html"] and not ACTIVE.search(shown["data"]["text/html"])
    assert "removed application/javascript" in cell.stderr


def test_selftest_in_a_pod(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("python")
    cell = kernel.run("%sandbox selftest", timeout=120)
    assert cell.reply["status"] == "ok", cell.outputs
    table = cell.stdout
    verdicts = selftest.parse_table(table)
    assert set(verdicts) == set(selftest.CHECKS), table
    assert "kubernetes sandbox" in table.splitlines()[0]
    failing = {c for c in MUST_PASS if verdicts.get(c) != "pass"}
    assert not failing, table
    assert "eth0" in table  # a pod has an interface: the probes, not its absence, prove isolation


def test_selftest_under_the_localhost_seccomp_profile(k8s_kernel: Start) -> None:
    """With the project's Localhost profile (tests/cluster/up installs it on the node) the pod
    refuses what the local sandbox refuses: io_uring too, which containerd 1.6's RuntimeDefault allows."""
    kernel = k8s_kernel("python", "--KubernetesSandbox.seccomp_profile=profiles/sandbox-kernel.json")
    cell = kernel.run("%sandbox selftest", timeout=120)
    assert cell.reply["status"] == "ok", cell.outputs
    table = cell.stdout
    verdicts = selftest.parse_table(table)
    assert set(verdicts) == set(selftest.CHECKS), table
    failing = {c for c in MUST_PASS | {"no io_uring", "no userfaultfd", "no bpf"} if verdicts.get(c) != "pass"}
    assert not failing, table
    assert verdicts["no io_uring"] == "pass", table
