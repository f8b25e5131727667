# Sandbox Kernel's stream relay for Python images (KubernetesSandbox.stream_relay; the Node.js
# twin is relay.js). It is the container's PID 1 in place of the agent and keeps the attach
# stream - the protocol between the kernel and the agent - out of reach of the cells.
#
# Why: under gVisor, /proc/<pid>/fd reopens any file descriptor of a process of the caller's
# uid, dumpable or not, and the container's stdin and stdout (host FIFOs, the attach stream)
# reopen fine: a cell could write frames of its own into the stream. So this relay holds the
# container's stdio itself and runs the agent - and so every cell - through unshare(1) in a user,
# PID and mount namespace of their own with a /proc of their own, connected to the relay by
# socket pairs (no /proc/<pid>/fd reopens a socket). From inside, the relay's PID namespace is
# not visible at all. The agent runs as the same uid (mapped to itself), without capabilities
# (exec as a non-root uid clears them), so it cannot unmount its /proc to uncover the
# container's; in a further user namespace of its own the mount is locked (tested on gVisor).
#
# unshare failing (a runtime whose seccomp profile forbids user namespaces, such as runc's
# RuntimeDefault) is an error, never a silent fallback: the relay writes unshare's message to the
# container's log and exits with status 96, which the kernel reports with the setting to change.
import os
import signal
import socket
import sys
import threading

NAMESPACES_REFUSED = 96
HERE = os.path.dirname(os.path.abspath(__file__))
UNSHARE = ["unshare", "--user", "--map-current-user", "--pid", "--fork", "--mount-proc", "--kill-child", "--"]
AGENT = [sys.executable, os.path.join(HERE, "python_agent.py")]
CHUNK = 1 << 20


def copy(source, sink, first=b"", then=None):
    """Bytes from fd ``source`` to fd ``sink`` until EOF; then end the writing side of socket ``then``."""
    data = first
    try:
        while True:
            while data:
                data = data[os.write(sink, data) :]
            data = os.read(source, CHUNK)
            if not data:
                break
    except OSError:
        pass
    if then is not None:
        try:
            then.shutdown(socket.SHUT_WR)  # the agent reads EOF, as from a closed stdin
        except OSError:
            pass


def main():
    inside, outside = socket.socketpair()
    err_inside, err_outside = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os.dup2(inside.fileno(), 0)
        os.dup2(inside.fileno(), 1)
        os.dup2(err_inside.fileno(), 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        try:
            os.execvp(UNSHARE[0], UNSHARE + AGENT)
        except OSError as exc:
            os.write(2, f"unshare: cannot run unshare(1): {exc}\n".encode())
        os._exit(NAMESPACES_REFUSED)
    inside.close()
    err_inside.close()
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: os._exit(128 + n))  # PID 1: the namespace goes with us
    errors = []

    def log():
        while True:
            data = os.read(err_outside.fileno(), CHUNK)
            if not data:
                return
            if not errors:
                errors.append(data)
            os.write(2, data)

    logger = threading.Thread(target=log, daemon=True)
    logger.start()
    # The kernel writes nothing before the agent's ready frame: start reading the stream then.
    first = os.read(outside.fileno(), CHUNK)
    if not first:
        _, status = os.waitpid(pid, 0)
        logger.join(1)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (1, NAMESPACES_REFUSED):
            said = b"".join(errors)
            if said.startswith(b"unshare:"):
                os._exit(NAMESPACES_REFUSED)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    threading.Thread(target=copy, args=(0, outside.fileno(), b"", outside), daemon=True).start()
    out = threading.Thread(target=copy, args=(outside.fileno(), 1, first), daemon=True)
    out.start()
    _, status = os.waitpid(pid, 0)
    out.join(5)
    logger.join(1)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
