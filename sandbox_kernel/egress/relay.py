"""Inside the sandbox: ``python3 -I egress-relay.py SOCKET PORT -- AGENT...``.

Listens on 127.0.0.1:PORT (the sandbox's own loopback), then forks: the parent execs the agent
(same pid, same stdin/stdout), the child carries every TCP connection to the egress proxy's Unix
socket, byte for byte. The listener exists before the agent runs, so the first cell finds it.
The relay decides nothing: the proxy on the host does. It ends with the sandbox (PID namespace).
Standard library only; the sandbox's python3 runs it.

One thread, one ``selectors`` loop over non-blocking sockets: no thread per connection (threads
count against the sandbox's pids limit), and less work per forwarded chunk than asyncio's
streams (the relay is on the path of every round trip of a TLS handshake: it measured +1.1 ms
p50 per HTTPS request with asyncio streams, see benchmarks/README.md "Egress proxy"). A side
whose peer cannot take more stops being read until its bytes are out (at most one chunk is held
per direction).
"""

import os
import selectors
import socket
import sys

CHUNK = 1 << 18
BUSY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 24\r\nConnection: close\r\n\r\negress proxy unavailable"


class _Side:
    """One socket of a connection: what is waiting to be written to it, and whether it has ended."""

    __slots__ = ("sock", "peer", "pending", "eof", "closed_write", "done", "owned")

    def __init__(self, sock, owned=True):
        self.sock = sock
        self.owned = owned  # closed here when done (the proxy's pump leaves that to proxy.py)
        self.peer = None
        self.pending = b""  # bytes read from the peer, not yet written here
        self.eof = False  # this side sent EOF (nothing more to read from it)
        self.closed_write = False  # EOF passed on to this side
        self.done = False  # closed (both sides are closed together)


def _mask(side):
    events = 0
    if not side.eof and not side.peer.pending:  # read only while the peer can take it
        events |= selectors.EVENT_READ
    if side.pending:
        events |= selectors.EVENT_WRITE
    return events


def _update(sel, side):
    events = _mask(side)
    key = sel.get_map().get(side.sock)
    if key is None:
        if events:
            sel.register(side.sock, events, side)
    elif not events:
        sel.unregister(side.sock)
    elif key.events != events:
        sel.modify(side.sock, events, side)


def _close(sel, side):
    for s in (side, side.peer):
        if not s.done:
            s.done = True
            if sel.get_map().get(s.sock) is not None:
                sel.unregister(s.sock)
            if s.owned:
                s.sock.close()


def _finish_write(side):
    """Pass on the peer's EOF once everything before it is written."""
    if side.peer.eof and not side.pending and not side.closed_write:
        side.closed_write = True
        try:
            side.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _event(sel, side, events):
    peer = side.peer
    try:
        if events & selectors.EVENT_WRITE and side.pending:
            sent = side.sock.send(side.pending)
            side.pending = side.pending[sent:]
            _finish_write(side)
        if events & selectors.EVENT_READ and not side.eof and not peer.pending:
            data = side.sock.recv(CHUNK)
            if not data:
                side.eof = True
                _finish_write(peer)
            else:
                try:
                    sent = peer.sock.send(data)
                except BlockingIOError:
                    sent = 0
                peer.pending = data[sent:]
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:  # reset, broken pipe: the connection is over
        _close(sel, side)
        return
    if side.eof and peer.eof and not side.pending and not peer.pending:
        _close(sel, side)
        return
    _update(sel, side)
    _update(sel, peer)


def _join(sel, a, b, owned, first=b""):
    """Start carrying bytes between two connected sockets in ``sel``; ``first``: read from ``a``, for ``b``."""
    a.setblocking(False)
    b.setblocking(False)
    x, y = _Side(a, owned), _Side(b, owned)
    x.peer, y.peer = y, x
    y.pending = bytes(first)
    _update(sel, x)
    _update(sel, y)
    return x


def _accept(sel, listener, path):
    try:
        client, _ = listener.accept()
    except OSError:
        return
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # reset before it was accepted: nothing to carry (and the loop must go on)
        client.close()
        return
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.settimeout(1.0)  # a full backlog would block the loop: then the proxy is unavailable
    try:
        upstream.connect(path)
    except OSError:
        upstream.close()
        try:
            client.sendall(BUSY)
        except OSError:
            pass
        client.close()
        return
    _join(sel, client, upstream, owned=True)


def serve(listener, path):
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, events in sel.select():
            if key.data is None:
                _accept(sel, listener, path)
            elif not key.data.done:  # not closed by an earlier event of this round
                _event(sel, key.data, events)


def pump(a: socket.socket, b: socket.socket, first: bytes = b"", idle: "float | None" = None) -> None:
    """Carry bytes both ways between two connected sockets (the egress proxy's tunnel once its
    SNI is checked, plugin.SniCheckingProxy) until both have ended, one fails, or nothing has
    moved for ``idle`` seconds; ``first``: bytes already read from ``a``, for ``b``. The sockets
    are left open (and non-blocking) for their owner to close."""
    sel = selectors.DefaultSelector()
    try:
        x = _join(sel, a, b, owned=False, first=first)
        while not x.done:
            ready = sel.select(idle)
            if not ready:
                break  # idle: the owner tears the tunnel down
            for key, events in ready:
                if not key.data.done:
                    _event(sel, key.data, events)
    finally:
        sel.close()


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    agent = sys.argv[sys.argv.index("--") + 1 :]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    if os.fork() == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        serve(listener, path)
        os._exit(0)
    listener.close()
    os.execv(agent[0], agent)


if __name__ == "__main__":
    main()
