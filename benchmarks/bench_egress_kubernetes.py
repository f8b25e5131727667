#!/usr/bin/env python
"""Egress benchmark on Kubernetes: what the shared proxy adds to an HTTPS request from a sandbox,
against a direct connection from a plain pod on the same node, in one run.

    SANDBOX_KUBECONFIG=<admin kubeconfig> python benchmarks/bench_egress_kubernetes.py \\
        [--requests 200] [--rounds 4] [--mib 100] [--json benchmarks/results/egress-kubernetes.json]

Stands up what tests/e2e/test_egress_kubernetes.py uses (tests/egress_cluster.py: the test host
pod with the test CA, the proxy of k8s/egress/ with the test-only hosts file, the JupyterLab image
built from this tree), plus a plain client pod next to the test host, and a Python sandbox with
``Sandbox.allow_hosts = ['allowed.test']`` (direct mode, as the admin). The same standard-library
program runs in both, in alternating rounds so drift hits both alike:

- **direct**: the client pod: TCP connect to the test host's pod IP:443, TLS, ``GET /``, response;
- **proxy**: the sandbox: the same through ``HTTPS_PROXY`` (the proxy's ClusterIP:3128,
  ``CONNECT allowed.test:443`` with the sandbox's credential, policy, hosts-file resolve, address
  check, SNI peek, tunnel).

A fresh connection per request; p50/p95 in ms, the difference of medians; then one ``--mib`` MiB
download on each path (MB/s, the best of 3). Contacts nothing outside the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from egress_cluster import apply_test_proxy, build_lab_image, kubectl, remove_test_proxy, start_test_hosts

PROGRAM = r"""
import base64, json, os, socket, ssl, sys, time, urllib.parse
mode, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=CA)
def connect():
    if mode == "direct":
        return socket.create_connection((TARGET, 443), timeout=30)
    u = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    auth = base64.b64encode(f"{u.username}:{u.password}".encode()).decode()
    s.sendall(f"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s
def get():
    s = connect(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with ctx.wrap_socket(s, server_hostname="allowed.test") as t:
        t.sendall(f"GET {path} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n".encode())
        got = 0
        while chunk := t.recv(1 << 20):
            got += len(chunk)
        return got
out = []
for _ in range(n):
    t0 = time.perf_counter(); size = get(); out.append((time.perf_counter() - t0, size))
print("RESULT " + json.dumps(out))
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def parse(text: str) -> list[tuple[float, int]]:
    line = next(line for line in text.splitlines() if line.startswith("RESULT "))
    return [(float(t), int(n)) for t, n in json.loads(line[7:])]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--requests", type=int, default=200, help="requests per path and round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from kubernetes import client, config

    from sandbox_kernel.config import Sandbox
    from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
    from sandbox_kernel.kubernetes.settings import KubernetesSandbox
    from sandbox_kernel.languages import LANGUAGES
    from sandbox_kernel.session import Stream

    kubeconfig = os.environ["SANDBOX_KUBECONFIG"]
    image = os.environ.get("SANDBOX_IMAGE_PYTHON", "localhost/sandbox-python:3.11")
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    with tempfile.TemporaryDirectory() as tmp:
        hosts = start_test_hosts(core, image, Path(tmp), extra_pod="client")
        overlay = None
        session = None
        try:
            overlay = apply_test_proxy(kubeconfig, build_lab_image(kubeconfig), hosts, Path(tmp))
            program = PROGRAM.replace("TARGET", repr(hosts["ip"]))
            limits = Sandbox(allow_hosts=["allowed.test"], memory_limit="256Mi").limits()
            session = KubernetesSandboxSession(
                LANGUAGES["python"],
                limits,
                KubernetesSandbox(kubeconfig=kubeconfig, images={"python": image}),
                kernel_id="bench-egress",
            )
            await session.start()

            async def in_sandbox(n: int, path: str) -> list[tuple[float, int]]:
                code = f"import sys\nopen('/tmp/ca.pem','w').write({hosts['ca']!r})\nsys.argv = ['p', 'proxy', '{n}', '{path}']\n"
                code += program.replace("CA", "'/tmp/ca.pem'")
                text = ""
                async for event in session.execute(code):  # type: ignore[union-attr]
                    if isinstance(event, Stream):
                        text += event.text
                return parse(text)

            def direct(n: int, path: str) -> list[tuple[float, int]]:
                code = program.replace("CA", "'/certs/ca.pem'")
                return parse(
                    kubectl(
                        kubeconfig,
                        "-n",
                        hosts["namespace"],
                        "exec",
                        "client",
                        "--",
                        "python3",
                        "-c",
                        code,
                        "direct",
                        str(n),
                        path,
                        timeout=900,
                    ).stdout
                )

            direct(args.warmup, "/")
            await in_sandbox(args.warmup, "/")
            times: dict[str, list[float]] = {"direct": [], "proxy": []}
            for r in range(args.rounds):
                for kind in ["direct", "proxy"] if r % 2 == 0 else ["proxy", "direct"]:
                    got = direct(args.requests, "/") if kind == "direct" else await in_sandbox(args.requests, "/")
                    times[kind] += [t * 1000 for t, _ in got]
            size = args.mib * 2**20
            mbps = {
                "direct": max(size / t / 1e6 for t, n in direct(3, f"/bytes/{size}") if n > size),
                "proxy": max(size / t / 1e6 for t, n in await in_sandbox(3, f"/bytes/{size}") if n > size),
            }
        finally:
            if session is not None:
                await session.close()
            if overlay is not None:
                remove_test_proxy(kubeconfig, overlay)
            core.delete_namespace(hosts["namespace"])
    results = {
        k: {"p50_ms": statistics.median(v), "p95_ms": pct(v, 0.95), "n": len(v), "MBps": mbps[k]}
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
                {
                    "requests": args.requests,
                    "rounds": args.rounds,
                    "mib": args.mib,
                    "results": results,
                    "load": os.getloadavg(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
