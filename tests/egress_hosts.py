"""The egress tests' own hosts: HTTPS and HTTP servers on loopback addresses of this machine,
with a test CA made at test time, and the hosts file the proxy resolves them through.

No test contacts anything but these servers. Names (``EgressProxy.hosts_file`` is the proxy's
whole resolver, so no name reaches the system resolver):

- ``allowed.test`` -> 127.0.0.62 (HTTPS on 443 and 8443, HTTP on 80, a package index at /simple/),
- ``denied.test`` -> 127.0.0.63 (HTTPS on 443),
- ``private.test`` -> 10.0.0.1, ``metadata.test`` -> 169.254.169.254, ``loopback.test`` ->
  127.0.0.1, ``rebind.test`` -> 127.0.0.62 and 10.0.0.1: refused after resolving.

The proxy refuses loopback addresses; the test configuration exempts exactly 127.0.0.62/31
(``EgressProxy.exempt_networks``, empty by default) — the two addresses the test servers live on.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import http.server
import ipaddress
import socketserver
import ssl
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ALLOWED_IP = "127.0.0.62"
DENIED_IP = "127.0.0.63"
EXEMPT = "127.0.0.62/31"
HOSTS = f"""\
{ALLOWED_IP} allowed.test
{DENIED_IP} denied.test
10.0.0.1 private.test
169.254.169.254 metadata.test
127.0.0.1 loopback.test
{ALLOWED_IP} rebind.test
10.0.0.1 rebind.test
"""


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for allowed.test and denied.test: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sandbox Kernel egress test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "allowed.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("allowed.test"), x509.DNSName("denied.test")]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def package_index() -> dict[str, bytes]:
    """A package index (PEP 503) of one tiny pure-Python wheel made here, egress_probe 1.0: URL path -> body.
    ``pip install --index-url https://allowed.test/simple/ egress-probe`` through the proxy, on both backends."""
    files = {
        "egress_probe/__init__.py": b"MESSAGE = 'installed through the egress proxy'\n",
        "egress_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: egress-probe\nVersion: 1.0\n",
        "egress_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: sandbox-kernel-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    record += "egress_probe-1.0.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("egress_probe-1.0.dist-info/RECORD", record)
    wheel, whl = "egress_probe-1.0-py3-none-any.whl", buf.getvalue()
    sha = hashlib.sha256(whl).hexdigest()
    return {
        "/simple/": b'<html><body><a href="/simple/egress-probe/">egress-probe</a></body></html>',
        "/simple/egress-probe/": f'<html><body><a href="/packages/{wheel}#sha256={sha}">{wheel}</a></body></html>'.encode(),
        f"/packages/{wheel}": whl,
    }


PIP_INSTALL_CELL = (
    "import subprocess, sys\n"
    "r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', '--disable-pip-version-check',\n"
    "    '--index-url', 'https://allowed.test/simple/', '--cert', '/tmp/ca.pem', '--target', '/tmp/pkgs', 'egress-probe'],\n"
    "    capture_output=True, text=True, timeout=120)\n"
    "print(r.returncode, r.stdout[-500:], r.stderr[-1500:])\n"
    "sys.path.insert(0, '/tmp/pkgs')\n"
    "import egress_probe; print(egress_probe.MESSAGE)\n"
)
"""A cell that pip-installs egress-probe from :func:`package_index` on allowed.test (the test CA at /tmp/ca.pem)."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        name = self.server.name  # type: ignore[attr-defined]
        if self.path in self.files:
            body = self.files[self.path]
            ctype = "application/octet-stream" if self.path.endswith(".whl") else "text/html"
        elif self.path.startswith("/bytes/"):
            body = b"x" * int(self.path.rsplit("/", 1)[1])
            ctype = "application/octet-stream"
        else:
            body = f"hello from {name} (Host: {self.headers.get('Host')})\n".encode()
            ctype = "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def serve_test_hosts(directory: Path, files: dict[str, bytes] | None = None) -> Iterator[dict[str, Path]]:
    """Start the servers (and stop them on exit); yield the CA, the hosts file and more."""
    ca, cert, key = make_ca(directory)
    hosts = directory / "hosts"
    hosts.write_text(HOSTS)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    _Handler.files = dict(files or {})
    servers = []
    for name, ip, port, tls in (
        ("allowed.test", ALLOWED_IP, 443, True),
        ("allowed.test", ALLOWED_IP, 8443, True),
        ("allowed.test", ALLOWED_IP, 80, False),
        ("denied.test", DENIED_IP, 443, True),
    ):
        srv = _Server((ip, port), _Handler)
        srv.name = name  # type: ignore[attr-defined]
        if tls:
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        servers.append(srv)
    try:
        yield {"ca": ca, "hosts": hosts, "dir": directory}
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def kernel_argv(hosts: Path, allow: list[str], widening: bool = False) -> list[str]:
    """Kernel command-line options for a sandbox with these test hosts allowed."""
    argv = [f"--Sandbox.allow_hosts={a}" for a in allow]  # one option per item (traitlets)
    argv += [f"--EgressProxy.hosts_file={hosts}", f"--EgressProxy.exempt_networks={EXEMPT}"]
    if widening:
        argv.append("--EgressProxy.allow_widening=True")
    return argv


assert ipaddress.ip_address(ALLOWED_IP) in ipaddress.ip_network(EXEMPT)
