"""Controlled egress on the local backend, end to end through real kernels (issue 10).

Sandboxes with ``Sandbox.allow_hosts`` reach this machine's test hosts (tests/egress_hosts.py)
through the relay on their loopback and the proxy on the host; everything else is refused with
a message naming the host and the setting. A sandbox without the setting has no proxy at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


from egress_hosts import ALLOWED_IP, PIP_INSTALL_CELL, kernel_argv, package_index, serve_test_hosts
from kernels import errors, run_cell, running_kernel, text

pytestmark = pytest.mark.timeout(300)

ALLOW = ["allowed.test", "private.test"]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with serve_test_hosts(tmp_path_factory.mktemp("egress-hosts"), package_index()) as h:
        yield h


@pytest.fixture(scope="module")
def py(local_kernelspecs: Path, hosts: dict[str, Path]) -> Iterator[Any]:
    with running_kernel("sandbox-python", argv=kernel_argv(hosts["hosts"], ALLOW)) as (_km, kc):
        reply, out = run_cell(kc, f"open('/tmp/ca.pem', 'w').write({hosts['ca'].read_text()!r})")
        assert reply["status"] == "ok", out
        yield kc


def _urlopen(url: str) -> str:
    return (
        "import ssl, time, urllib.request\n"
        "ctx = ssl.create_default_context(cafile='/tmp/ca.pem')\n"
        "t = time.monotonic()\n"
        f"try:\n    print(urllib.request.urlopen({url!r}, context=ctx, timeout=10).read().decode())\n"
        "except Exception as e:\n    print('FAILED', e)\n"
        "print('seconds %.2f' % (time.monotonic() - t))\n"
    )


def test_allowed_host_reached_by_python_https_and_http(py: Any) -> None:
    assert "hello from allowed.test (Host: allowed.test)" in text(run_cell(py, _urlopen("https://allowed.test/"))[1])
    assert "hello from allowed.test (Host: allowed.test)" in text(run_cell(py, _urlopen("http://allowed.test/"))[1])


def test_allowed_host_reached_by_curl(py: Any) -> None:
    code = (
        "import shutil, subprocess\n"
        "curl = shutil.which('curl')\n"
        "print(subprocess.run([curl, '-sS', '--cacert', '/tmp/ca.pem', 'https://allowed.test/'], capture_output=True, text=True).stdout if curl else 'NO CURL')\n"
    )
    out = text(run_cell(py, code)[1])
    if "NO CURL" in out:
        pytest.skip("no curl in the sandbox (the host has none)")
    assert "hello from allowed.test" in out


def test_denied_host_fails_fast_naming_the_host_and_the_setting(py: Any) -> None:
    out = text(run_cell(py, _urlopen("https://denied.test/"))[1])
    assert (
        "Tunnel connection failed: 403 Sandbox egress refused denied.test (denied.test is not on the allow list)" in out
    )
    assert "%sandbox allow denied.test" in out
    assert float(out.rsplit("seconds ", 1)[1]) < 2
    out = text(run_cell(py, _urlopen("http://denied.test/"))[1])
    assert "HTTP Error 403: Sandbox egress refused denied.test" in out and "%sandbox allow denied.test" in out


def test_private_address_refused_after_resolving(py: Any) -> None:
    out = text(run_cell(py, _urlopen("https://private.test/"))[1])
    assert "refused private.test (private.test resolves to 10.0.0.1" in out


def test_proxy_is_the_only_way_out(py: Any) -> None:
    code = (
        "import os, socket\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        f"try:\n    socket.create_connection(('{ALLOWED_IP}', 443), timeout=2); print('REACHED')\n"
        "except OSError as e:\n    print('direct', type(e).__name__)\n"
        "print(sorted(os.listdir('/run/sandbox-egress')))\n"
    )
    out = text(run_cell(py, code)[1])
    assert "['lo']" in out and "REACHED" not in out and "direct" in out and "['proxy.sock']" in out


def test_no_network_hint_when_hosts_are_allowed(py: Any) -> None:
    """The 'no network by design' line (network_hint.py) is for sandboxes without egress only."""
    reply, _ = run_cell(
        py, "import socket\nsocket.getaddrinfo('allowed.test', 443)"
    )  # no resolver: only the proxy resolves
    assert reply["status"] == "error" and reply["ename"] == "gaierror"
    assert not any("no network access by design" in line for line in reply["traceback"]), reply["traceback"]


def test_network_magic_shows_the_list_and_the_last_refused(py: Any) -> None:
    run_cell(py, _urlopen("https://denied.test/"))
    reply, out = run_cell(py, "%sandbox network")
    shown = text(out)
    assert reply["status"] == "ok"
    assert "allowed: allowed.test, private.test" in shown and "last refused:" in shown and "denied.test:443" in shown


def test_allow_and_deny_take_effect_within_a_second(py: Any) -> None:
    reply, out = run_cell(py, "%sandbox deny allowed.test\n" + _urlopen("https://allowed.test/"))
    assert "allowed.test is denied" in text(out) and "FAILED" in text(out), out
    began = time.monotonic()
    reply, out = run_cell(py, "%sandbox allow allowed.test\n" + _urlopen("https://allowed.test/"))
    assert "hello from allowed.test" in text(out) and time.monotonic() - began < 1.0 + 1.0  # cell round trip included
    # Widening is the operator's decision.
    reply, out = run_cell(py, "%sandbox allow denied.test")
    assert reply["status"] == "error" and "EgressProxy.allow_widening" in reply["evalue"]


def test_pip_install_from_a_local_index_on_an_allowed_host(py: Any) -> None:
    reply, out = run_cell(py, PIP_INSTALL_CELL, timeout=180)
    assert "installed through the egress proxy" in text(out), (text(out), errors(out))


def test_node_reaches_the_allowed_host_and_is_refused_the_denied_one(
    local_kernelspecs: Path, hosts: dict[str, Path]
) -> None:
    ca = hosts["ca"].read_text()
    # Node.js 24 (and 22.21+) honour HTTPS_PROXY in fetch with NODE_USE_ENV_PROXY=1, which the
    # sandbox sets; older Node has no proxy support in fetch, so the tunnel is made by hand.
    code = (
        f"const ca = {ca!r};\n"
        "const http = require('http'), tls = require('tls');\n"
        "function viaProxy(host) { return new Promise((resolve) => {\n"
        "  const req = http.request({host: '127.0.0.1', port: 3128, method: 'CONNECT', path: host + ':443'});\n"
        "  req.on('connect', (res, socket) => {\n"
        "    if (res.statusCode !== 200) { resolve('REFUSED ' + res.statusCode + ' ' + res.statusMessage); socket.destroy(); return; }\n"
        "    const t = tls.connect({socket, servername: host, ca}, () => t.write(`GET / HTTP/1.1\\r\\nHost: ${host}\\r\\nConnection: close\\r\\n\\r\\n`));\n"
        "    let data = ''; t.on('data', (d) => data += d); t.on('end', () => resolve(data)); t.on('error', (e) => resolve('ERROR ' + e.message));\n"
        "  });\n"
        "  req.on('response', (res) => resolve('REFUSED ' + res.statusCode + ' ' + res.statusMessage));  // a refusal is no tunnel\n"
        "  req.on('error', (e) => resolve('ERROR ' + e.message)); req.end();\n"
        "}); }\n"
        "(async () => {\n"
        "  console.log('A', await viaProxy('allowed.test'));\n"
        "  console.log('D', await viaProxy('denied.test'));\n"
        "  const major = Number(process.versions.node.split('.')[0]);\n"
        "  if (major >= 24) {\n"
        "    require('fs').writeFileSync('/tmp/ca.pem', ca);\n"
        "    const r = require('child_process').spawnSync(process.execPath, ['-e', \"fetch('https://allowed.test/').then(r => r.text()).then(t => console.log('FETCH', t))\"],\n"
        "      {env: {...process.env, NODE_EXTRA_CA_CERTS: '/tmp/ca.pem'}, encoding: 'utf8'});\n"
        "    console.log(r.stdout, r.stderr);\n"
        "  } else { console.log('FETCH skipped: node', process.versions.node); }\n"
        "})();\n"
    )
    with running_kernel("sandbox-node", argv=kernel_argv(hosts["hosts"], ALLOW)) as (_km, kc):
        reply, out = run_cell(kc, code)
        time.sleep(1)  # output of the promises after the cell's end comes with the next cell
        reply2, out2 = run_cell(kc, "1")
    shown = text(out) + text(out2)
    assert "A HTTP/1.1 200 OK" in shown and "hello from allowed.test" in shown, (shown, errors(out))
    assert "D REFUSED 403 Sandbox egress refused denied.test" in shown and "%sandbox allow denied.test" in shown
    if "FETCH skipped" not in shown:
        assert "FETCH hello from allowed.test" in shown


def test_default_is_deny_all_without_any_proxy(local_kernelspecs: Path, hosts: dict[str, Path]) -> None:
    """No Sandbox.allow_hosts: no proxy variables, no socket, no relay, no way to the test host."""
    code = (
        "env | grep -ci proxy; ls /run/sandbox-egress 2>&1 | head -1; "
        f"(exec 3<>/dev/tcp/127.0.0.1/3128) 2>/dev/null && echo RELAY || echo no-relay; "
        f"(exec 3<>/dev/tcp/{ALLOWED_IP}/443) 2>/dev/null && echo REACHED || echo unreachable\n"
    )
    with running_kernel("sandbox-bash") as (_km, kc):
        reply, out = run_cell(kc, code)
        net = text(run_cell(kc, "%sandbox network")[1])
    shown = text(out)
    assert shown.splitlines()[0] == "0", shown
    assert "No such file or directory" in shown and "no-relay" in shown and "unreachable" in shown
    assert "RELAY" not in shown and "REACHED" not in shown
    assert "network: none" in net


def _runners_of(kernel_pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"sandbox_kernel.egress.runner" in cmdline and f"SANDBOX_EGRESS_PARENT={kernel_pid}\0".encode() in environ:
            found.append(int(entry.name))
    return found


def test_proxy_ends_with_a_killed_kernel(local_kernelspecs: Path, hosts: dict[str, Path]) -> None:
    with running_kernel("sandbox-bash", argv=kernel_argv(hosts["hosts"], ALLOW)) as (km, kc):
        run_cell(kc, "true")
        pid = km.provisioner.process.pid
        assert _runners_of(pid), "no proxy for the kernel"
        km.provisioner.process.kill()  # SIGKILL: no cleanup in the kernel
        deadline = time.monotonic() + 10
        while _runners_of(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _runners_of(pid), "the proxy outlived its kernel"
    # What the killed kernel left in the state dir is swept by the next start; do it now.
    from sandbox_kernel.egress.host import EgressProxy, sweep_stale

    sweep_stale(EgressProxy().base_dir())
    assert not list(EgressProxy().base_dir().glob(f"local-{pid}-*")), "state of the killed kernel left"
