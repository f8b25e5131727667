"""Attacks on the egress proxy (sandbox_kernel/egress): each is refused, and logged.

The proxy is the real one (proxy.py with the egress plugins, started by EgressController as
the local backend starts it) and is driven through its Unix socket, as the relay in a sandbox
drives it. Only this machine's test hosts are contacted (tests/egress_hosts.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


from egress_hosts import EXEMPT, serve_test_hosts

from sandbox_kernel.egress.host import EgressController, EgressProxy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with serve_test_hosts(tmp_path_factory.mktemp("egress-hosts")) as h:
        yield h


def _controller(hosts: dict[str, Path], allow: list[str], state: Path) -> EgressController:
    settings = EgressProxy(hosts_file=str(hosts["hosts"]), exempt_networks=[EXEMPT], state_dir=str(state))
    return EgressController(allow, settings)


@pytest.fixture(scope="module")
def proxy(hosts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressController]:
    allow = ["allowed.test", "denied-later.test", "private.test", "metadata.test", "loopback.test", "rebind.test"]
    ctl = _controller(hosts, allow, tmp_path_factory.mktemp("egress-state"))
    ctl._start(None)
    try:
        yield ctl
    finally:
        pid = ctl._proc.pid if ctl._proc else None
        ctl.stop()
        if pid:
            assert subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).stdout == b"", "proxy processes left"


def _connect(ctl: EgressController) -> socket.socket:
    assert ctl.dir is not None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(ctl.dir / "proxy.sock"))
    return s


def _response(s: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    # the body of a refusal (Content-Length bytes)
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, (head + b"\r\n\r\n" + body).decode("latin-1")


def connect_request(ctl: EgressController, target: str) -> tuple[int, str, socket.socket]:
    s = _connect(ctl)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, text = _response(s)
    return status, text, s


def last_log(ctl: EgressController) -> dict[str, Any]:
    for _ in range(50):
        lines = ctl.log_lines()
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError("nothing logged")


def tls_through(s: socket.socket, ca: Path, server_name: str | None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if server_name is None:
        ctx.check_hostname = False
    with ctx.wrap_socket(s, server_hostname=server_name) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data.decode()


def test_allowed_host_is_tunnelled_and_logged_with_the_sandbox_id(
    proxy: EgressController, hosts: dict[str, Path]
) -> None:
    status, _, s = connect_request(proxy, "allowed.test:443")
    assert status == 200
    assert "hello from allowed.test" in tls_through(s, hosts["ca"], "allowed.test")
    entry = [e for e in proxy.log_lines() if e["decision"] == "allowed"][-1]
    assert entry["sandbox"] == proxy.sandbox_id and entry["host"] == "allowed.test" and entry["ip"] == "127.0.0.62"


@pytest.mark.parametrize(
    "target, why",
    [
        ("denied.test:443", "denied.test is not on the allow list"),
        ("127.0.0.62:443", "is an IP address"),
        ("[::1]:443", "is an IP address"),
        ("2130706434:443", "is an IP address"),
        ("allowed.test:8443", "port 8443 of allowed.test is not allowed"),
        ("allowed.test:22", "port 22 of allowed.test is not allowed"),
        ("private.test:443", "resolves to 10.0.0.1"),
        ("metadata.test:443", "resolves to 169.254.169.254"),
        ("loopback.test:443", "resolves to 127.0.0.1"),
        ("rebind.test:443", "resolves to 10.0.0.1"),  # one good and one private address: refused
        ("nonexistent.allowed.test:443", "not on the allow list"),
    ],
)
def test_connect_refusals_name_the_host_and_the_setting(proxy: EgressController, target: str, why: str) -> None:
    status, text, s = connect_request(proxy, target)
    s.close()
    host = target.rpartition(":")[0].strip("[]")
    assert status == 403, text
    hint = f"%sandbox allow {host}" if "allow list" in why or "port" in why else "never allowed"
    assert why in text and host in text.splitlines()[0] and hint in text.splitlines()[0], text
    entry = last_log(proxy)
    assert entry["decision"] == "refused" and why in entry["reason"] and entry["sandbox"] == proxy.sandbox_id


def test_sni_must_match_the_connect_host(proxy: EgressController, hosts: dict[str, Path]) -> None:
    # The certificate is valid for denied.test too: only the SNI check stands in the way.
    status, _, s = connect_request(proxy, "allowed.test:443")
    assert status == 200
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_through(s, hosts["ca"], "denied.test")
    entry = last_log(proxy)
    assert (
        entry["decision"] == "refused"
        and "TLS server name 'denied.test' is not the CONNECT host allowed.test" in entry["reason"]
    )


def test_tunnel_without_sni_or_without_tls_is_dropped(proxy: EgressController, hosts: dict[str, Path]) -> None:
    status, _, s = connect_request(proxy, "allowed.test:443")
    assert status == 200
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_through(s, hosts["ca"], None)
    assert "(none)" in last_log(proxy)["reason"]
    status, _, s = connect_request(proxy, "allowed.test:443")
    s.sendall(b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    assert s.recv(100) == b""  # closed, nothing relayed
    assert "does not start with a TLS ClientHello" in last_log(proxy)["reason"]


def test_plain_http_host_header_must_match(proxy: EgressController) -> None:
    s = _connect(proxy)
    s.sendall(b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
    status, text = _response(s)
    assert status == 200 and "hello from allowed.test" in text
    # The same kept-alive connection, now for another host: refused, not sent to allowed.test.
    s.sendall(b"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    status, text = _response(s)
    assert status == 403 and "denied.test" in text
    s.close()
    s = _connect(proxy)
    s.sendall(b"GET http://allowed.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    status, text = _response(s)
    s.close()
    assert status == 403 and "does not match" in text


def test_policy_change_applies_to_the_next_request(proxy: EgressController) -> None:
    proxy.deny(["allowed.test"])
    try:
        status, text, s = connect_request(proxy, "allowed.test:443")
        s.close()
        assert status == 403 and "allowed.test is not on the allow list" in text
    finally:
        proxy.allow(["allowed.test"])
    status, _, s = connect_request(proxy, "allowed.test:443")
    s.close()
    assert status == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="per-sandbox host uids need root")
def test_one_sandbox_cannot_use_another_sandboxs_proxy(hosts: dict[str, Path]) -> None:
    """Sandbox A's socket is in a directory only A's host uid may enter: B's uid cannot reach it."""
    state = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))  # traversable by uid A (pytest's tmp is not)
    state.chmod(0o711)
    a = _controller(hosts, ["allowed.test"], state)
    a_uid, b_uid = 1879113000, 1879113001
    a._start(a_uid)
    try:
        assert a.dir is not None
        st = a.dir.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (a_uid, 0o700)
        probe = f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({str(a.dir / 'proxy.sock')!r}); print('CONNECTED')"
        as_b = subprocess.run(
            ["setpriv", f"--reuid={b_uid}", f"--regid={b_uid}", "--clear-groups", sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "CONNECTED" not in as_b.stdout and "PermissionError" in as_b.stderr
        as_a = subprocess.run(
            ["setpriv", f"--reuid={a_uid}", f"--regid={a_uid}", "--clear-groups", sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "CONNECTED" in as_a.stdout, as_a.stderr
        # And the policy file (the list) is root's alone.
        assert a._policy_path.stat().st_mode & 0o077 == 0
    finally:
        a.stop()
        remaining = list(state.iterdir())
        shutil.rmtree(state)
    assert remaining == [], remaining


# -- the shared (Kubernetes) proxy: one policy per sandbox credential ------------------------------


@pytest.fixture(scope="module")
def shared_policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared proxy's policy directory (what the sync writes)."""
    return tmp_path_factory.mktemp("egress-policies")


@pytest.fixture(scope="module")
def shared_proxy(hosts: dict[str, Path], shared_policies: Path) -> Iterator[tuple[int, dict[str, str]]]:
    import hashlib
    import signal

    from sandbox_kernel.egress import k8s_sync

    directory = shared_policies
    tokens = {"sandbox-a": "token-of-a-" + os.urandom(8).hex(), "sandbox-b": "token-of-b-" + os.urandom(8).hex()}
    lists = {"sandbox-a": ["allowed.test:443,80"], "sandbox-b": ["denied.test:443,80"]}
    # Both "pods" are this machine's 127.0.0.1 (the proxy takes a credential only from its pod's address).
    namespaces = [
        (
            ns,
            {
                k8s_sync.ANNOTATION_TOKEN: hashlib.sha256(tokens[ns].encode()).hexdigest(),
                k8s_sync.ANNOTATION_ALLOW: " ".join(lists[ns]),
                k8s_sync.ANNOTATION_SOURCE: "127.0.0.1",
            },
        )
        for ns in tokens
    ]
    namespaces.append(("sandbox-c", {k8s_sync.ANNOTATION_TOKEN: "not-a-digest"}))
    k8s_sync.sync(directory, namespaces)
    assert len(list(directory.glob("*.json"))) == 2
    for path in directory.glob("*.json"):  # the test hosts' resolver (the cluster has DNS)
        data = json.loads(path.read_text())
        data.update(hosts_file=str(hosts["hosts"]), exempt_networks=[EXEMPT], log=str(directory / "log"))
        path.write_text(json.dumps(data))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox_kernel.egress.runner", "--shared", f"127.0.0.1:{port}", str(directory)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, tokens
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _shared_connect(port: int, target: str, token: str | None, source: str = "127.0.0.1") -> int:
    import base64

    auth = f"Proxy-Authorization: Basic {base64.b64encode(f'sandbox:{token}'.encode()).decode()}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        return _response(s)[0]


def test_shared_proxy_needs_a_sandbox_credential(shared_proxy: tuple[int, dict[str, str]]) -> None:
    port, _ = shared_proxy
    assert _shared_connect(port, "allowed.test:443", None) == 407
    assert _shared_connect(port, "allowed.test:443", "guessed-token") == 407


def test_a_sandbox_cannot_use_another_sandboxs_list(shared_proxy: tuple[int, dict[str, str]]) -> None:
    port, tokens = shared_proxy
    assert _shared_connect(port, "allowed.test:443", tokens["sandbox-a"]) == 200
    assert _shared_connect(port, "denied.test:443", tokens["sandbox-a"]) == 403  # only b's list has it
    assert _shared_connect(port, "denied.test:443", tokens["sandbox-b"]) == 200
    assert _shared_connect(port, "allowed.test:443", tokens["sandbox-b"]) == 403


def test_a_credential_works_only_from_its_sandboxs_pod(shared_proxy: tuple[int, dict[str, str]]) -> None:
    """A token that leaked to another pod (here: another address) is refused like no token."""
    port, tokens = shared_proxy
    assert _shared_connect(port, "allowed.test:443", tokens["sandbox-a"], source="127.0.0.2") == 407
    assert _shared_connect(port, "allowed.test:443", tokens["sandbox-a"]) == 200


def test_a_new_sandboxs_first_request_waits_for_its_policy_then_a_guess_still_gets_407(
    shared_proxy: tuple[int, dict[str, str]], shared_policies: Path
) -> None:
    """The sync writes a new namespace's policy within the watch's latency, which can come after the
    sandbox's first request: the proxy holds such a request (up to plugin.CREDENTIAL_WAIT_S)
    instead of answering 407 at once. A credential that never appears still gets its 407."""
    import hashlib
    import threading

    from sandbox_kernel.egress import plugin

    port, tokens = shared_proxy
    a = shared_policies / (hashlib.sha256(tokens["sandbox-a"].encode()).hexdigest() + ".json")
    token = "token-of-late-" + os.urandom(8).hex()
    late = shared_policies / (hashlib.sha256(token.encode()).hexdigest() + ".json")
    data = {**json.loads(a.read_text()), "sandbox": "sandbox-late"}
    writer = threading.Timer(0.5, lambda: late.write_text(json.dumps(data)))
    writer.start()
    try:
        started = time.monotonic()
        assert _shared_connect(port, "allowed.test:443", token) == 200
        assert 0.4 < time.monotonic() - started < plugin.CREDENTIAL_WAIT_S
    finally:
        writer.join()
        late.unlink(missing_ok=True)
    started = time.monotonic()
    assert _shared_connect(port, "allowed.test:443", "token-never-written") == 407
    assert time.monotonic() - started >= plugin.CREDENTIAL_WAIT_S - 0.1


def test_client_hello_sent_with_the_connect_request_is_not_forwarded(
    proxy: EgressController, hosts: dict[str, Path]
) -> None:
    """Early data after CONNECT (a ClientHello for another name in the same packet) never reaches
    the upstream unchecked: proxy.py does not take it as a tunnel at all."""
    ctx = ssl.create_default_context(cafile=str(hosts["ca"]))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname="denied.test")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    s = _connect(proxy)
    s.settimeout(3)
    s.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n" + outgoing.read())
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    s.close()
    assert b"\x16\x03" not in data  # no ServerHello from the upstream
