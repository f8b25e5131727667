"""``KubernetesSandbox.runtime_class_name = 'gvisor'`` end to end on the test cluster.

tests/cluster/up's last section gives the node a ``runsc`` runtime handler (gVisor's containerd
shim, built by tests/cluster/build-runsc-shim for containerd 1.6) and creates RuntimeClass
``gvisor`` (k8s/examples/runtimeclass-gvisor.yaml). The sandbox pod then runs on gVisor's own
kernel with everything else unchanged: Pod Security restricted, deny-all NetworkPolicy, quotas.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

GVISOR = "--KubernetesSandbox.runtime_class_name=gvisor"
Start = Callable[..., Any]


@pytest.fixture(scope="module", autouse=True)
def gvisor_runtime_class(k8s_api: client.ApiClient) -> None:
    try:
        client.NodeV1Api(k8s_api).read_runtime_class("gvisor")
    except ApiException as exc:
        if exc.status != 404:
            raise
        why = "RuntimeClass gvisor is missing: tests/cluster/up sets it up when it starts the cluster (down, then up)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def test_python_cells_run_on_gvisor_and_keep_state(k8s_kernel: Start, core_v1: client.CoreV1Api) -> None:
    kernel = k8s_kernel("python", GVISOR)
    cell = kernel.run(
        "import os, platform\nkept = platform.release()\nprint(kept, os.getuid(), open('/proc/version').read().split()[2])"
    )
    assert cell.reply["status"] == "ok", cell.outputs
    assert cell.stdout.split() == ["4.4.0", "1000", "4.4.0"], cell.stdout  # gVisor's kernel, not the node's
    assert kernel.run("kept").result == "'4.4.0'"
    pods = core_v1.list_namespaced_pod(kernel.namespace()).items
    assert pods and all(p.spec.runtime_class_name == "gvisor" for p in pods)


def test_bash_and_node_run_on_gvisor(k8s_kernel: Start) -> None:
    bash = k8s_kernel("bash", GVISOR)
    assert bash.run("uname -r; id -u").stdout.split() == ["4.4.0", "1000"]
    node = k8s_kernel("node", GVISOR)
    assert "4.4.0" in (node.run("require('os').release()").result or "")


def test_interrupt_and_network_isolation_under_gvisor(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("python", GVISOR)
    kernel.run("kept = 7")
    began = time.monotonic()
    msg_id = kernel.kc.execute("import time\ntime.sleep(60)")
    time.sleep(2)
    kernel.km.interrupt_kernel()
    while True:
        reply = kernel.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error" and time.monotonic() - began < 15
    assert kernel.run("kept").result == "7"
    cell = kernel.run("%sandbox selftest", timeout=120)
    assert cell.reply["status"] == "ok", cell.outputs
    assert re.search(r"runtime\s+pass\s+gVisor", cell.stdout), cell.stdout
    assert re.search(r"network isolated\s+pass", cell.stdout), cell.stdout


def test_the_stream_relay_under_a_runtime_that_forbids_user_namespaces_fails_the_start_clearly(
    k8s_kernel: Start,
) -> None:
    """``stream_relay = 'on'`` without gVisor: runc's RuntimeDefault seccomp profile refuses the
    relay's unshare(CLONE_NEWUSER); the relay exits 96 and the cell says which setting to change,
    instead of running the agent without the relay."""
    kernel = k8s_kernel("python", "--KubernetesSandbox.stream_relay=on")
    cell = kernel.run("1", timeout=60)
    assert cell.error is not None and cell.error["ename"] == "SandboxStartError", cell.outputs
    assert "user and PID namespace" in cell.error["evalue"], cell.error
    assert "KubernetesSandbox.stream_relay" in "".join(str(o) for o in cell.outputs), cell.outputs


def test_the_stream_relay_runs_the_agent_in_namespaces_of_its_own(k8s_kernel: Start) -> None:
    """Under gVisor (stream_relay 'auto' with a runtime class) a cell sees only its own PID
    namespace, whose PID 1 is the agent (the stream a socket pair, no host fd), as the same uid without
    capabilities; the cells keep working as without the relay (state, stderr, exit codes)."""
    kernel = k8s_kernel("python", GVISOR)
    cell = kernel.run(
        "import os\nlinks = {os.readlink('/proc/1/fd/' + fd).split(':')[0] for fd in os.listdir('/proc/1/fd')}\n"
        "print('socket' in links, [l for l in links if l.startswith('host')], os.getuid())\n"
        "print(open('/proc/1/cmdline').read().split(chr(0))[1].rsplit('/', 1)[-1])\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])\n"
        "print(open('/proc/self/uid_map').read().split())"
    )
    assert cell.reply["status"] == "ok", cell.outputs
    assert cell.stdout.splitlines() == [
        "True [] 1000",
        "python_agent.py",
        "0000000000000000",
        "['1000', '1000', '1']",
    ]
    assert kernel.run("import sys; print('to stderr', file=sys.stderr)").stderr == "to stderr\n"
