"""Controlled egress on the real test cluster (issue 10, k8s/EGRESS.md): sandboxes with
``Sandbox.allow_hosts`` reach their allowed hosts through the shared proxy (k8s/egress/), and
nothing else.

Set-up (module fixtures, tests/egress_cluster.py, as an admin; the kernels run as the
least-privilege service account): the test host pod (HTTPS with the test CA of
tests/egress_hosts.py on 443, HTTP on 80) in a namespace of its own, and the proxy of
k8s/egress/ with the JupyterLab image built from this tree and the TEST-ONLY sync options (a
hosts file naming the test hosts, ``--exempt-network`` of exactly the test pod's address: the
proxy refuses private addresses, and pods have private addresses). Those options are on the
proxy Deployment's command line, which no sandbox and no kernel identity can change. Everything
is removed afterwards.

No test contacts anything outside the cluster.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from kubernetes import client
from kubernetes.client.rest import ApiException

from egress_cluster import UNTIL_REFUSED, refused_after, urlopen_cell, REPO, kubectl
from egress_hosts import PIP_INSTALL_CELL
from fixtures_kubernetes import K8sKernel, wait_until
from sandbox_kernel.egress import refusals
from sandbox_kernel.kubernetes import manifests

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

PLATFORM = "sandbox-kernel-system"
NP_POLICY = "sandbox-kernel-networkpolicies"
NS_POLICY = "sandbox-kernel-namespaces"


@pytest.fixture(scope="module")
def kernels(kernel_env: dict[str, str], core_v1: client.CoreV1Api, proxy: str) -> Iterator[dict[str, K8sKernel]]:
    """a: Python, allowed.test and private.test; b: Python, denied.test; bash: Bash, allowed.test;
    c: Python, allowed.test and rebind.test (the attacks); node: Node.js, allowed.test."""
    started: dict[str, K8sKernel] = {}
    spec_manager = KernelSpecManager(kernel_dirs=[str(Path(kernel_env["JUPYTER_PATH"]) / "kernels")])
    try:
        for key, language, allow in (
            ("a", "python", ["allowed.test", "private.test"]),
            ("b", "python", ["denied.test"]),
            ("bash", "bash", ["allowed.test"]),
            ("c", "python", ["allowed.test", "rebind.test"]),
            ("node", "node", ["allowed.test"]),
        ):
            kernel_id = str(uuid.uuid4())
            km = KernelManager(kernel_name=f"sandbox-{language}", kernel_spec_manager=spec_manager)
            km.shutdown_wait_time = 60.0
            km.start_kernel(
                env={**os.environ, **kernel_env, "SANDBOX_KERNEL_ID": kernel_id},
                extra_arguments=[f"--Sandbox.allow_hosts={a}" for a in allow],
            )
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=180)
            started[key] = K8sKernel(km, kc, kernel_id, core_v1)
        yield started
    finally:
        for kernel in started.values():
            kernel.kc.stop_channels()
            kernel.km.shutdown_kernel(now=False)


def _ca_cell(ca: str) -> str:
    return f"open('/tmp/ca.pem', 'w').write({ca!r})\n"


@pytest.fixture(scope="module")
def ready(kernels: dict[str, K8sKernel], test_hosts: dict[str, Any]) -> dict[str, K8sKernel]:
    for key in ("a", "b", "c"):
        cell = kernels[key].run(_ca_cell(test_hosts["ca"]))
        assert cell.reply["status"] == "ok", cell.outputs
    cell = kernels["node"].run(f"require('fs').writeFileSync('/tmp/ca.pem', {json.dumps(test_hosts['ca'])}); 'ok'")
    assert cell.reply["status"] == "ok", cell.outputs
    cell = kernels["bash"].run(f"cat > /tmp/ca.pem <<'EOF'\n{test_hosts['ca']}EOF\necho ok")
    assert "ok" in cell.stdout, cell.outputs
    return kernels


def test_allowed_host_through_the_proxy_from_python_and_from_curl_in_bash(ready: dict[str, K8sKernel]) -> None:
    assert (
        "hello from the test host (Host: allowed.test)" in ready["a"].run(urlopen_cell("https://allowed.test/")).stdout
    )
    assert (
        "hello from the test host (Host: allowed.test)" in ready["a"].run(urlopen_cell("http://allowed.test/")).stdout
    )
    cell = ready["bash"].run('curl -sS --cacert /tmp/ca.pem https://allowed.test/; echo "rc=$?"')
    assert "hello from the test host (Host: allowed.test)" in cell.stdout and "rc=0" in cell.stdout, cell.outputs


def test_a_refused_host_gets_403_naming_the_host_and_the_setting(ready: dict[str, K8sKernel]) -> None:
    out = ready["a"].run(urlopen_cell("https://denied.test/")).stdout
    assert "FAILED" in out and "403" in out and "denied.test" in out and "%sandbox allow denied.test" in out, out
    out = ready["a"].run(urlopen_cell("https://private.test/")).stdout  # allowed by name, private after resolving
    assert "FAILED" in out and "403" in out and "10.0.0.1" in out, out
    cell = ready["bash"].run(
        "curl -sS -o /dev/null -w '%{http_code}' --cacert /tmp/ca.pem https://denied.test/; echo \" rc=$?\""
    )
    assert "403" in cell.stdout + cell.stderr and "rc=0" not in cell.stdout, cell.outputs


# Raw requests to the proxy at PROXY_URL with the credential in it (see _raw_proxy), for the attacks.
RAW_PROXY = (
    "import base64, os, socket, ssl, urllib.parse\n"
    "u = urllib.parse.urlsplit(PROXY_URL)\n"
    "AUTH = 'Proxy-Authorization: Basic ' + base64.b64encode(f'{u.username}:{u.password}'.encode()).decode() + '\\r\\n'\n"
    "def head(s):\n"
    "    h = b''\n"
    "    while b'\\r\\n\\r\\n' not in h:\n"
    "        d = s.recv(4096)\n"
    "        if not d: break\n"
    "        h += d\n"
    "    return h.split(b'\\r\\n')[0].decode('latin-1') or 'EOF'\n"
    "def connect(target):\n"
    "    s = socket.create_connection((u.hostname, u.port), timeout=10)\n"
    "    s.sendall(f'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n{AUTH}\\r\\n'.encode())\n"
    "    return s, head(s)\n"
    "def status(target):\n"
    "    s, line = connect(target); s.close(); return line\n"
    "def tls(target, sni):\n"
    "    s, line = connect(target)\n"
    "    if ' 200 ' not in line + ' ': return line\n"
    "    ctx = ssl.create_default_context(cafile='/tmp/ca.pem'); ctx.check_hostname = False\n"
    "    try:\n"
    "        t = ctx.wrap_socket(s, server_hostname=sni)\n"
    "        t.sendall(f'GET / HTTP/1.1\\r\\nHost: {sni}\\r\\nConnection: close\\r\\n\\r\\n'.encode())\n"
    "        return 'TLS ' + head(t)\n"
    "    except Exception as e:\n"
    "        return 'TLS FAILED ' + type(e).__name__\n"
    "def plain(url, host):\n"
    "    s = socket.create_connection((u.hostname, u.port), timeout=10)\n"
    "    s.sendall(f'GET {url} HTTP/1.1\\r\\nHost: {host}\\r\\n{AUTH}Connection: close\\r\\n\\r\\n'.encode())\n"
    "    return head(s)\n"
)


def _raw_proxy(proxy_url: str | None = None) -> str:
    """:data:`RAW_PROXY` for ``proxy_url`` (default: the sandbox's own, its HTTPS_PROXY)."""
    url = repr(proxy_url) if proxy_url else "__import__('os').environ['HTTPS_PROXY']"
    return f"PROXY_URL = {url}\n" + RAW_PROXY


def test_ip_literals_other_ports_rebinding_and_sni_or_host_mismatches_are_refused(
    ready: dict[str, K8sKernel], test_hosts: dict[str, Any]
) -> None:
    """The local security suite's attacks (tests/security/test_egress_attacks.py), from a real pod
    through the shared proxy: c allows allowed.test and rebind.test (the test host's address and
    10.0.0.1 in the proxy's test resolver); the test host's certificate is valid for denied.test too,
    so only the SNI check stands in the way of a tunnel to allowed.test that speaks to denied.test."""
    ip = test_hosts["ip"]
    code = _raw_proxy() + (
        f"print('IP', status({ip + ':443'!r}))\n"
        "print('PORT', status('allowed.test:8443'))\n"
        "print('REBIND', status('rebind.test:443'))\n"
        "print('SNI-SAME', tls('allowed.test:443', 'allowed.test'))\n"
        "print('SNI-OTHER', tls('allowed.test:443', 'denied.test'))\n"
        "print('HOST-SAME', plain('http://allowed.test/', 'allowed.test'))\n"
        "print('HOST-OTHER', plain('http://allowed.test/', 'denied.test'))\n"
    )
    cell = ready["c"].run(code, timeout=120)
    lines = dict(line.split(" ", 1) for line in cell.stdout.splitlines() if " " in line)
    assert lines.keys() >= {"IP", "PORT", "REBIND", "SNI-SAME", "SNI-OTHER", "HOST-SAME", "HOST-OTHER"}, cell.outputs
    assert " 403 " in lines["IP"] and "is an IP address" in lines["IP"], lines
    assert " 403 " in lines["PORT"] and "port 8443 of allowed.test is not allowed" in lines["PORT"], lines
    assert " 403 " in lines["REBIND"] and "resolves to 10.0.0.1" in lines["REBIND"], lines
    assert lines["SNI-SAME"] == "TLS HTTP/1.1 200 OK", lines  # the same code gets through with the right name
    assert lines["SNI-OTHER"].startswith("TLS FAILED"), lines
    assert " 200 " in lines["HOST-SAME"], lines
    assert " 403 " in lines["HOST-OTHER"] and "does not match" in lines["HOST-OTHER"], lines


def test_pip_install_from_a_package_index_on_an_allowed_host(ready: dict[str, K8sKernel]) -> None:
    """``pip install`` (the python image's Debian pip) of the test host's wheel, through the proxy."""
    cell = ready["c"].run(PIP_INSTALL_CELL, timeout=180)
    assert "installed through the egress proxy" in cell.stdout, cell.outputs


def test_node_reaches_the_allowed_host_and_is_refused_the_denied_one(ready: dict[str, K8sKernel]) -> None:
    """Node.js through the proxy of its HTTPS_PROXY. The cluster's Node (bookworm's 18) has no proxy
    support in fetch (22.21+/24 with NODE_USE_ENV_PROXY=1, which the pod sets), so the tunnel is made
    with http.request's CONNECT, as a Node user behind a proxy does."""
    code = (
        "const http = require('http'), tls = require('tls'), fs = require('fs');\n"
        "const ca = fs.readFileSync('/tmp/ca.pem');\n"
        "const u = new URL(process.env.HTTPS_PROXY);\n"
        "const auth = 'Basic ' + Buffer.from(decodeURIComponent(u.username) + ':' + decodeURIComponent(u.password)).toString('base64');\n"
        "function viaProxy(host) { return new Promise((resolve) => {\n"
        "  const req = http.request({host: u.hostname, port: u.port, method: 'CONNECT', path: host + ':443',\n"
        "                            headers: {'Proxy-Authorization': auth}});\n"
        "  req.on('connect', (res, socket) => {\n"
        "    if (res.statusCode !== 200) { resolve('REFUSED ' + res.statusCode + ' ' + res.statusMessage); socket.destroy(); return; }\n"
        "    const t = tls.connect({socket, servername: host, ca}, () => t.write(`GET / HTTP/1.1\\r\\nHost: ${host}\\r\\nConnection: close\\r\\n\\r\\n`));\n"
        "    let data = ''; t.on('data', (d) => data += d); t.on('end', () => resolve(data)); t.on('error', (e) => resolve('ERROR ' + e.message));\n"
        "  });\n"
        "  req.on('response', (res) => resolve('REFUSED ' + res.statusCode + ' ' + res.statusMessage));\n"
        "  req.on('error', (e) => resolve('ERROR ' + e.message)); req.end();\n"
        "}); }\n"
        "(async () => {\n"
        "  console.log('A', await viaProxy('allowed.test'));\n"
        "  console.log('D', await viaProxy('denied.test'));\n"
        "})();\n"
    )
    node = ready["node"]
    shown = node.run(code, timeout=60).stdout
    deadline = time.monotonic() + 20
    while "D " not in shown and time.monotonic() < deadline:  # the promises print after the cell's end
        time.sleep(0.5)
        shown += node.run("1").stdout
    assert "A HTTP/1.1 200 OK" in shown and "hello from the test host (Host: allowed.test)" in shown, shown
    assert "D REFUSED 403 Sandbox egress refused denied.test" in shown and "%sandbox allow denied.test" in shown, shown


def test_no_direct_egress_even_with_an_allow_list(
    ready: dict[str, K8sKernel], test_hosts: dict[str, Any], proxy: str
) -> None:
    """Everything but the proxy's port stays closed: the test host itself, the API server, DNS,
    the proxy pod on another port; the proxy's ClusterIP:3128 answers."""
    code = (
        "import socket\n"
        "def probe(host, port):\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try:\n        s.connect((host, port)); return 'open'\n"
        "    except OSError as e:\n        return 'closed'\n"
        "    finally:\n        s.close()\n"
        f"for h, p in [({test_hosts['ip']!r}, 443), ({test_hosts['ip']!r}, 80), ('10.96.0.1', 443), ('10.96.0.10', 53), "
        f"({proxy!r}, 3128)]:\n"
        "    print(h, p, probe(h, p))\n"
    )
    out = ready["a"].run(code, timeout=120).stdout
    assert f"{test_hosts['ip']} 443 closed" in out and f"{test_hosts['ip']} 80 closed" in out, out
    assert "10.96.0.1 443 closed" in out and "10.96.0.10 53 closed" in out, out
    assert f"{proxy} 3128 open" in out, out


def _connect_code(proxy_url: str, target: str) -> str:
    """A cell that sends CONNECT through the proxy with the credential of ``proxy_url`` and prints the status."""
    return _raw_proxy(proxy_url) + f"print('STATUS', status({target!r}).split(' ')[1])\n"


def test_another_sandboxs_credential_is_not_usable(ready: dict[str, K8sKernel], core_v1: client.CoreV1Api) -> None:
    mine = ready["a"].run("import os; print(os.environ['HTTPS_PROXY'])").stdout.strip()
    theirs = ready["b"].run("import os; print(os.environ['HTTPS_PROXY'])").stdout.strip()
    assert mine.startswith("http://sandbox:") and theirs.startswith("http://sandbox:") and mine != theirs
    assert "STATUS 200" in ready["b"].run(_connect_code(theirs, "denied.test:443")).stdout  # b's own list
    assert "STATUS 403" in ready["a"].run(_connect_code(mine, "denied.test:443")).stdout  # not on a's list
    # b's credential, leaked to a's pod: refused as no credential (it is only valid from b's pod).
    assert "STATUS 407" in ready["a"].run(_connect_code(theirs, "denied.test:443")).stdout
    # The hash on b's namespace (readable by namespace readers) is not a credential.
    digest = core_v1.read_namespace(ready["b"].namespace()).metadata.annotations[manifests.ANNOTATION_EGRESS_TOKEN]
    forged = f"http://sandbox:{digest}@{urlparse_host(theirs)}"
    assert "STATUS 407" in ready["a"].run(_connect_code(forged, "denied.test:443")).stdout


def urlparse_host(url: str) -> str:
    return url.rsplit("@", 1)[1]


def test_the_credential_is_in_no_api_object(ready: dict[str, K8sKernel], core_v1: client.CoreV1Api) -> None:
    url = ready["a"].run("import os; print(os.environ['HTTPS_PROXY'])").stdout.strip()
    token = url.split("sandbox:", 1)[1].split("@", 1)[0]
    ns = ready["a"].namespace()
    notes = core_v1.read_namespace(ns).metadata.annotations
    assert notes[manifests.ANNOTATION_EGRESS_TOKEN] == hashlib.sha256(token.encode()).hexdigest()
    assert notes[manifests.ANNOTATION_EGRESS_ALLOW] == "allowed.test:443,80 private.test:443,80"
    pods = core_v1.list_namespaced_pod(ns).items
    assert pods and token not in json.dumps(client.ApiClient().sanitize_for_serialization(pods))
    assert notes[manifests.ANNOTATION_EGRESS_SOURCE] == pods[0].status.pod_ip
    assert core_v1.list_namespaced_secret(ns).items == []
    policy = client.NetworkingV1Api(core_v1.api_client).read_namespaced_network_policy(manifests.EGRESS_POLICY_NAME, ns)
    assert policy.spec.egress[0].ports[0].port == 3128
    out = ready["a"].run("%sandbox policy").stdout
    assert "egress: only HTTP(S) through the shared egress proxy" in out and "name: egress-proxy" in out, out


def test_deny_takes_effect_within_seconds_and_allow_only_narrows(ready: dict[str, K8sKernel]) -> None:
    a = ready["a"]
    cell = a.run("%sandbox deny allowed.test\n" + UNTIL_REFUSED)
    assert "allowed.test is denied" in cell.stdout and "REFUSED after" in cell.stdout, cell.outputs
    seconds = refused_after(cell.stdout)
    print(f"%sandbox deny took effect after {seconds:.2f} s")
    assert seconds < 5, cell.stdout
    assert "allowed.test is allowed" in a.run("%sandbox allow allowed.test").stdout
    wait_until(
        lambda: "hello from" in a.run(urlopen_cell("https://allowed.test/")).stdout, 10, 0.2, "allowed.test back"
    )
    cell = a.run("%sandbox allow evil.test")
    assert cell.reply["status"] == "error" and "can only narrow" in json.dumps(cell.outputs), cell.outputs
    out = a.run("%sandbox network").stdout
    assert "allowed: private.test, allowed.test" in out and "can only narrow it" in out, (
        out
    )  # allowed.test came back last


def test_ipv6_is_still_denied(ready: dict[str, K8sKernel], proxy: str) -> None:
    code = (
        "import socket\n"
        "print('IFACES', sorted({l.split()[-1] for l in open('/proc/net/if_inet6')} - {'lo'}) if __import__('os').path.exists('/proc/net/if_inet6') else [])\n"
        # (not ::ffff:<proxy>: an IPv4-mapped address is the IPv4 path, which reaches the proxy)
        f"for a in ('64:ff9b::{proxy}', '2001:db8::1', 'fe80::1%eth0', '::1'):\n"
        "    s = socket.socket(socket.AF_INET6); s.settimeout(2)\n"
        "    try:\n        s.connect((a, 3128)); print(a, 'open')\n"
        "    except OSError as e:\n        print(a, 'closed')\n"
        "    finally:\n        s.close()\n"
    )
    out = ready["a"].run(code, timeout=60).stdout
    assert "IFACES []" in out and " open" not in out, out


# ---------------------------------------------------------------------------------------------
# The kernels' identity against the admission policy (as the service account, never admin).


def _refused(call: Any, policy: str) -> str:
    with pytest.raises(ApiException) as refused:
        call()
    message = str(json.loads(refused.value.body).get("message"))
    assert refused.value.status == 403 and f"ValidatingAdmissionPolicy '{policy}'" in message, message
    return message


def test_the_kernel_identity_may_only_narrow_its_own_namespaces_lists(
    ready: dict[str, K8sKernel], sa_api: client.ApiClient, core_v1: client.CoreV1Api
) -> None:
    sa = client.CoreV1Api(sa_api)
    ns = ready["a"].namespace()

    def patch(notes: dict[str, Any], labels: dict[str, Any] | None = None, name: str = ns) -> Any:
        return sa.patch_namespace(name, {"metadata": {"annotations": notes, **({"labels": labels} if labels else {})}})

    patch({manifests.ANNOTATION_EGRESS_DENY: "private.test:443,80"})  # allowed: the kernel's own list
    assert "within the operator's list" in _refused(
        lambda: patch({manifests.ANNOTATION_EGRESS_ALLOW: "evil.test:443"}), NS_POLICY
    )
    assert "within the operator's list" in _refused(
        lambda: patch({manifests.ANNOTATION_EGRESS_ALLOW: "allowed.test:443,80,22"}), NS_POLICY
    )  # another port
    _refused(lambda: patch({manifests.ANNOTATION_EGRESS_OPERATOR: "evil.test:443"}), NS_POLICY)
    _refused(lambda: patch({manifests.ANNOTATION_EGRESS_WIDENING: "true"}), NS_POLICY)
    _refused(lambda: patch({manifests.ANNOTATION_EGRESS_TOKEN: "0" * 64}), NS_POLICY)
    _refused(lambda: patch({"example.org/other": "x"}), NS_POLICY)
    _refused(lambda: patch({}, {"sandbox-kernel/owner": "someone-else"}), NS_POLICY)
    patch({manifests.ANNOTATION_EGRESS_DENY: ""})
    # Another identity's sandbox namespace: refused, whatever is patched.
    other = f"sandbox-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace(
        {
            "metadata": {
                "name": other,
                "labels": {
                    manifests.LABEL_MANAGED_BY: manifests.MANAGED_BY,
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
                "annotations": {manifests.ANNOTATION_USER: "system:serviceaccount:x:other"},
            }
        }
    )
    try:
        assert "sandbox namespaces it created" in _refused(
            lambda: patch({manifests.ANNOTATION_EGRESS_ALLOW: ""}, name=other), NS_POLICY
        )
    finally:
        core_v1.delete_namespace(other)


def test_only_the_exact_egress_proxy_policy_is_admitted(ready: dict[str, K8sKernel], sa_api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(sa_api)
    ns = ready["a"].namespace()
    ident = manifests.SandboxIdentity(ns, "k", "python", "o", "u", "t")
    exact = manifests.egress_network_policy(ident)
    exact["metadata"]["name"] = "egress-proxy"

    def variant(change: Any) -> dict[str, Any]:
        body = json.loads(json.dumps(exact))
        change(body["spec"])
        return body

    variants = [
        lambda s: s["egress"][0]["ports"][0].update(port=53),
        lambda s: s["egress"][0]["to"][0].update(namespaceSelector={}),
        lambda s: s["egress"][0]["to"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}),
        lambda s: s["egress"].append({}),
        lambda s: s.update(policyTypes=["Egress", "Ingress"], ingress=[{}]),
        lambda s: s["podSelector"].update(matchLabels={}),
        lambda s: s["egress"][0]["ports"][0].update(endPort=65535),
    ]
    for change in variants:
        body = variant(change)
        assert "nothing else" in _refused(lambda: net.create_namespaced_network_policy(ns, body), NP_POLICY)
    other = json.loads(json.dumps(exact))
    other["metadata"]["name"] = "allow-more"
    _refused(lambda: net.create_namespaced_network_policy(ns, other), NP_POLICY)
    # The exact object itself already exists in a's namespace (the kernel made it): a second is a conflict, not a refusal.
    with pytest.raises(ApiException) as exists:
        net.create_namespaced_network_policy(ns, exact)
    assert exists.value.status == 409


def test_a_namespace_without_an_egress_credential_gets_no_egress_policy(
    sa_api: client.ApiClient, kernel_env: dict[str, str]
) -> None:
    """A sandbox without an allow list: its own identity cannot add the egress-proxy policy."""
    from sandbox_kernel.kubernetes.api import KubernetesApi
    from sandbox_kernel.kubernetes.provision import create_namespace_objects
    from sandbox_kernel.kubernetes.settings import KubernetesSandbox
    from sandbox_kernel.config import Sandbox
    from sandbox_kernel.languages import LANGUAGES

    settings = KubernetesSandbox(kubeconfig=kernel_env["SANDBOX_KUBECONFIG"])
    api = KubernetesApi(settings.kubeconfig)
    ident, _ = create_namespace_objects(api, settings, LANGUAGES["python"], Sandbox().limits(), "egress-none")
    try:
        body = manifests.egress_network_policy(ident)
        assert "egress credential" in _refused(
            lambda: client.NetworkingV1Api(sa_api).create_namespaced_network_policy(ident.namespace, body), NP_POLICY
        )
    finally:
        api.delete_namespace(ident.namespace)


def test_widening_is_admitted_only_when_the_sandbox_was_started_with_it(
    sa_api: client.ApiClient, kernel_env: dict[str, str]
) -> None:
    from sandbox_kernel.config import Sandbox
    from sandbox_kernel.kubernetes.api import KubernetesApi
    from sandbox_kernel.kubernetes.egress import initial_spec
    from sandbox_kernel.kubernetes.provision import create_namespace_objects
    from sandbox_kernel.kubernetes.settings import KubernetesSandbox
    from sandbox_kernel.languages import LANGUAGES

    settings = KubernetesSandbox(kubeconfig=kernel_env["SANDBOX_KUBECONFIG"])
    api = KubernetesApi(settings.kubeconfig)
    limits = Sandbox(allow_hosts=["allowed.test"]).limits()
    spec = initial_spec(("allowed.test",), True, base64.b16encode(os.urandom(32)).decode().lower())
    ident, _ = create_namespace_objects(api, settings, LANGUAGES["python"], limits, "egress-widening", spec)
    try:
        api.patch_namespace(ident.namespace, {}, dict(manifests.egress_list_patch(["evil.test:443"], [])))
        assert (
            api.read_namespace(ident.namespace)["metadata"]["annotations"][manifests.ANNOTATION_EGRESS_ALLOW]
            == "evil.test:443"
        )
    finally:
        api.delete_namespace(ident.namespace)


def test_the_test_only_exemption_is_the_test_hosts_address_on_the_proxys_command_line(
    proxy: str, kubeconfig: str, test_hosts: dict[str, Any]
) -> None:
    deployment = json.loads(
        kubectl(kubeconfig, "-n", PLATFORM, "get", "deploy/sandbox-egress-proxy", "-o", "json").stdout
    )
    sync = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sync")
    assert sync["command"][sync["command"].index("--exempt-network") + 1] == f"{test_hosts['ip']}/32"
    shipped = yaml.safe_load_all((REPO / "k8s" / "egress" / "proxy.yaml").read_text())
    commands = [
        c["command"]
        for d in shipped
        if d and d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert commands and not any("--exempt-network" in c or "--hosts-file" in c for c in commands)  # never as shipped


# ---------------------------------------------------------------------------------------------
# Refused requests as Events (sandbox_kernel/egress/refusals.py): %sandbox network shows them.


def _refused_events(core_v1: client.CoreV1Api, namespace: str, host: str) -> list[Any]:
    return [
        e
        for e in core_v1.list_namespaced_event(namespace).items
        if e.reason == "EgressRefused" and (e.message or "").startswith(f"{host}:443 refused: ")
    ]


def test_sandbox_network_lists_a_refused_host_from_its_event(
    ready: dict[str, K8sKernel], core_v1: client.CoreV1Api
) -> None:
    a = ready["a"]
    host = f"refused-{uuid.uuid4().hex[:6]}.test"  # no other test refuses it
    out = a.run(urlopen_cell(f"https://{host}/")).stdout
    assert "FAILED" in out and "403" in out, out

    def listed() -> str | None:
        text = a.run("%sandbox network").stdout
        return text if f"{host}:443  {host} is not on the allow list" in text else None

    network = wait_until(listed, 10, 0.5, f"%sandbox network to list {host}")
    assert "last refused (most recent first" in network and "%sandbox allow HOST" in network, network
    (event,) = wait_until(lambda: _refused_events(core_v1, a.namespace(), host), 10, 0.5, "the Event")
    assert event.type == "Warning" and event.count == 1 and event.source.component == "sandbox-egress-proxy"
    assert (event.involved_object.kind, event.involved_object.name) == ("Namespace", a.namespace())
    assert event.message == f"{host}:443 refused: {host} is not on the allow list"
    # A burst of the same refusal: still one Event (one proxy replica here), its count patched.
    out = a.run(
        "import urllib.request\n"
        "for _ in range(50):\n"
        f"    try: urllib.request.urlopen('https://{host}/', timeout=5)\n"
        "    except Exception: pass\n"
        "print('done')\n"
    ).stdout
    assert "done" in out, out
    counted = wait_until(
        lambda: [e for e in _refused_events(core_v1, a.namespace(), host) if e.count == 51], 20, 0.5, "count 51"
    )
    assert len(_refused_events(core_v1, a.namespace(), host)) == 1, counted
    assert f"{host}:443  {host} is not on the allow list (51 times)" in a.run("%sandbox network").stdout


def _proxy_identity(kubeconfig: str, tmp_path: Path) -> client.ApiClient:
    from kubernetes import config

    result = subprocess.run(
        [
            str(REPO / "tests" / "cluster" / "kubeconfig-for"),
            PLATFORM,
            "sandbox-egress-proxy",
            str(tmp_path / "proxy.kubeconfig"),
            "1h",
        ],
        env={**os.environ, "SANDBOX_KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return config.new_client_from_config(config_file=result.stdout.strip().splitlines()[-1])


def test_the_proxy_identity_may_only_record_egress_events_in_sandbox_namespaces(
    ready: dict[str, K8sKernel], proxy: str, kubeconfig: str, k8s_api: client.ApiClient, tmp_path: Path
) -> None:
    """RBAC: namespaces get/list/watch and events create/patch, nothing more; admission: only
    EgressRefused Events about a sandbox namespace, in it."""
    user = f"system:serviceaccount:{PLATFORM}:sandbox-egress-proxy"

    def can(verb: str, resource: str, namespace: str = "") -> bool:
        review = client.AuthorizationV1Api(k8s_api).create_subject_access_review(
            {
                "spec": {
                    "user": user,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{PLATFORM}", "system:authenticated"],
                    "resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace},
                }
            }
        )
        return bool(review.status.allowed)

    ns = ready["a"].namespace()
    assert all(can(v, "namespaces") for v in ("get", "list", "watch"))
    assert can("create", "events", ns) and can("patch", "events", ns)
    for verb, resource in [
        ("get", "events"), ("list", "events"), ("update", "events"), ("delete", "events"),
        ("patch", "namespaces"), ("get", "secrets"), ("list", "pods"), ("create", "pods"),
    ]:  # fmt: skip
        assert not can(verb, resource, ns), (verb, resource)
    events = client.CoreV1Api(_proxy_identity(kubeconfig, tmp_path))
    agg = refusals.Aggregator("e2e-rbac")
    agg.add([refusals.Refusal(ns, "rbac-check.test", 443, "a test", time.time())])
    (tally,) = agg.tallies.values()
    body = refusals.event_body(tally, "e2e-rbac")
    events.create_namespaced_event(ns, body)  # what the sync creates: admitted
    events.patch_namespaced_event(tally.name, ns, {"count": 2})
    for where, change in [
        ("default", lambda b: None),
        (PLATFORM, lambda b: None),
        (ns, lambda b: b.update(reason="Scheduled")),
        (ns, lambda b: b["involvedObject"].update(kind="Pod", name="sandbox")),
        (ns, lambda b: b["source"].update(component="kubelet")),
    ]:
        other = json.loads(json.dumps(body))
        other["metadata"].update(name=f"{tally.name}.{uuid.uuid4().hex[:4]}", namespace=where)
        if where != ns:
            other["involvedObject"].update(name=where, namespace=where)
        change(other)
        with pytest.raises(ApiException) as refused:
            events.create_namespaced_event(where, other)
        assert refused.value.status == 403 and "sandbox-egress-proxy-events" in refused.value.body, refused.value.body
    with pytest.raises(ApiException) as refused:  # a patch must keep it an EgressRefused Event
        events.patch_namespaced_event(tally.name, ns, {"reason": "Started"})
    assert refused.value.status == 403
