"""The kernel surface of a Kubernetes sandbox pod, from a cell, as the least-privilege identity.

With ``KubernetesSandbox.seccomp_profile = 'profiles/sandbox-kernel.json'`` the pod runs under
the project's Localhost profile (the local sandbox's table, ``seccomp_policy.to_oci_profile()``,
installed on the test node by tests/cluster/up): io_uring, userfaultfd, keyrings, bpf and user
namespaces are refused with EPERM. With the default (RuntimeDefault) the pod runs under
containerd's own profile; what that one refuses is recorded here as a fact of the cluster
(containerd 1.6: io_uring allowed), so the test fails and k8s/README.md must be revised when
containerd changes it. Also: the profile on the node is the package's table (no drift), the
admission policy admits no other Localhost profile, and the three agents work under it.

Raw system calls through ctypes (x86-64 numbers), with arguments that fail harmlessly when the
call is allowed (EFAULT, EINVAL, ...), so "allowed" and "refused" are told apart by the errno.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Callable

import pytest
from kubernetes import client

from fixtures_kubernetes import K8sKernel
from sandbox_kernel.kubernetes import manifests
from sandbox_kernel.local import seccomp_policy

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 system call numbers"),
]

Start = Callable[..., K8sKernel]
PROFILE = f"--KubernetesSandbox.seccomp_profile={manifests.SECCOMP_PROFILE}"
STATE = Path(os.environ.get("SANDBOX_CLUSTER_STATE") or "/var/lib/sandbox-kernel-cluster")
NODE_PROFILE = STATE / "kubelet" / "seccomp" / manifests.SECCOMP_PROFILE

PROBE = """
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "allowed" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print(json.dumps({
    "io_uring_setup": call(425, 1, 0),            # NULL params: EFAULT when allowed
    "userfaultfd": call(323, 0),
    "keyctl": call(250, 0, 0, 0, 0, 0),           # KEYCTL_GET_KEYRING_ID of key 0: EINVAL/ENOKEY when allowed
    "bpf": call(321, 0, 0, 0),                    # BPF_MAP_CREATE with a NULL attr: EFAULT when allowed
    "unshare_userns": call(272, 0x10000000),      # CLONE_NEWUSER
    "seccomp_mode": [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0],
}))
"""
ALL_REFUSED = {
    "io_uring_setup": "EPERM",
    "userfaultfd": "EPERM",
    "keyctl": "EPERM",
    "bpf": "EPERM",
    "unshare_userns": "EPERM",
}


def probe(kernel: K8sKernel) -> dict[str, str]:
    cell = kernel.run(PROBE)
    assert cell.reply["status"] == "ok", cell.outputs
    return json.loads(cell.stdout.strip().splitlines()[-1])


def pod_profile(core_v1: client.CoreV1Api, kernel: K8sKernel) -> dict[str, str | None]:
    pod = core_v1.read_namespaced_pod("sandbox-1", kernel.namespace())
    profile = pod.spec.security_context.seccomp_profile
    return {"type": profile.type, "localhostProfile": profile.localhost_profile}


def test_the_profile_on_the_node_is_the_package_s_table() -> None:
    """tests/cluster/up generates it from sandbox_kernel/local/seccomp_policy.py: it cannot drift."""
    assert NODE_PROFILE.is_file(), f"{NODE_PROFILE} is missing: run tests/cluster/up (it installs the profile)"
    assert json.loads(NODE_PROFILE.read_text()) == seccomp_policy.to_oci_profile()


def test_localhost_profile_refuses_the_kernel_attack_surface(k8s_kernel: Start, core_v1: client.CoreV1Api) -> None:
    kernel = k8s_kernel("python", PROFILE)
    seen = probe(kernel)
    assert {k: v for k, v in seen.items() if k != "seccomp_mode"} == ALL_REFUSED, seen
    assert seen["seccomp_mode"] == "2"
    assert pod_profile(core_v1, kernel) == {"type": "Localhost", "localhostProfile": "profiles/sandbox-kernel.json"}
    policy = kernel.run("%sandbox policy").stdout
    assert "seccomp: Localhost profiles/sandbox-kernel.json (KubernetesSandbox.seccomp_profile)" in policy, policy
    assert "io_uring_setup" in policy and "keyctl" in policy
    status = kernel.run("%sandbox status").stdout
    assert re.search(r"^seccomp\s+Localhost profiles/sandbox-kernel\.json$", status, re.M), status


def test_runtime_default_is_containerd_s_profile_which_allows_io_uring(
    k8s_kernel: Start, core_v1: client.CoreV1Api
) -> None:
    """A recorded fact of the test cluster (containerd 1.6), documented in k8s/README.md: its
    default profile refuses keyctl, bpf, userfaultfd and unshare (the last three need
    capabilities the pod lacks) but allows io_uring. Docker's default profile stopped allowing
    io_uring in 2023; when containerd's does too, this fails: update k8s/README.md."""
    kernel = k8s_kernel("python")
    seen = probe(kernel)
    assert seen == {**ALL_REFUSED, "io_uring_setup": "EFAULT", "seccomp_mode": "2"}, seen
    assert pod_profile(core_v1, kernel) == {"type": "RuntimeDefault", "localhostProfile": None}
    assert "seccomp: RuntimeDefault" in kernel.run("%sandbox policy").stdout


