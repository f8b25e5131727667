"""``python -m sandbox_kernel.egress.runner SOCKET``: one sandbox's proxy.py, on a Unix socket
(``--shared HOST:PORT POLICY_DIR [--refusals DIR]``: the Kubernetes proxy, for every sandbox with a
credential; ``--refusals``: where it records refused requests for the sync's Events, :mod:`.refusals`).

The kernel starts it (``start_new_session``) with ``SANDBOX_EGRESS_POLICY`` naming the policy
file. It never outlives the kernel: a watchdog thread ends the whole process group (proxy.py's
acceptor and worker processes too) as soon as its parent is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        time.sleep(0.5)


def proxy_argv(socket_path: str | None = None, listen: tuple[str, int] | None = None) -> list[str]:
    where = ["--unix-socket-path", socket_path] if socket_path else ["--hostname", listen[0], "--port", str(listen[1])]  # type: ignore[index]
    # Not reformatted: an option and its values on one line.
    # fmt: off
    return [
        *where,
        "--disable-http-proxy",  # replaced by the SNI-checking one below
        "--plugins", "sandbox_kernel.egress.plugin.SniCheckingProxy",
        "sandbox_kernel.egress.plugin.EgressPolicyPlugin",
        "--num-acceptors", "1",
        "--num-workers", "1",
        "--threaded",  # a thread per connection: threadless mode hands new connections over with up to 25 ms delay
        "--timeout", "30",
        "--log-level", "ERROR",
        "--disable-headers", "proxy-authorization",
        # Bulk downloads (pip wheels): 256 KiB reads and sends instead of 128/64 KiB (1 MiB: no faster,
        # and every small read would allocate 1 MiB).
        "--client-recvbuf-size", str(1 << 18), "--server-recvbuf-size", str(1 << 18), "--max-sendbuf-size", str(1 << 18),
    ]
    # fmt: on


def main() -> None:
    import proxy

    if sys.argv[1] == "--shared":
        # The Kubernetes proxy: ``runner --shared HOST:PORT POLICY_DIR``, one policy per sandbox
        # credential (see plugin.policy_for and k8s_sync); PID 1 of its container, no watchdog.
        host, _, port = sys.argv[2].rpartition(":")
        os.environ["SANDBOX_EGRESS_POLICY_DIR"] = sys.argv[3]
        if sys.argv[4:5] == ["--refusals"]:
            os.environ["SANDBOX_EGRESS_REFUSALS_DIR"] = sys.argv[5]
        elif sys.argv[4:]:
            raise SystemExit(f"runner: unknown option {sys.argv[4]}")
        sys.argv = [sys.argv[0], *proxy_argv(listen=(host, int(port)))]
        proxy.main()
        return
    socket_path = sys.argv[1]
    parent = int(os.environ.get("SANDBOX_EGRESS_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(os.getpgrp(), signal.SIGKILL))
    sys.argv = [sys.argv[0], *proxy_argv(socket_path)]
    proxy.main()


if __name__ == "__main__":
    main()
