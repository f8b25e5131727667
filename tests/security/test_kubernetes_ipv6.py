"""IPv6 from a cell: nothing answers (issue 12, breach 3).

Every pod used to have an fe80:: link-local address, kube-router enforces NetworkPolicy for IPv4
only, and the node's API server, kubelet and kube-router listen on [::]: from a cell, another
sandbox's pod and the node's :6443, :10250 and :20244 answered through fe80::…%eth0. The test
cluster now gives pods no IPv6 (tests/cluster/up, the CNI tuning plugin), and the policy guard
refuses to start a sandbox whose IPv6 reaches the node (sandbox_kernel/kubernetes/pod_command.py).

The kernels run as the least-privilege service account (k8s_kernel). The addresses tried are the
ones the breach used: the other sandbox's link-local address (EUI-64 of its MAC, as the kernel
would assign it), the node's, i.e. the pod's gateway (EUI-64 of the gateway's MAC from the pod's
own ARP table, and cni0's real fe80:: address read on the node), and the all-nodes multicast
group's listeners are not needed: TCP to each of those is enough to show the path is closed.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Callable

import pytest

pytestmark = pytest.mark.cluster

NODE_PORTS = {"apiserver": 6443, "kubelet": 10250, "kube-router": 20244}

EUI64 = """
def eui64(mac):
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 2
    w = b[:3] + [0xff, 0xfe] + b[3:]
    return "fe80::" + ":".join("%x" % ((w[i] << 8) | w[i + 1]) for i in range(0, 8, 2))
"""

LISTEN = (
    EUI64
    + '''
import subprocess, sys, json
server = """
import socket, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(b"hello-from-B"); c.close()
"""
p = subprocess.Popen([sys.executable, "-c", server], stderr=subprocess.PIPE, start_new_session=True)
try:
    p.wait(1); listening = "no: " + p.stderr.read().decode()[-200:]
except subprocess.TimeoutExpired:
    listening = "yes"
mac = open("/sys/class/net/eth0/address").read().strip()
print(json.dumps({"mac": mac, "fe80": eui64(mac), "listening": listening,
                  "if_inet6": open("/proc/net/if_inet6").read() if __import__("os").path.exists("/proc/net/if_inet6") else ""}))
'''
)

PROBE = (
    EUI64
    + """
import errno, json, os, socket
gw = None
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "00000000":
        gw = socket.inet_ntoa(bytes.fromhex(f[2])[::-1])
macs = {f.split()[0]: f.split()[3] for f in open("/proc/net/arp").read().splitlines()[1:]}
targets = dict(TARGETS)
if gw in macs and macs[gw] != "00:00:00:00:00:00":
    for name, port in NODE_PORTS.items():
        targets["gateway-eui64 " + name] = (eui64(macs[gw]), port)
