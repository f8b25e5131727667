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
