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
import select
import signal
import socket
import sys

NAMESPACES_REFUSED = 96
HERE = os.path.dirname(os.path.abspath(__file__))
UNSHARE = ["unshare", "--user", "--map-current-user", "--pid", "--fork", "--mount-proc", "--kill-child", "--"]
AGENT = [sys.executable, os.path.join(HERE, "python_agent.py")]
CHUNK = 1 << 16


def start_agent():
    """Fork and exec unshare(1) with the agent, on socket pairs; return (pid, stream, errors)."""
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
    return pid, outside, err_outside


def exit_status(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def first_output(stream, errors):
    """Wait for the agent's first bytes (its ready frame), passing on what it says on stderr;
    return them (empty: it ended first) and the beginning of its stderr."""
    said, watched = b"", [stream, errors]
    while True:
        ready = select.select(watched, [], [])[0]
        if errors in ready:
            data = os.read(errors, CHUNK)
            said = said or data
            os.write(2, data)
            if not data:
                watched.remove(errors)
        if stream in ready:
            return os.read(stream, CHUNK), said


def relay(outside, errors, first):
    """Until the agent's stream ends: the container's stdin to the agent, the agent's stdout and
    stderr to the container's, in one thread (under gVisor every thread wake-up is dear). Nothing
    is read from a source while its last bytes still wait for their sink."""
    stream = outside.fileno()
    routes = {0: stream, stream: 1, errors: 2}
    waiting = {0: bytearray(), stream: bytearray(first), errors: bytearray()}
    for fd in (0, 1, 2, stream, errors):
        os.set_blocking(fd, False)
    sources = set(routes)
    while stream in sources or waiting[stream]:
        readable, writable, _ = select.select(
            [s for s in sources if not waiting[s]], [routes[s] for s in routes if waiting[s]], []
        )
        for source, sink in routes.items():
            if waiting[source] and sink in writable:
                try:
                    del waiting[source][: os.write(sink, waiting[source])]
                except BlockingIOError:
                    pass
                except OSError:
                    waiting[source].clear()  # the sink is gone: what it would have taken is lost with it
        for source in readable:
            try:
                data = os.read(source, CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                waiting[source] += data
                continue
            sources.discard(source)
            if source == 0:
                outside.shutdown(socket.SHUT_WR)  # the agent reads EOF, as from a closed stdin


def main():
    pid, outside, err_outside = start_agent()
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: os._exit(128 + n))  # PID 1: the namespace goes with us
    first, said = first_output(outside.fileno(), err_outside.fileno())
    if not first:
        status = os.waitpid(pid, 0)[1]
        refused = os.WIFEXITED(status) and os.WEXITSTATUS(status) in (1, NAMESPACES_REFUSED)
        os._exit(NAMESPACES_REFUSED if refused and said.startswith(b"unshare:") else exit_status(status))
    relay(outside, err_outside.fileno(), first)
    os._exit(exit_status(os.waitpid(pid, 0)[1]))


if __name__ == "__main__":
    main()