def probe(addr, port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((addr, port, 0, socket.if_nametoindex("eth0")))
        try:
            got = s.recv(32)
        except OSError:
            got = b""
        return "OPEN " + got.decode(errors="replace")
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
print(json.dumps({"gateway": gw, "gateway_mac": macs.get(gw),
                  "if_inet6": open("/proc/net/if_inet6").read() if os.path.exists("/proc/net/if_inet6") else "",
                  "results": {name: [a, p, probe(a, p)] for name, (a, p) in targets.items()}}))
"""
)


def node_link_local(bridge: str = "cni0") -> str | None:
    """The node's own fe80:: address on the pods' bridge (this test runs on the single node)."""
    try:
        out = subprocess.run(
            ["ip", "-6", "-o", "addr", "show", "dev", bridge, "scope", "link"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for field in out.split():
        if field.startswith("fe80:"):
            return field.split("/")[0]
    return None


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_ipv6_from_a_cell_reaches_neither_another_sandbox_nor_the_node(k8s_kernel: Callable[..., object]) -> None:
    victim = k8s_kernel("python")
    attacker = k8s_kernel("python")
    b = victim.run(LISTEN)  # type: ignore[attr-defined]
    assert b.error is None, b.error
    b_info = last_json(b.stdout)
    targets: dict[str, tuple[str, int]] = {"other-sandbox": (b_info["fe80"], 8080)}
    node = node_link_local()
    if node:
        for name, port in NODE_PORTS.items():
            targets[f"node-cni0 {name}"] = (node, port)
    time.sleep(0.5)
    code = PROBE.replace("dict(TARGETS)", repr(targets)).replace("NODE_PORTS.items()", repr(NODE_PORTS) + ".items()")
    a = attacker.run(code, timeout=120)  # type: ignore[attr-defined]
    assert a.error is None, a.error
    info = last_json(a.stdout)
    results = info["results"]
    # Not vacuous: the other sandbox and the node (by its real address or its gateway EUI-64) were tried.
    assert "other-sandbox" in results
    assert any(name.startswith(("node-cni0 apiserver", "gateway-eui64 apiserver")) for name in results), info
    assert any(name.endswith("kubelet") for name in results), info
    opened = {name: r for name, r in results.items() if r[2].startswith("OPEN")}
    assert not opened, f"IPv6 reached {opened} from a sandbox (victim: {b_info}; attacker: {info})"
    # And the reason is that the pod has no IPv6 at all (the test cluster's CNI configuration):
    # /proc/net/if_inet6 lists no address but loopback, if any.
    for listing in (info["if_inet6"], b_info["if_inet6"]):
        assert all(line.split()[-1] == "lo" for line in listing.splitlines() if line.strip()), listing


def test_the_policy_guard_refuses_to_start_when_ipv6_reaches_the_node(
    core_v1: object, namespace: str, kubeconfig: str
) -> None:
    """The guard is the backstop for clusters that do give pods IPv6: run each language's guard
    (pod_command.agent_command, with the node's interpreters) inside a real deny-all pod's network
    namespace, first as the CNI leaves it (no IPv6: the guard passes), then with IPv6 switched
    back on in that namespace, which re-creates breach 3: the guard must refuse (exit 97)."""
    import os
    from pathlib import Path

    from kubernetes import client

    from fixtures_kubernetes import wait_until
    from sandbox_kernel.kubernetes import pod_command

    core: client.CoreV1Api = core_v1  # type: ignore[assignment]
    client.NetworkingV1Api(core.api_client).create_namespaced_network_policy(
        namespace, {"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    )
    images = {k: v for k, v in os.environ.items() if k.startswith("SANDBOX_IMAGE_")}
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "target"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": images.get("SANDBOX_IMAGE_PYTHON", "localhost/sandbox-python:3.11"),
                        "command": ["sleep", "600"],
                    }
                ]
            },
        },
    )
    ip = wait_until(lambda: core.read_namespaced_pod("target", namespace).status.pod_ip, 60, what="the pod's IP")
    wait_until(
        lambda: core.read_namespaced_pod("target", namespace).status.phase == "Running", 60, what="the pod running"
    )

    def netns() -> str | None:
        for path in Path("/run/netns").glob("cni-*"):
            out = subprocess.run(
                ["ip", "netns", "exec", path.name, "ip", "-4", "-o", "addr"], capture_output=True, text=True
            ).stdout
            if f" {ip}/" in out:
                return path.name
        return None

    ns = wait_until(netns, 30, what=f"the network namespace holding {ip} (this test runs on the node, as root)")
    service = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip

    def guards() -> dict[str, int]:
        codes = {}
        for interpreter in ("python3", "node", "bash"):
            guard = pod_command.agent_command(interpreter, "agent", policy_wait=3)[2].split(" && read -r _")[0]
            codes[interpreter] = subprocess.run(
                ["ip", "netns", "exec", ns, "/bin/sh", "-c", guard],
                capture_output=True,
                timeout=60,
                env={"KUBERNETES_SERVICE_HOST": service, "KUBERNETES_SERVICE_PORT": "443", "PATH": os.environ["PATH"]},
            ).returncode
        return codes

    time.sleep(1)  # kube-router programs the new pod's deny-all
    assert guards() == {"python3": 0, "node": 0, "bash": 0}, "no IPv6, IPv4 denied: the guard lets the agent start"
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.eth0.disable_ipv6=0",
            "net.ipv6.conf.lo.disable_ipv6=0",
        ],
        check=True,
    )
    time.sleep(2)  # duplicate address detection for the new fe80:: address
    assert guards() == {
        "python3": pod_command.POLICY_NOT_ENFORCED,
        "node": pod_command.POLICY_NOT_ENFORCED,
        "bash": pod_command.POLICY_NOT_ENFORCED,
    }, "IPv6 reaches the node: the guard must refuse"
