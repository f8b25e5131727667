"""proxy.py plugins that enforce one sandbox's allow list (loaded by :mod:`.runner`).

- :class:`EgressPolicyPlugin` (an ``HttpProxyBasePlugin``) decides every CONNECT and plain HTTP
  request by name (:func:`.policy.decide`), resolves the name itself, refuses it when any of its
  addresses is private, loopback, link-local, metadata, … and hands proxy.py the one checked
  address to connect to (``resolve_dns``), so a second lookup cannot rebind the name. A plain
  HTTP request's Host header, and every later request on a kept-alive connection, must name the
  same host.
- :class:`SniCheckingProxy` (proxy.py's own ``HttpProxyPlugin`` with one method more) holds the
  first bytes a client sends through a CONNECT tunnel until the TLS ClientHello is complete,
  and tears the tunnel down unless its SNI is the CONNECT host: nothing reaches the upstream
  before that.

The policy is a JSON file the kernel rewrites on ``%sandbox allow``/``deny``; it is read
for every request, so a change applies to the next request. Every decision is one JSON
line in the log named by the policy, with the sandbox's id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from typing import Any

from proxy.http.exception import HttpRequestRejected
from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin
from proxy.http.proxy.server import HttpProxyPlugin

from . import policy, refusals, relay

POLICY_ENV = "SANDBOX_EGRESS_POLICY"
POLICY_DIR_ENV = "SANDBOX_EGRESS_POLICY_DIR"
REFUSALS_DIR_ENV = "SANDBOX_EGRESS_REFUSALS_DIR"
SNI_LIMIT = 32 * 1024  # most bytes held while waiting for a complete ClientHello
# Shared mode: how long a request whose credential the proxy does not know (yet) waits for the
# sync to write its policy before the 407; the proxy runs a thread per connection, so the wait
# holds only that connection. Far above the namespace watch's usual latency (tens of ms).
CREDENTIAL_WAIT_S = 3.0
CREDENTIAL_POLL_S = 0.05


class _Policy:
    """The policy file, re-read when it changes (one per proxy process)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: bytes | None = None
        self.data: dict[str, Any] = {}
        self.allow: list[policy.Entry] = []
        self.deny: list[policy.Entry] = []
        self.hosts: dict[str, list[str]] | None = None

    def current(self) -> _Policy:
        # Read every time (a few hundred bytes): an mtime can miss two writes within the file
        # system's timestamp granularity, and a change must apply to the very next request.
        with open(self.path, "rb") as f:
            raw = f.read()
        stamp = raw
        if stamp != self.stamp:
            data = json.loads(raw)
            self.data = data
            self.allow = policy.entries_from_json(data.get("allow", []))
            self.deny = policy.entries_from_json(data.get("deny", []))
            self.hosts = _read_hosts(data["hosts_file"]) if data.get("hosts_file") else None
            self.stamp = stamp
        return self

    def log(self, **fields: Any) -> None:
        now = time.time()
        line = json.dumps({"time": round(now, 3), "sandbox": self.data.get("sandbox", "?"), **fields})
        fd = os.open(self.data["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)
        where = os.environ.get(REFUSALS_DIR_ENV)
        if where and fields.get("decision") == "refused":
            record = refusals.record_line(
                str(self.data.get("sandbox", "")),
                str(fields.get("host", "")),
                int(fields.get("port", 0)),
                str(fields.get("reason", "")),
                now,
            )
            record_refusal(os.path.join(where, refusals.RECORD_FILE), record)


def record_refusal(path: str, record: bytes) -> None:
    """Shared mode: one refusal for the sync to turn into an Event (:mod:`.refusals`). Appended in one
    write (O_APPEND: the proxy's threads never interleave), and not at all once the file holds
    :data:`.refusals.MAX_FILE_BYTES` the sync has not taken yet (the log line above has it anyway)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size < refusals.MAX_FILE_BYTES:
            os.write(fd, record)
    except OSError:
        pass  # a full emptyDir: the refusal still stands, only its Event is missing
    finally:
        os.close(fd)


def _read_hosts(path: str) -> dict[str, list[str]]:
    """A hosts(5) file: the proxy's whole resolver when EgressProxy.hosts_file is set (tests)."""
    hosts: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            for name in fields[1:]:
                hosts.setdefault(policy.normalize_host(name), []).append(fields[0])
    return hosts


_policies: dict[str, _Policy] = {}


class NoCredentials(Exception):
    """Shared mode: the request carries no (or an unknown) sandbox credential."""


def policy_for(request: HttpParser, client_ip: str | None = None) -> _Policy:
    """This proxy's policy (one sandbox: ``SANDBOX_EGRESS_POLICY``), or, in shared mode
    (``SANDBOX_EGRESS_POLICY_DIR``, the Kubernetes proxy), the policy of the sandbox whose
    credential the request carries: ``Proxy-Authorization: Basic`` of ``sandbox:TOKEN``, looked
    up as ``DIR/sha256(TOKEN).json``, and only from the sandbox pod's own address (the policy's
    ``source``, when ``client_ip`` is given). A request without a known credential, or with one
    from another address, gets no policy."""
    shared = os.environ.get(POLICY_DIR_ENV)
    if not shared:
        return _load(os.environ[POLICY_ENV])
    token = proxy_token(request)
    if token is None:
        raise NoCredentials()
    path = os.path.join(shared, hashlib.sha256(token.encode()).hexdigest() + ".json")
    # The sync writes a new sandbox's policy (and a restarted pod's address) within the namespace
    # watch's latency of the kernel's patch, which can be after the sandbox's first request: a
    # credential not (yet) known from this address gets CREDENTIAL_WAIT_S to appear before the 407.
    deadline = time.monotonic() + CREDENTIAL_WAIT_S
    while True:
        try:
            pol: _Policy | None = _load(path)
        except FileNotFoundError:
            pol = None  # not (yet) written by the sync
        if pol is not None and (client_ip is None or pol.data.get("source") == client_ip):
            return pol
        if time.monotonic() >= deadline:
            raise NoCredentials()  # unknown, or a credential used from another pod than its sandbox's
        time.sleep(CREDENTIAL_POLL_S)


def _load(path: str) -> _Policy:
    pol = _policies.get(path)
    if pol is None:  # kept only once read: unknown credentials do not grow the cache
        pol = _policies[path] = _Policy(path).current()
        return pol
    return pol.current()


def proxy_token(request: HttpParser) -> str | None:
    if not request.has_header(b"proxy-authorization"):
        return None
    scheme, _, value = request.header(b"proxy-authorization").decode("latin-1").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, token = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return token if token and len(token) <= 256 else None


def _client_ip(addr: Any) -> str:
    """The client's IPv4 address (an IPv4-mapped IPv6 one unwrapped)."""
    host = str(addr[0]) if isinstance(addr, tuple) and addr else ""
    return host[7:] if host.startswith("::ffff:") else host


def credentials_required() -> HttpRequestRejected:
    return HttpRequestRejected(
        status_code=407,
        reason=b"Sandbox egress: no valid sandbox credential",
        headers={b"Proxy-Authenticate": b'Basic realm="sandbox-egress"', b"Content-Type": b"text/plain; charset=utf-8"},
        body=b"Sandbox egress refused the request: it carries no valid sandbox credential.\n",
    )


def refusal(host: str, why: str, status: int = 403, listed: bool = True) -> HttpRequestRejected:
    """A 403 whose reason phrase and body name the host and the setting. ``listed``: whether
    allowing the host would help (not for IP literals and private addresses)."""
    if listed:
        hint = f"%sandbox allow {host}"
        advice = f"The allow list is Sandbox.allow_hosts; in a notebook: %sandbox allow {host}"
    else:
        hint = "never allowed (Sandbox.allow_hosts takes host names with public addresses)"
        advice = "IP addresses and names of private, loopback, link-local or metadata addresses are never allowed."
    body = f"Sandbox egress refused {host}: {why}.\n{advice}\n".encode()
    # The reason phrase is what clients show for a refused CONNECT ("Tunnel connection
    # failed: 403 ..."), so it names the host and the way to allow it, too.
    reason = f"Sandbox egress refused {host} ({why}); {hint}"
    return HttpRequestRejected(
        status_code=status,
        reason=reason.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" "),
        headers={b"Content-Type": b"text/plain; charset=utf-8", b"X-Sandbox-Egress": b"refused"},
        body=body,
    )


def resolve(pol: _Policy, host: str, port: int) -> list[str]:
    if pol.hosts is not None:
        return list(pol.hosts.get(host, []))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressPolicyPlugin(HttpProxyBasePlugin):
    """The allow list, the address checks and the log (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ip: str | None = None
        self._host = ""
        self._port = 0
        self._pol: _Policy | None = None

    def _decide(self, request: HttpParser) -> tuple[str, int, str]:
        try:
            pol = self._pol = policy_for(request, _client_ip(self.client.addr))
        except NoCredentials:
            raise credentials_required() from None
        method = (request.method or b"").decode("latin-1")
        host = policy.normalize_host((request.host or b"").decode("latin-1"))
        port = int(request.port or (443 if request.is_https_tunnel else 80))
        if not host:
            pol.log(decision="refused", method=method, host="", port=port, reason="no host")
            raise refusal("(no host)", "the request names no host", 400)
        why = policy.decide(host, port, pol.allow, pol.deny)
        if why is None and not request.is_https_tunnel:
            why = self._host_header_mismatch(request, host, port)
        ip = None
        listed = not policy.is_ip_literal(host)
        if why is None:
            listed = False
            addresses = resolve(pol, host, port)
            exempt = pol.data.get("exempt_networks", [])
            bad = [a for a in addresses if policy.forbidden_address(a, exempt)]
            if not addresses:
                why = f"{host} does not resolve"
            elif bad:
                why = f"{host} resolves to {bad[0]}, a private/loopback/link-local/metadata address"
            else:
                ip = addresses[0]
        if why is not None:
            pol.log(decision="refused", method=method, host=host, port=port, reason=why)
            raise refusal(host, why, listed=listed)
        assert ip is not None
        pol.log(decision="allowed", method=method, host=host, port=port, ip=ip)
        return host, port, ip

    @staticmethod
    def _host_header_mismatch(request: HttpParser, host: str, port: int) -> str | None:
        if not request.has_header(b"host"):
            return None
        value = request.header(b"host").decode("latin-1").strip()
        name, _, hport = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        if policy.normalize_host(name) != host or (hport and int(hport) != port if hport.isdigit() else bool(hport)):
            return f"the Host header {value!r} does not match the request's host {host}:{port}"
        return None

    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        self._host, self._port, self._ip = self._decide(request)
        return request

    def resolve_dns(self, host: str, port: int) -> tuple[str | None, tuple[str, int] | None]:
        # The address that was checked, never a second lookup.
        if self._ip is None or policy.normalize_host(host) != self._host:
            raise refusal(host, "internal error: no checked address")
        return self._ip, None

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        # Every request on a kept-alive plain HTTP connection goes to the same upstream.
        if self._host and not request.is_https_tunnel:
            host = policy.normalize_host((request.host or self._host.encode()).decode("latin-1"))
            why = None
            if host != self._host or (request.port and int(request.port) != self._port):
                why = f"a request for {host} on a connection to {self._host}"
            why = why or self._host_header_mismatch(request, self._host, self._port)
            if why:
                assert self._pol is not None
                self._pol.log(
                    decision="refused",
                    method=(request.method or b"").decode("latin-1"),
                    host=host,
                    port=self._port,
                    reason=why,
                )
                raise refusal(host, why)
        return request


class SniCheckingProxy(HttpProxyPlugin):
    """proxy.py's HTTP proxy, holding a tunnel's first bytes until its SNI is checked."""

    _sni_buffer: bytes = b""
    _sni_checked: bool = False

    def connect_upstream(self) -> None:
        super().connect_upstream()
        if self.upstream is not None:  # proxy.py leaves Nagle on: small TLS records would wait for ACKs
            self.upstream.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_client_data(self, raw: memoryview) -> None:
        if self._sni_checked or not (self.request.is_https_tunnel and self.upstream):
            return super().on_client_data(raw)
        self._sni_buffer += bytes(raw)
        host = policy.normalize_host((self.request.host or b"").decode("latin-1"))
        why = None
        try:
            sni = policy.client_hello_sni(self._sni_buffer)
        except policy.NotTLS as exc:
            why = f"the tunnel to {host} does not start with a TLS ClientHello ({exc})"
        else:
            if sni is None:
                if len(self._sni_buffer) > SNI_LIMIT:
                    why = "ClientHello too large"
                else:
                    return None  # wait for the rest of the ClientHello
            elif policy.normalize_host(sni) != host:
                why = f"TLS server name {sni or '(none)'!r} is not the CONNECT host {host}"
        if why:
            policy_for(self.request).log(
                decision="refused", method="CONNECT", host=host, port=int(self.request.port or 0), reason=why
            )
            raise HttpRequestRejected()  # drop the tunnel: not one byte went upstream
        self._sni_checked = True
        data, self._sni_buffer = self._sni_buffer, b""
        if self.client.has_buffer() or self.upstream.has_buffer():  # not expected before a ClientHello
            return super().on_client_data(memoryview(data))
        # From here on a tunnel is bytes both ways, nothing more to check. proxy.py's loop (a new
        # selector registration and an asyncio round per event, a write one round after its read)
        # cost more than the relay itself per round trip; this connection's own thread (runner:
        # --threaded) carries it instead, with proxy.py's inactivity timeout.
        relay.pump(self.client.connection, self.upstream.connection, data, idle=self.flags.timeout)
        raise HttpRequestRejected()  # the tunnel has ended: proxy.py closes both sockets
