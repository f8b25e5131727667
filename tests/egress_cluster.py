"""The egress tests' hosts and proxy on the real test cluster (tests/e2e/test_egress_kubernetes.py,
benchmarks/bench_egress_kubernetes.py). Everything here runs as the cluster's admin.

- :func:`start_test_hosts`: one pod, in a namespace of its own, serving HTTPS (the test CA of
  tests/egress_hosts.py, a certificate for allowed.test and denied.test) on 443 and HTTP on 80;
  ``GET /bytes/N`` answers N bytes, ``/simple/`` is a package index of one wheel
  (:func:`egress_hosts.package_index`).
- :func:`apply_test_proxy`: ``kubectl apply -k`` of an overlay over k8s/egress/ with a given
  JupyterLab image, one replica, and the TEST-ONLY sync options: a hosts file naming the test
  hosts (the cluster's DNS does not know them; pypi.org names the test host too, so a request
  for it never leaves the cluster; rebind.test has the test host's address and a private one) and ``--exempt-network`` of exactly the test pod's
  address (the proxy refuses private addresses, and pods have private addresses). They are on the
  proxy Deployment's command line, which no sandbox and no kernel identity can change. A
  test-only NetworkPolicy lets the proxy pods reach the test namespace (their own policy allows
  public addresses only); :func:`remove_test_proxy` deletes all of it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from egress_hosts import make_ca, package_index

REPO = Path(__file__).resolve().parents[1]
PLATFORM = "sandbox-kernel-system"
LAB_IMAGE = "localhost/sandbox-kernel-lab"
PROXY_LABELS = {"app.kubernetes.io/name": "sandbox-egress-proxy"}

SERVER = r"""
import http.server, json, socketserver, ssl, threading
FILES = {path: open("/index/" + key, "rb").read() for path, key in json.load(open("/index/paths.json")).items()}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path in FILES:  # the package index (egress_hosts.package_index)
            body = FILES[self.path]  # pip skips index pages that are not text/html
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream" if self.path.endswith(".whl") else "text/html")
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/bytes/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
            chunk = b"x" * (1 << 20)
            while n > 0:
                self.wfile.write(chunk[:n]); n -= len(chunk)
            return
        body = ("hello from %s (Host: %s)\n" % (self.server.name, self.headers.get("Host"))).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain("/certs/server.pem", "/certs/server.key")
