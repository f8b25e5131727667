#!/usr/bin/env python
"""Egress benchmark: what the proxy path adds to an HTTPS request, against a direct connection.

    python benchmarks/bench_egress.py [--requests 300] [--warmup 30] [--mib 100] [--json benchmarks/results/egress.json]

Uses the tests' own HTTPS server (tests/egress_hosts.py: allowed.test on 127.0.0.62, a test CA)
and the real proxy (``EgressController``: proxy.py with the egress plugins, on its Unix socket),
in one run, interleaved request by request so machine drift hits every path alike:

- **direct**: TCP connect to 127.0.0.62:443, TLS handshake, ``GET /``, response read;
- **proxy**: the same request through the proxy's Unix socket (``CONNECT allowed.test:443``,
  policy check, hosts-file resolve, address check, SNI peek, then TLS through the tunnel);
- **relay+proxy**: the same through the in-sandbox relay (``egress/relay.py``, run here on the
  host's loopback) and the proxy: the whole path a sandbox's request takes.

Each is a fresh connection (what curl or pip does for each host); p50/p95 in ms, and the
difference of medians. Then one ``--mib`` MiB download on each path (MB/s, the best of 3).
Contacts nothing but this machine's test server.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from egress_hosts import ALLOWED_IP, EXEMPT, serve_test_hosts

from sandbox_kernel.egress.host import EgressController, EgressProxy

RELAY_PORT = 13128


def _read_response(tls: ssl.SSLSocket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    got = len(body)
    while got < length:
        chunk = tls.recv(1 << 20)
        if not chunk:
            raise ConnectionError("short body")
        got += len(chunk)
    return got


def _tunnel(sock: socket.socket) -> socket.socket:
    sock.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("proxy closed")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(data.decode("latin-1"))
    return sock


def request(path_kind: str, ctx: ssl.SSLContext, proxy_sock: str, url_path: str = "/") -> int:
    if path_kind == "direct":
        sock = socket.create_connection((ALLOWED_IP, 443), timeout=30)
    elif path_kind == "proxy":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(proxy_sock)
        _tunnel(sock)
    else:
        sock = socket.create_connection(("127.0.0.1", RELAY_PORT), timeout=30)
        _tunnel(sock)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) if sock.family == socket.AF_INET else None
    with ctx.wrap_socket(sock, server_hostname="allowed.test") as tls:
        tls.sendall(f"GET {url_path} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n".encode())
        return _read_response(tls)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    kinds = ["direct", "proxy", "relay+proxy"]
    with tempfile.TemporaryDirectory() as tmp, serve_test_hosts(Path(tmp)) as hosts:
        state = Path(tmp) / "state"
        ctl = EgressController(
            ["allowed.test"],
            EgressProxy(hosts_file=str(hosts["hosts"]), exempt_networks=[EXEMPT], state_dir=str(state)),
        )
        ctl._start(None)
        assert ctl.dir is not None
        proxy_sock = str(ctl.dir / "proxy.sock")
        relay = subprocess.Popen(
            [
                sys.executable,
                "-I",
                str(REPO / "sandbox_kernel/egress/relay.py"),
                proxy_sock,
                str(RELAY_PORT),
                "--",
                "/bin/sleep",
                "3600",
            ],
            start_new_session=True,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", RELAY_PORT), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            ctx = ssl.create_default_context(cafile=str(hosts["ca"]))
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for i in range(args.warmup + args.requests):
                order = kinds[i % 3 :] + kinds[: i % 3]
                for kind in order:
                    t = time.perf_counter()
                    request(kind, ctx, proxy_sock)
                    if i >= args.warmup:
                        times[kind].append((time.perf_counter() - t) * 1000)
            size = args.mib * 2**20
            throughput: dict[str, float] = {}
            for kind in kinds:
                best = 0.0
                for _ in range(3):
                    t = time.perf_counter()
                    got = request(kind, ctx, proxy_sock, f"/bytes/{size}")
                    assert got == size
                    best = max(best, size / (time.perf_counter() - t) / 1e6)
                throughput[kind] = best
        finally:
            os.killpg(relay.pid, 9)
            relay.wait()
            ctl.stop()
    results = {
        k: {"p50_ms": statistics.median(v), "p95_ms": pct(v, 0.95), "n": len(v), "MBps": throughput[k]}
        for k, v in times.items()
    }
    print(f"| path | p50 ms | p95 ms | added p50 ms | {args.mib} MiB download MB/s | vs direct |")
    print("|---|---|---|---|---|---|")
    base = results["direct"]
    for k, r in results.items():
        print(
            f"| {k} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p50_ms'] - base['p50_ms']:+.2f} | {r['MBps']:.0f} | {r['MBps'] / base['MBps']:.0%} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"requests": args.requests, "mib": args.mib, "results": results, "load": os.getloadavg()}, indent=2
            )
        )


if __name__ == "__main__":
    main()
