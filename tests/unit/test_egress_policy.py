"""The egress allow list as pure functions (sandbox_kernel/egress/policy.py)."""

from __future__ import annotations

import ssl

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.egress import policy
from sandbox_kernel.egress.policy import (
    Entry,
    PolicyError,
    RunningList,
    decide,
    forbidden_address,
    parse_entry,
)
from sandbox_kernel.errors import ConfigError


def test_entries_names_wildcards_ports() -> None:
    assert parse_entry("PyPI.org.") == Entry("pypi.org", (443, 80))
    assert parse_entry("*.pythonhosted.org") == Entry("*.pythonhosted.org", (443, 80))
    assert parse_entry("example.org:8443") == Entry("example.org", (8443,))
    for bad in (
        "",
        "1.2.3.4",
        "[::1]",
        "::1",
        "2130706433",
        "0x7f.1",
        "*.org",
        "*",
        "a..b",
        "-a.org",
        "a b.org",
        "example.org:0",
        "example.org:70000",
        "example.org:x",
        "foo.*.org",
        "ex_ample.org",
    ):
        with pytest.raises(PolicyError):
            parse_entry(bad)


def test_decide() -> None:
    allow = policy.parse_entries(["pypi.org", "*.pythonhosted.org", "api.example.org:8443"])
    assert decide("pypi.org", 443, allow) is None
    assert decide("PYPI.ORG.", 80, allow) is None
    assert decide("files.pythonhosted.org", 443, allow) is None
    assert decide("a.b.pythonhosted.org", 443, allow) is None
    assert "not on the allow list" in decide("pythonhosted.org", 443, allow)  # wildcard: below only
    assert "not on the allow list" in decide("evilpythonhosted.org", 443, allow)
    assert "not on the allow list" in decide("pypi.org.evil.com", 443, allow)
    assert "port 22 of pypi.org is not allowed" in decide("pypi.org", 22, allow)
    assert decide("api.example.org", 8443, allow) is None
    assert "port 443" in decide("api.example.org", 443, allow)
    assert "IP address" in decide("10.0.0.1", 443, allow)
    assert "IP address" in decide("[::1]", 443, allow)
    assert "denied" in decide("files.pythonhosted.org", 443, allow, [parse_entry("files.pythonhosted.org")])


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "fd00:ec2::254",
    ],
)
def test_forbidden_addresses(ip: str) -> None:
    assert forbidden_address(ip)


def test_public_addresses_and_the_test_only_exemption() -> None:
    assert not forbidden_address("151.101.0.223")
    assert not forbidden_address("2a04:4e42::223")
    assert forbidden_address("127.0.0.62")
    assert not forbidden_address("127.0.0.62", ["127.0.0.62/31"])
    assert forbidden_address("127.0.0.1", ["127.0.0.62/31"])


def test_notebook_can_only_narrow_the_operators_list() -> None:
    r = RunningList.from_operator(["pypi.org", "*.pythonhosted.org"])
    assert r.deny_host("pypi.org") == "pypi.org is denied"
    assert decide("pypi.org", 443, r.allow, r.deny) is not None
    assert r.allow_host("pypi.org") == "pypi.org is allowed"
    assert decide("pypi.org", 443, r.allow, r.deny) is None
    r.deny_host("files.pythonhosted.org")
    assert decide("files.pythonhosted.org", 443, r.allow, r.deny) is not None
    assert decide("x.pythonhosted.org", 443, r.allow, r.deny) is None
    r.allow_host("files.pythonhosted.org")
    assert decide("files.pythonhosted.org", 443, r.allow, r.deny) is None
    with pytest.raises(PolicyError, match="EgressProxy.allow_widening"):
        r.allow_host("evil.org")
    with pytest.raises(PolicyError):
        r.allow_host("pypi.org:22")  # a port the operator did not allow is widening too
    r.deny_host("*.pythonhosted.org")
    assert decide("files.pythonhosted.org", 443, r.allow, r.deny) is not None
    assert r.allow_host("a.pythonhosted.org") == "a.pythonhosted.org is allowed"  # narrower than the operator's
    assert decide("a.pythonhosted.org", 443, r.allow, r.deny) is None
    assert decide("b.pythonhosted.org", 443, r.allow, r.deny) is not None


def test_widening_when_the_operator_allows_it() -> None:
    r = RunningList.from_operator([], widening=True)
    assert r.allow_host("example.org:8443") == "example.org:8443 is allowed"
    assert decide("example.org", 8443, r.allow, r.deny) is None
    assert policy.entries_from_json(r.as_json()["allow"]) == r.allow


def test_setting_is_validated() -> None:
    assert Sandbox().limits().allow_hosts == ()
    assert Sandbox(allow_hosts=["pypi.org", "*.pythonhosted.org"]).limits().allow_hosts == (
        "pypi.org",
        "*.pythonhosted.org",
    )
    with pytest.raises(ConfigError, match="Sandbox.allow_hosts.*IP addresses"):
        Sandbox(allow_hosts=["169.254.169.254"]).limits()


def _client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_client_hello_server_name() -> None:
    hello = _client_hello("allowed.test")
    assert policy.client_hello_sni(hello) == "allowed.test"
    for cut in (1, 5, 40, len(hello) - 1):
        assert policy.client_hello_sni(hello[:cut]) is None  # wait for more
    assert policy.client_hello_sni(_client_hello(None)) == ""
    # The same ClientHello split over two TLS records.
    body = hello[5:]
    split = (
        b"\x16\x03\x01"
        + (100).to_bytes(2, "big")
        + body[:100]
        + b"\x16\x03\x01"
        + (len(body) - 100).to_bytes(2, "big")
        + body[100:]
    )
    assert policy.client_hello_sni(split) == "allowed.test"
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"SSH-2.0-x\r\n"):
        with pytest.raises(policy.NotTLS):
            policy.client_hello_sni(junk)