for port, tls in ((443, True), (80, False)):
    s = S(("0.0.0.0", port), H); s.name = "the test host"
    if tls:
        s.socket = ctx.wrap_socket(s.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
"""


def find_kubectl() -> str:
    cache = Path(os.environ.get("SANDBOX_CLUSTER_CACHE") or Path.home() / ".cache/sandbox-kernel/cluster")
    return os.environ.get("KUBECTL") or str(cache / "bin" / "current" / "kubectl")


def kubectl(kubeconfig: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [find_kubectl(), "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def build_lab_image(kubeconfig: str) -> str:
    """images/jupyterlab/build --import (cached by content): the image the proxy runs."""
    result = subprocess.run(
        [str(REPO / "images" / "jupyterlab" / "build"), "--import"],
        env={**os.environ, "SANDBOX_KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"images/jupyterlab/build failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


def start_test_hosts(core: Any, image: str, workdir: Path, extra_pod: str = "") -> dict[str, Any]:
    """The test host pod (and ``extra_pod``, a plain client pod of ``image`` next to it, if named):
    {'ip', 'ca', 'namespace'}."""
    ca, cert, key = make_ca(workdir)
    ns = f"egress-targets-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"sandbox-kernel-test": "egress"}}})
    core.create_namespaced_config_map(
        ns,
        {
            "metadata": {"name": "certs"},
            "data": {
                "server.pem": cert.read_text(),
                "server.key": key.read_text(),
                "server.py": SERVER,
                "ca.pem": ca.read_text(),
            },
        },
    )
    index = package_index()
    keys = {path: f"file{i}" for i, path in enumerate(index)}
    core.create_namespaced_config_map(
        ns,
        {
            "metadata": {"name": "index"},
            "data": {"paths.json": json.dumps(keys)},
            "binaryData": {keys[path]: base64.b64encode(body).decode() for path, body in index.items()},
        },
    )
    security = {"runAsUser": 1000, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "certs", "mountPath": "/certs"}, {"name": "index", "mountPath": "/index"}],
    }
    volumes = [{"name": "certs", "configMap": {"name": "certs"}}, {"name": "index", "configMap": {"name": "index"}}]
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "hosts"},
            "spec": {
                "securityContext": {
                    **security,
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                },
                "containers": [
                    {
                        **container,
                        "name": "hosts",
                        "command": ["python3", "/certs/server.py"],
                        "readinessProbe": {"tcpSocket": {"port": 443}, "periodSeconds": 1},
                    }
                ],
                "volumes": volumes,
            },
        },
    )
    if extra_pod:
        core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": extra_pod},
                "spec": {
                    "securityContext": security,
                    "volumes": volumes,
                    "containers": [
                        {**container, "name": extra_pod, "command": ["python3", "-c", "import time; time.sleep(86400)"]}
                    ],
                },
            },
        )
    deadline = time.monotonic() + 180
    while True:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items}
        ready = [
            p for p in pods.values() if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        if len(ready) == len(pods) == (2 if extra_pod else 1):
            return {"ip": pods["hosts"].status.pod_ip, "ca": ca.read_text(), "namespace": ns}
        if time.monotonic() > deadline:
            raise TimeoutError(f"the egress test hosts in {ns} did not become ready")
        time.sleep(0.5)


def apply_test_proxy(kubeconfig: str, lab_image: str, hosts: dict[str, Any], workdir: Path) -> Path:
    """k8s/egress/ with the test-only options (see the module's docstring); waits for the rollout."""
    ip = hosts["ip"]
    # pypi.org: answered by the test host, never the real one (a host name users know, for a notebook).
    hosts_file = (
        f"{ip} allowed.test\n{ip} denied.test\n{ip} pypi.org\n10.0.0.1 private.test\n169.254.169.254 metadata.test\n"
        f"{ip} rebind.test\n10.0.0.1 rebind.test\n"  # one good address and one private: refused (no rebinding)
    )
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sandbox-egress-proxy", "namespace": PLATFORM},
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "sync",
                            "command": [
                                "/opt/lab/bin/python",
                                "-m",
                                "sandbox_kernel.egress.k8s_sync",
                                "/policies",
                                "--refusals",
                                "/refusals",
                                "--hosts-file",
                                "/test-hosts/hosts",
                                "--exempt-network",
                                f"{ip}/32",
                            ],
                        },
                        {
                            "name": "proxy",
                            "volumeMounts": [{"name": "test-hosts", "mountPath": "/test-hosts", "readOnly": True}],
                        },
                    ],
                    "volumes": [{"name": "test-hosts", "configMap": {"name": "sandbox-egress-test-hosts"}}],
                }
            },
        },
    }
    reach = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "sandbox-egress-test-hosts", "namespace": PLATFORM},
        "spec": {
            "podSelector": {"matchLabels": PROXY_LABELS},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": hosts["namespace"]}}}],
                    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}],
                }
            ],
        },
    }
    hosts_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "sandbox-egress-test-hosts", "namespace": PLATFORM},
        "data": {"hosts": hosts_file},
    }
    overlay = workdir / "egress-overlay"
    overlay.mkdir(parents=True, exist_ok=True)
    (overlay / "test-only.yaml").write_text(yaml.safe_dump_all([reach, hosts_map]))
    (overlay / "patch.yaml").write_text(yaml.safe_dump(patch))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(REPO / "k8s" / "egress", overlay), "test-only.yaml"],
                "patches": [{"path": "patch.yaml"}],
                "images": [{"name": LAB_IMAGE, "newTag": lab_image.split(":", 1)[1]}],
            }
        )
    )
    # A module before this one removed its proxy without waiting: a Deployment re-made while the old
    # one's ReplicaSet and pods are still being deleted can report a rollout of pods about to go
    # (a kernel's first request then met a new pod whose sync had not yet read its namespace: 407).
    _wait_for_proxy_pods(kubeconfig, lambda items: not any(i["metadata"].get("deletionTimestamp") for i in items))
    kubectl(kubeconfig, "apply", "-k", str(overlay))
    kubectl(kubeconfig, "-n", PLATFORM, "rollout", "status", "deploy/sandbox-egress-proxy", "--timeout=300s")
    _wait_for_proxy_pods(
        kubeconfig,
        lambda items: (
            [i["kind"] for i in items].count("Pod") == 1
            and not any(i["metadata"].get("deletionTimestamp") for i in items)
        ),
    )
    return overlay


def _wait_for_proxy_pods(kubeconfig: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 120) -> None:
    """Wait until the proxy's pods and ReplicaSets (``kubectl get -o json`` items) are ``done``."""
    selector = ",".join(f"{k}={v}" for k, v in PROXY_LABELS.items())
    deadline = time.monotonic() + timeout
    while True:
        got = kubectl(kubeconfig, "-n", PLATFORM, "get", "pods,replicasets", "-l", selector, "-o", "json")
        items = json.loads(got.stdout)["items"]
        if done(items):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the egress proxy's pods did not settle within {timeout:g} s: {got.stdout[-2000:]}")
        time.sleep(0.5)


def remove_test_proxy(kubeconfig: str, overlay: Path) -> None:
    kubectl(kubeconfig, "delete", "-k", str(overlay), "--ignore-not-found", "--wait=false", check=False)


def urlopen_cell(url: str) -> str:
    """A cell that GETs ``url`` through the proxy (the test CA at /tmp/ca.pem) and prints the body or FAILED."""
    return (
        "import ssl, urllib.request\n"
        "ctx = ssl.create_default_context(cafile='/tmp/ca.pem')\n"
        f"try:\n    print(urllib.request.urlopen({url!r}, context=ctx, timeout=10).read().decode())\n"
        "except Exception as e:\n    print('FAILED', e)\n"
    )


# After ``%sandbox deny allowed.test`` in the same cell: request it until refused, print how long that took.
UNTIL_REFUSED = (
    "import ssl, time, urllib.request\n"
    "ctx = ssl.create_default_context(cafile='/tmp/ca.pem'); t = time.monotonic()\n"
    "while time.monotonic() - t < 20:\n"
    "    try:\n        urllib.request.urlopen('https://allowed.test/', context=ctx, timeout=5).read()\n"
    "    except Exception as e:\n        print('REFUSED after %.2f s:' % (time.monotonic() - t), e); break\n"
    "    time.sleep(0.05)\n"
)


def refused_after(stdout: str) -> float:
    """Seconds :data:`UNTIL_REFUSED` printed."""
    return float(stdout.split("REFUSED after ")[1].split(" s")[0])
