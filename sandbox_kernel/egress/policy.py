"""The allow list as pure functions: what an entry means, whether a request matches, which
addresses are never reachable, and how ``%sandbox allow``/``deny`` change a running list.

An entry is ``NAME`` or ``NAME:PORT``. ``NAME`` is a DNS name (``pypi.org``) or a wildcard
(``*.pythonhosted.org``: every name *below* pythonhosted.org, not pythonhosted.org itself).
Without a port the entry allows :data:`DEFAULT_PORTS` (443 and 80). Names are compared
case-insensitively without a trailing dot. IP literals are not entries: the proxy refuses them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_PORTS = (443, 80)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Never reachable through the proxy, whatever the allow list says (checked on the address the
# name resolved to, which is the address the proxy then connects to).
# Not reformatted: a table of networks, IPv4 then IPv6, several to a line.
# fmt: off
FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
        "240.0.0.0/4", "255.255.255.255/32",
        "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "fc00::/7",
        "fe80::/10", "ff00::/8",
    )
)
# fmt: on


class PolicyError(ValueError):
    """A malformed entry, or a change the operator's list does not permit."""


@dataclass(frozen=True)
class Entry:
    name: str  # lower case; "*.example.org" for a wildcard
    ports: tuple[int, ...]

    @property
    def wildcard(self) -> bool:
        return self.name.startswith("*.")

    def matches_name(self, host: str) -> bool:
        if self.wildcard:
            return host.endswith(self.name[1:]) and len(host) > len(self.name) - 1
        return host == self.name

    def matches(self, host: str, port: int) -> bool:
        return port in self.ports and self.matches_name(host)

    def covered_by(self, other: Entry) -> bool:
        """Whether everything this entry allows, ``other`` allows too."""
        if not set(self.ports) <= set(other.ports):
            return False
        if self.wildcard:
            return other.wildcard and (self.name == other.name or self.name.endswith(other.name[1:]))
        return other.matches_name(self.name)

    def __str__(self) -> str:
        if self.ports == DEFAULT_PORTS:
            return self.name
        return ",".join(f"{self.name}:{p}" for p in self.ports)


def normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def is_ip_literal(host: str) -> bool:
    h = host.strip("[]")
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        pass
    # Forms the C resolver also takes for addresses: 2130706433, 0x7f.1, 127.1
    return bool(re.fullmatch(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", h.lower()))


def parse_entry(text: str) -> Entry:
    """``NAME`` or ``NAME:PORT`` -> Entry; PolicyError says what is wrong."""
    raw = text.strip()
    name, sep, port_text = raw.rpartition(":") if raw.count(":") == 1 else (raw, "", "")
    name = normalize_host(name)
    if not name:
        raise PolicyError(f"{text!r}: empty host name")
    if is_ip_literal(name) or ":" in name:
        raise PolicyError(f"{text!r}: IP addresses are not allowed, only host names")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise PolicyError(f"{text!r}: a wildcard needs a domain of two labels or more (*.example.org)")
    if not labels or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(f"{text!r}: not a host name or *.domain wildcard")
    if sep:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise PolicyError(f"{text!r}: port must be 1-65535")
        ports: tuple[int, ...] = (int(port_text),)
    else:
        ports = DEFAULT_PORTS
    return Entry(name, ports)


def parse_entries(items: Iterable[str]) -> list[Entry]:
    return [parse_entry(i) for i in items]


def decide(host: str, port: int, allow: Sequence[Entry], deny: Sequence[Entry] = ()) -> str | None:
    """None when ``host:port`` may be reached by name; otherwise why not (one line)."""
    host = normalize_host(host)
    if is_ip_literal(host):
        return f"{host} is an IP address; only allowed host names can be reached"
    if any(d.matches(host, port) for d in deny):
        return f"{host}:{port} is denied (%sandbox deny)"
    if any(a.matches(host, port) for a in allow):
        return None
    if any(a.matches_name(host) for a in allow):
        ports = sorted({p for a in allow if a.matches_name(host) for p in a.ports})
        return f"port {port} of {host} is not allowed (allowed: {', '.join(map(str, ports))})"
    return f"{host} is not on the allow list"


def forbidden_address(ip: str, exempt: Sequence[str] = ()) -> bool:
    """Whether ``ip`` (what a name resolved to) is private, loopback, link-local, metadata, …;
    ``exempt`` networks (a test-only setting) are allowed all the same."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if any(addr in ipaddress.ip_network(n) for n in exempt):
        return False
    return any(addr in n for n in FORBIDDEN_NETWORKS if n.version == addr.version) or not addr.is_global


# -- the running list ---------------------------------------------------------------------------


@dataclass
class RunningList:
    """The operator's list and what ``%sandbox allow``/``deny`` made of it for one sandbox."""

    operator: list[Entry]
    allow: list[Entry]
    deny: list[Entry]
    widening: bool = False

    @classmethod
    def from_operator(cls, items: Iterable[str], widening: bool = False) -> RunningList:
        entries = parse_entries(items)
        return cls(list(entries), list(entries), [], widening)

    def allow_host(self, text: str) -> str:
        entry = parse_entry(text)
        self.deny = [d for d in self.deny if d != entry and not d.covered_by(entry)]
        if any(entry.covered_by(a) for a in self.allow):
            still = [d for d in self.deny if entry.covered_by(d)]
            if still:
                return f"{entry} is allowed, except {', '.join(map(str, still))} (still denied)"
            return f"{entry} is allowed"
        if not self.widening and not any(entry.covered_by(o) for o in self.operator):
            raise PolicyError(
                f"{entry} is not in the operator's allow list (Sandbox.allow_hosts), and %sandbox allow "
                "can only narrow it; the operator may set EgressProxy.allow_widening = True"
            )
        self.allow.append(entry)
        return f"{entry} is allowed"

    def deny_host(self, text: str) -> str:
        entry = parse_entry(text)
        self.allow = [a for a in self.allow if not a.covered_by(entry)]
        # A wildcard still on the allow list may cover (part of) it: then it needs a deny entry.
        if any(_overlap(entry, a) for a in self.allow) and entry not in self.deny:
            self.deny.append(entry)
        return f"{entry} is denied"

    def as_json(self) -> dict[str, list[str]]:
        return {
            "allow": [e.name + ":" + ",".join(map(str, e.ports)) for e in self.allow],
            "deny": [e.name + ":" + ",".join(map(str, e.ports)) for e in self.deny],
        }


def _overlap(entry: Entry, other: Entry) -> bool:
    if not set(entry.ports) & set(other.ports):
        return False
    if entry.wildcard:
        return other.wildcard and (entry.name.endswith(other.name[1:]) or other.name.endswith(entry.name[1:]))
    return other.matches_name(entry.name)


def entries_from_json(items: Iterable[str]) -> list[Entry]:
    """Inverse of :meth:`RunningList.as_json` (``name:443,80``)."""
    out = []
    for item in items:
        name, _, ports = item.rpartition(":")
        out.append(Entry(name, tuple(int(p) for p in ports.split(","))))
    return out


# -- TLS ClientHello ----------------------------------------------------------------------------


class NotTLS(ValueError):
    """The bytes are not the start of a TLS ClientHello."""


def client_hello_sni(data: bytes) -> str | None:
    """The server name of a complete TLS ClientHello at the start of ``data``.

    Returns None while more bytes are needed; "" when the ClientHello has no SNI; raises NotTLS
    for anything that is not a ClientHello (TLS records may split a ClientHello: they are joined).
    """
    body = b""
    pos = 0
    while True:
        if len(data) < pos + 5:
            return None
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != 22 or major != 3 or length == 0 or length > 16384 + 2048:
            raise NotTLS("not a TLS handshake record")
        if len(data) < pos + 5 + length:
            return None
        body += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != 1:
                raise NotTLS("first handshake message is not a ClientHello")
            need = int.from_bytes(body[1:4], "big")
            if need > 1 << 16:
                raise NotTLS("ClientHello too large")
            if len(body) >= 4 + need:
                return _sni_from_hello(body[4 : 4 + need])


def _sni_from_hello(h: bytes) -> str:
    try:
        p = 2 + 32  # version, random
        p += 1 + h[p]  # session id
        p += 2 + int.from_bytes(h[p : p + 2], "big")  # cipher suites
        p += 1 + h[p]  # compression methods
        if p >= len(h):
            return ""
        end = p + 2 + int.from_bytes(h[p : p + 2], "big")
        p += 2
        while p + 4 <= end:
            etype = int.from_bytes(h[p : p + 2], "big")
            elen = int.from_bytes(h[p + 2 : p + 4], "big")
            ext = h[p + 4 : p + 4 + elen]
            p += 4 + elen
            if etype == 0:  # server_name
                q = 2
                while q + 3 <= len(ext):
                    ntype, nlen = ext[q], int.from_bytes(ext[q + 1 : q + 3], "big")
                    if ntype == 0:
                        return ext[q + 3 : q + 3 + nlen].decode("ascii", "replace")
                    q += 3 + nlen
                return ""
        return ""
    except IndexError:
        raise NotTLS("truncated ClientHello") from None