def test_admission_admits_no_other_localhost_profile(k8s_kernel: Start) -> None:
    """Pod Security "restricted" admits any Localhost profile (any file in the kubelet's seccomp
    root, an allow-all one too); sandbox-kernel-pods-command admits only the project's."""
    kernel = k8s_kernel("python", "--KubernetesSandbox.seccomp_profile=profiles/allow-all.json")
    cell = kernel.run("1")
    assert cell.error is not None and cell.error["ename"] == "AdmissionError", cell.outputs
    assert "seccompProfile is RuntimeDefault or Localhost profiles/sandbox-kernel.json" in cell.error["evalue"]


def test_a_container_may_not_override_the_pod_s_profile(
    sa_api: client.ApiClient, k8s_kernel: Start, core_v1: client.CoreV1Api
) -> None:
    """The service account recreating its own pod, RuntimeDefault on the pod but another Localhost
    profile on the container: refused."""
    from kubernetes.client.rest import ApiException

    kernel = k8s_kernel("python")
    assert kernel.run("1").result == "1"
    ns = kernel.namespace()
    pod = client.ApiClient().sanitize_for_serialization(core_v1.read_namespaced_pod("sandbox-1", ns))
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "intruder", "namespace": ns, "labels": pod["metadata"]["labels"]},
        "spec": {k: v for k, v in pod["spec"].items() if k not in ("nodeName", "priority")},
    }
    body["spec"]["containers"][0]["securityContext"]["seccompProfile"] = {
        "type": "Localhost",
        "localhostProfile": "profiles/allow-all.json",
    }
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(sa_api).create_namespaced_pod(ns, body)
    assert refused.value.status == 403 and "sandbox-kernel-pods-command" in refused.value.body, refused.value.body
    body["spec"]["containers"][0]["securityContext"]["seccompProfile"] = {
        "type": "Localhost",
        "localhostProfile": manifests.SECCOMP_PROFILE,
    }
    created = client.CoreV1Api(sa_api).create_namespaced_pod(ns, body, dry_run="All")  # the project's profile: admitted
    assert created.spec.containers[0].security_context.seccomp_profile.localhost_profile == manifests.SECCOMP_PROFILE


@pytest.mark.parametrize(
    "language,cells",
    [
        (
            "python",
            [
                ("import threading, subprocess\nx = 41", None),
                (
                    "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
                    "print(subprocess.run(['sh', '-c', 'echo forked'], capture_output=True, text=True).stdout.strip(), x + 1)",
                    "forked 42",
                ),
            ],
        ),
        (
            "node",
            [
                ("let x = 41;", None),
                (
                    "const fs = require('fs'); fs.writeFileSync('f', 'io'); "
                    "console.log(require('child_process').execSync('echo forked').toString().trim(), fs.readFileSync('f', 'utf8'), x + 1)",
                    "forked io 42",
                ),
            ],
        ),
        ("bash", [("x=41", None), ("echo $(echo forked) $((x + 1))", "forked 42")]),
    ],
)
def test_every_agent_works_under_the_localhost_profile(k8s_kernel: Start, language: str, cells: list) -> None:
    kernel = k8s_kernel(language, PROFILE)
    for code, expected in cells:
        cell = kernel.run(code)
        assert cell.reply["status"] == "ok", cell.outputs
        if expected is not None:
            assert cell.stdout.strip() == expected, cell.outputs


def test_what_a_pod_sees_of_the_node_is_what_k8s_readme_lists(k8s_kernel: Start, core_v1: client.CoreV1Api) -> None:
    """/proc/self/mountinfo and /proc/self/cgroup of a sandbox pod (k8s/README.md, "What a pod sees
    of the node"), recorded: node paths only in the mounts the kubelet and containerd make for every
    pod, none for HOME and /tmp (tmpfs); the pod UID in the cgroup paths, since containerd makes no
    cgroup namespace on cgroup v1. A change here means the README must change too."""
    kernel = k8s_kernel("python")
    cell = kernel.run(
        "print(open('/proc/self/mountinfo').read()); print('=====');print(open('/proc/self/cgroup').read())"
    )
    assert cell.reply["status"] == "ok", cell.outputs
    mountinfo, cgroup = cell.stdout.split("=====\n")
    uid = core_v1.read_namespaced_pod("sandbox-1", kernel.namespace()).metadata.uid
    node_paths: dict[str, str] = {}
    for line in mountinfo.strip().splitlines():
        fields = line.split()
        root, point, options = fields[3], fields[4], fields[fields.index("-") + 3]
        if root.startswith(str(STATE)) or str(STATE) in options:
            node_paths[point] = root if root.startswith(str(STATE)) else "overlay " + options.split("lowerdir=")[1][:60]
        if point in ("/home/sandbox", "/tmp"):
            assert root == "/" and fields[fields.index("-") + 1] == "tmpfs", line
    assert set(node_paths) == {
        "/",
        "/etc/hosts",
        "/dev/termination-log",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/opt/sandbox-agent",
    }, node_paths
    assert uid in node_paths["/etc/hosts"] and uid in node_paths["/opt/sandbox-agent"]
    v1 = Path("/sys/fs/cgroup/memory").is_dir()  # the node's (the test runs on it)
    assert (f"pod{uid}" in cgroup) == v1, cgroup
