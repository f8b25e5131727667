"""The relay's byte pump (egress/relay.py), at the socket seam: what the in-sandbox relay and the
proxy's checked tunnels (plugin.SniCheckingProxy) carry. Socket pairs stand in for the client and
the upstream; the pump runs in a thread as it does in the proxy's connection thread."""

from __future__ import annotations

import socket
import threading

from sandbox_kernel.egress import relay


def _pumped(first: bytes = b"", idle: float | None = 5.0) -> tuple[socket.socket, socket.socket, threading.Thread]:
    """(the client's end, the upstream's end, the pump's thread) of a running pump."""
    client, client_side = socket.socketpair()
    upstream, upstream_side = socket.socketpair()
    thread = threading.Thread(target=relay.pump, args=(client_side, upstream_side, first, idle), daemon=True)
    thread.start()
    return client, upstream, thread


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    return data


def test_bytes_go_both_ways_in_order_the_first_bytes_first_and_eof_is_passed_on() -> None:
    client, upstream, thread = _pumped(first=b"hello-")
    big = bytes(range(256)) * 8192  # 2 MiB: more than a socket buffer, so the pump must hold and resume
    writer = threading.Thread(target=lambda: (client.sendall(big), client.shutdown(socket.SHUT_WR)))
    writer.start()
    got = _read_all(upstream)  # ends when the client's EOF has been passed on
    writer.join()
    assert got == b"hello-" + big
    upstream.sendall(b"reply after the client's half-close")
    upstream.shutdown(socket.SHUT_WR)
    assert _read_all(client) == b"reply after the client's half-close"
    thread.join(5)
    assert not thread.is_alive()  # both ends done: the pump returns, the sockets are its owner's to close
    for s in (client, upstream):
        s.close()


def test_both_ends_going_away_ends_the_pump() -> None:
    client, upstream, thread = _pumped()
    client.sendall(b"x")
    assert upstream.recv(1) == b"x"
    client.close()
    upstream.close()
    thread.join(5)
    assert not thread.is_alive()


def test_an_idle_tunnel_ends_after_the_idle_time() -> None:
    client, upstream, thread = _pumped(idle=0.2)
    thread.join(5)
    assert not thread.is_alive()
    for s in (client, upstream):
        s.close()
