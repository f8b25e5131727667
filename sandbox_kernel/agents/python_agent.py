#!/usr/bin/env python3
"""Sandbox Kernel agent for Python: runs notebook cells inside the sandbox.

The kernel starts this file as ``python3 python_agent.py`` with stdin/stdout carrying the
framed protocol of ``PROTOCOL.md`` and stderr as a log. Only the standard library is used
(Python 3.9+), and everything lives in this one file.

How it works, in short:

* **fds.** The very first thing the agent does is to move the protocol streams to private,
  close-on-exec descriptors and to give the user's code fd 0 = /dev/null and fd 1 / fd 2 =
  pipes that the agent reads. Whatever user code, its threads or its subprocesses write
  (``print``, ``os.write(1, ...)``, ``os.system``) goes into those pipes, and two *pump*
  threads wrap it into ``out`` / ``err`` frames, so nothing can corrupt the protocol.
* **Ordering.** ``sys.stdout``/``sys.stderr`` are unbuffered (write-through) text wrappers on
  fd 1/2, so Python prints and subprocess output share one ordered pipe. Before the agent
  sends ``result``/``error``/``display``/``done`` it writes a random marker into both pipes
  and waits until each pump has seen it: every byte written before that moment has then been
  forwarded (a "drain handshake"); a background process that keeps fd 1 open cannot block it.
* **Threads.** The main thread runs cells. A reader thread reads the protocol so that an
  ``interrupt`` is seen while a cell runs. Protocol writes come from several threads and are
  serialised by a lock.
* **Interrupts.** The agent makes itself a process-group leader; an ``interrupt`` sends
  SIGINT to the whole group, which stops ``time.sleep``, busy loops (the SIGINT handler
  raises KeyboardInterrupt in the main thread) and children such as ``os.system('sleep 100')``.
  The handler raises only while user code runs, never inside agent bookkeeping (it checks a
  flag and the interrupted frame); a watchdog re-sends SIGINT until it lands.
* **Two processes.** The process the kernel starts forks: the parent, the *supervisor*, keeps
  the protocol stream, makes itself non-dumpable (so no process of the same uid can open its
  fds through /proc or pidfd_getfd) and never runs user code; the child, the *worker*, runs
  everything described here and speaks the same framing over two private pipes. The supervisor
  answers ``resume`` itself, gives each request a random key, and re-frames only the worker's
  messages that fit (PROTOCOL.md, "What user code can reach"; see ``_supervise``).
* **Resuming.** Every frame written is also kept, whole, in a replay buffer (at least the last
  ``REPLAY_BYTES``), and frames are counted both ways, so that after the kernel re-opens a
  dropped stream, ``resume`` repeats exactly what it missed (PROTOCOL.md, "Resuming").
"""

# --------------------------------------------------------------------------------------
# Step 1, before anything can print: move the protocol off fds 0/1.
# Only os/sys are used here so that no import can write to the protocol stream first.
# --------------------------------------------------------------------------------------
import os
import sys


def _lowest_private_fd():
    # High numbers keep the agent's fds out of the way of user code that closes or reuses
    # low ones (os.closerange(3, 256) is a common idiom).
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(10, min(256, soft - 32))


_FIRST_PRIVATE_FD = _lowest_private_fd()


def _private_fd(fd):
    """Duplicate ``fd`` to a high, close-on-exec descriptor (subprocesses never see it)."""
    try:
        import fcntl

        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_PRIVATE_FD)
    except (ImportError, OSError):
        return os.dup(fd)  # os.dup() also returns a non-inheritable (close-on-exec) fd


def _private_pipe():
    r, w = os.pipe()
    pr, pw = _private_fd(r), _private_fd(w)
    os.close(r)
    os.close(w)
    return pr, pw


_PROTO_IN = _private_fd(0)  # kernel -> agent frames
_PROTO_OUT = _private_fd(1)  # agent -> kernel frames
try:
    _LOG_FD = _private_fd(2)  # the agent's own diagnostics (the kernel logs them)
except OSError:
    _LOG_FD = -1
try:
    _fd = os.open(os.devnull, os.O_RDWR)
except OSError:  # no /dev/null in this sandbox: a pipe without writer reads as EOF too
    _fd, _w = os.pipe()
    os.close(_w)
_DEVNULL = _private_fd(_fd)
os.close(_fd)
# The write ends are kept (privately) so fd 1/2 can be repaired before every cell and the
# drain markers never depend on what the user did to fd 1/2.
_OUT_R, _OUT_W = _private_pipe()
_ERR_R, _ERR_W = _private_pipe()
os.dup2(_DEVNULL, 0)
os.dup2(_OUT_W, 1)
os.dup2(_ERR_W, 2)
# Python children should stream live into the pipes too, not buffer until they exit.
os.environ.setdefault("PYTHONUNBUFFERED", "1")

# --------------------------------------------------------------------------------------
# Step 2: everything else.
# --------------------------------------------------------------------------------------
import __future__  # noqa: E402
import ast  # noqa: E402
import collections  # noqa: E402
import builtins  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import linecache  # noqa: E402
import queue  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402

MAX_PAYLOAD = 2 << 20  # largest frame payload the protocol allows (PROTOCOL.md)
MAX_HEADER = 32
READ_CHUNK = 65536  # also the largest out/err frame we send
PROTOCOL_VERSION = 2


def _replay_bytes():
    value = os.environ.get("SANDBOX_AGENT_REPLAY_BYTES", "")
    return int(value) if value.isdigit() else 8 << 20


REPLAY_BYTES = _replay_bytes()  # the replay buffer keeps at least this much of our output
_RESUME_TOKEN = re.compile(r"[0-9a-f]{32}\Z")

_AGENT_PID = os.getpid()
_MAIN_TID = threading.get_ident()
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect at start-up
_TOP_LEVEL_AWAIT = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
_FUTURE_MASK = 0
for _name in __future__.all_feature_names:
    _FUTURE_MASK |= getattr(__future__, _name).compiler_flag

# Become a process-group leader so an interrupt can signal the agent *and* every process the
# user's code started (and only those). Fails harmlessly when we already lead a session
# (bwrap --new-session, PID 1 in a container): then we lead our group anyway.
try:
    os.setpgid(0, 0)
except OSError:
    pass


def _is_group_leader():
    return os.getpgrp() == os.getpid()


def _log(text):
    if _LOG_FD >= 0:
        try:
            _write_all(_LOG_FD, ("python-agent: %s\n" % text).encode("utf-8", "replace"))
        except OSError:
            pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)  # EINTR is retried by Python itself (PEP 475)
        view = view[n:]


# --------------------------------------------------------------------------------------
# Protocol output
# --------------------------------------------------------------------------------------
_proto_lock = threading.Lock()
# Under _proto_lock: the output offset (bytes of frames written so far), the most recent
# frames (whole, oldest first) and how many bytes they hold.
_written = 0
_replay = collections.deque()  # type: collections.deque[bytes]
_replay_kept = 0
_received = 0  # frames read from the kernel (only the reader thread touches it)


def _send_frame(kind, payload):
    global _written, _replay_kept
    if os.getpid() != _AGENT_PID:  # a fork()ed child must never talk to the kernel
        return
    frame = b"%s %d\n" % (kind, len(payload)) + payload
    try:
        with _proto_lock:
            _write_all(_PROTO_OUT, frame)
            _written += len(frame)
            _replay.append(frame)
            _replay_kept += len(frame)
            while _replay and _replay_kept - len(_replay[0]) >= REPLAY_BYTES:
                _replay_kept -= len(_replay.popleft())
    except OSError as exc:  # the kernel went away
        _log("cannot write to the kernel (%s); exiting" % exc)
        _terminate(1)


def _resume(msg):
    """The kernel re-opened the stream: mark the spot, then repeat what it missed."""
    token, offset = msg.get("token"), msg.get("offset")
    if not isinstance(token, str) or not _RESUME_TOKEN.match(token) or type(offset) is not int or offset < 0:
        _log("ignoring a malformed resume: %r" % (msg,))
        return
    try:
        with _proto_lock:
            first = _written - _replay_kept
            start = min(max(offset, first), _written)
            if start > offset:
                _log("resume: %d bytes of output were no longer kept" % (start - offset))
            parts = [b"resume %s %d %d\n" % (token.encode("ascii"), start, _received)]
            skip = start - first
            for frame in _replay:
                if skip >= len(frame):
                    skip -= len(frame)
                    continue
                parts.append(frame[skip:] if skip else frame)
                skip = 0
            _write_all(_PROTO_OUT, b"".join(parts))
    except OSError as exc:
        _log("cannot write to the kernel (%s); exiting" % exc)
        _terminate(1)


def _json_default(obj):
    return "<unserializable %s>" % type(obj).__name__


def _dump(body):
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (possible in Python str) become U+FFFD
        return _SURROGATES.sub("\ufffd", text).encode("utf-8")


def _clip(obj, max_str, max_items):
    if isinstance(obj, str):
        return obj if len(obj) <= max_str else obj[:max_str] + "\n... [truncated]"
    if isinstance(obj, (list, tuple)):
        return [_clip(x, max_str, max_items) for x in obj[:max_items]]
    if isinstance(obj, dict):
        return {k: _clip(v, max_str, max_items) for k, v in list(obj.items())[:max_items]}
    return obj


def _fit(body):
    """Encode ``body``, shrinking it if needed so the frame stays within MAX_PAYLOAD."""
    try:
        payload = _dump(body)
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. circular metadata
        body = {k: v for k, v in body.items() if k in ("type", "id", "transient")}
        body.update(_fit_fallback(body["type"], exc))
        payload = _dump(body)
    if len(payload) <= MAX_PAYLOAD:
        return payload
    body = dict(body)
    data = body.get("data")
    if isinstance(data, dict) and data:
        data = dict(data)
        sizes = sorted(((len(_dump(v)), k) for k, v in data.items() if k != "text/plain"), reverse=True)
        for size, key in sizes:
            del data[key]
            body["data"], body["metadata"] = data, {}
            _warn("output %s dropped: %d bytes is over the %d-byte message limit\n" % (key, size, MAX_PAYLOAD))
            payload = _dump(body)
            if len(payload) <= MAX_PAYLOAD:
                return payload
    max_str, max_items = 200000, 10000
    while True:
        payload = _dump(_clip(body, max_str, max_items))
        if len(payload) <= MAX_PAYLOAD or max_str < 64:
            return payload
        max_str, max_items = max_str // 2, max(max_items // 2, 16)


def _fit_fallback(kind, exc):
    if kind in ("display", "update_display", "result"):
        return {"data": {"text/plain": "<output could not be encoded: %s>" % exc}, "metadata": {}}
    return {}


def _send_msg(body):
    _send_frame(b"msg", _fit(body))


# --------------------------------------------------------------------------------------
# Output capture: pumps, output budget, drain handshake
# --------------------------------------------------------------------------------------
_budget_lock = threading.Lock()
_budget = {"limit": 0, "sent": 0, "truncated": 0}


def _forward(kind, data):
    """Send user output, honouring the current cell's output_limit."""
    n = len(data)
    with _budget_lock:
        limit = _budget["limit"]
        if limit:
            room = limit - _budget["sent"]
            if room <= 0:
                _budget["truncated"] += n
                return
            if n > room:
                _budget["truncated"] += n - room
                data, n = data[:room], room
        _budget["sent"] += n
    for start in range(0, n, READ_CHUNK):
        _send_frame(kind, data[start : start + READ_CHUNK])


def _partial_suffix(data, marker):
    """Length of the longest tail of ``data`` that is a proper prefix of ``marker``."""
    first = marker[:1]
    start = max(0, len(data) - len(marker) + 1)
    if data.find(first, start) < 0:
        return 0
    for k in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:k]):
            return k
    return 0


class _Pump:
    """Reads one of the user's output pipes and forwards it as out/err frames."""

    def __init__(self, rfd, wfd, kind):
        self.rfd, self.wfd, self.kind = rfd, wfd, kind
        self.expect = None  # drain marker we are waiting for, or None
        self.seen = threading.Event()
        self.thread = None

    def arm(self, marker):
        self.seen.clear()
        self.expect = marker

    def run(self):
        held = b""  # bytes that might be the start of a marker split over two reads
        while True:
            try:
                data = os.read(self.rfd, READ_CHUNK)
            except OSError as exc:
                _log("output pipe failed: %s" % exc)
                return
            if not data:
                return
            if held:
                data, held = held + data, b""
            marker = self.expect
            if marker is not None:
                i = data.find(marker)
                if i >= 0:
                    if i:
                        _forward(self.kind, data[:i])
                    self.expect = None
                    self.seen.set()
                    data = data[i + len(marker) :]
                else:
                    k = _partial_suffix(data, marker)
                    if k:
                        data, held = data[:-k], data[-k:]
            if data:
                _forward(self.kind, data)


_pumps = []  # type: list[_Pump]
_sync_lock = threading.Lock()


def _sync_output(timeout=10.0):
    """Return once every byte written to fd 1/2 so far has been sent to the kernel."""
    if os.getpid() != _AGENT_PID:
        return
    with _sync_lock:
        marker = b"\0\x1b[sandbox-sync:" + os.urandom(12).hex().encode() + b"]\0"
        for pump in _pumps:
            pump.arm(marker)
        for pump in _pumps:
            try:
                _write_all(pump.wfd, marker)  # < PIPE_BUF: atomic, never interleaved
            except OSError as exc:
                _log("cannot write drain marker: %s" % exc)
                pump.seen.set()
        for pump in _pumps:
            # Waiting only takes long when the kernel does not read our frames; then the
            # done frame could not be sent anyway.
            while not pump.seen.wait(timeout):
                _log("still draining %s (is the kernel reading?)" % pump.kind.decode())
                if not pump.thread.is_alive():
                    break


# --------------------------------------------------------------------------------------
# The user's sys.stdout / sys.stderr / sys.stdin
# --------------------------------------------------------------------------------------
class _FdWriter(io.RawIOBase):
    """Unbuffered binary writer on a file descriptor; never closes it."""

    def __init__(self, fd):
        super().__init__()
        self._fd = fd

    def writable(self):
        return True

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def write(self, b):
        # Its own loop rather than _write_all(): the SIGINT handler may raise here (user
        # output blocked on a full pipe must stay interruptible), never in _write_all().
        view = memoryview(b).cast("B")
        size = len(view)
        while view:
            view = view[os.write(self._fd, view) :]
        return size


def _text_stream(fd):
    # write_through: every write goes straight to the fd, so prints interleave correctly
    # with subprocess output and nothing is left in a buffer when a cell ends.
    return io.TextIOWrapper(
        _FdWriter(fd), encoding="utf-8", errors="backslashreplace", newline="\n", write_through=True
    )


def _stdin_stream():
    return io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")


_original_streams = (sys.stdin, sys.stdout, sys.stderr)  # keep alive; never used again
_streams = {"stdin": _stdin_stream(), "stdout": _text_stream(1), "stderr": _text_stream(2)}
sys.stdin = sys.__stdin__ = _streams["stdin"]  # type: ignore[misc]
sys.stdout = sys.__stdout__ = _streams["stdout"]  # type: ignore[misc]
sys.stderr = sys.__stderr__ = _streams["stderr"]  # type: ignore[misc]


def _repair_streams():
    """Undo a user's os.close(1), dup2 over fd 1/2 or sys.stdout.close() before a cell."""
    for fd, src in ((0, _DEVNULL), (1, _OUT_W), (2, _ERR_W)):
        try:
            os.dup2(src, fd)
        except OSError:
            pass
    makers = (("stdin", _stdin_stream), ("stdout", lambda: _text_stream(1)), ("stderr", lambda: _text_stream(2)))
    for name, make in makers:
        if _streams[name].closed:
            _streams[name] = make()
            setattr(sys, "__%s__" % name, _streams[name])
        current = getattr(sys, name)
        try:
            broken = current is None or current.closed
        except Exception:
            broken = True
        if broken:
            setattr(sys, name, _streams[name])


def _warn(text):
    """A note for the user on the cell's stderr (e.g. a failing _repr_html_)."""
    try:
        _write_all(_ERR_W, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _flush_user_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    _flush_c_stdio()


_libc = []  # type: list  # the C library, loaded on first use


def _flush_c_stdio():
    """fflush(NULL): C extensions' printf output would otherwise sit in libc's buffer."""
    if not _libc:
        try:
            import ctypes

            _libc.append(ctypes.CDLL(None).fflush)
        except Exception:
            _libc.append(None)
    if _libc[0] is not None:
        try:
            _libc[0](None)
        except Exception:
            pass


# --------------------------------------------------------------------------------------
# Process handling: interrupt, shutdown, zombies
# --------------------------------------------------------------------------------------
def _proc_table():
    """{pid: (state, ppid, pgrp)} from /proc, or None when /proc is not available."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            fd = os.open("/proc/%s/stat" % name, os.O_RDONLY)
            try:
                stat = os.read(fd, 4096)
            finally:
                os.close(fd)
            rest = stat[stat.rindex(b")") + 2 :].split()
            table[int(name)] = (rest[0], int(rest[1]), int(rest[2]))
        except (OSError, ValueError, IndexError):
            continue
    return table


def _descendants(table, root):
    children = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _read_children(pid):
    """Direct children of ``pid`` from /proc/<pid>/task/*/children, or None if unsupported."""
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return [] if pid != os.getpid() else None  # the process just ended
    except OSError:
        return None
    found = []
    for tid in tasks:
        try:
            fd = os.open("/proc/%d/task/%s/children" % (pid, tid), os.O_RDONLY)
        except FileNotFoundError:
            continue  # the thread just ended
        except OSError:
            return None  # kernel without CONFIG_PROC_CHILDREN
        try:
            found.extend(int(c) for c in os.read(fd, 65536).split())
        except (OSError, ValueError):
            pass
        finally:
            os.close(fd)
    return found


def _descendant_pids():
    """Our descendants' pids (cheap: one small read per process when nothing runs)."""
    found, stack = set(), [os.getpid()]
    while stack:
        children = _read_children(stack.pop())
        if children is None:
            table = _proc_table()
            return set(_descendants(table, os.getpid())) if table else set()
        for child in children:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


_background_pids = set()  # type: set[int]  # descendants still running when the last cell ended


def _signal_others(sig, group=True):
    """Signal every descendant (and, if we lead it, every member of our group) but us."""
    me = os.getpid()
    table = _proc_table()
    if table is None:
        return False
    targets = set(_descendants(table, me))
    if group and _is_group_leader():
        targets.update(pid for pid, (_, _, pgrp) in table.items() if pgrp == me)
    targets.discard(me)
    for pid in targets:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return True


def _signal_main_thread():
    # A process-directed signal may be taken by any thread that does not block it; a
    # signal taken by another thread would not wake the main thread from time.sleep() etc.
    try:
        signal.pthread_kill(_MAIN_TID, signal.SIGINT)
    except (OSError, AttributeError):
        os.kill(os.getpid(), signal.SIGINT)


def _signal_cell(sig):
    """Deliver an interrupt: to the main thread, and to every process the user's code
    started: our whole process group when we lead one, else our descendants (never a group
    we do not own, e.g. the kernel's)."""
    _signal_main_thread()
    if _is_group_leader():
        try:
            os.killpg(os.getpid(), sig)
            return
        except OSError:
            pass
    _signal_others(sig, group=False)


def _start_thread(target, name, *args):
    """Start an agent thread that blocks SIGINT, so SIGINT lands in the main thread."""

    def run():
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        except (AttributeError, OSError, ValueError):
            pass
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


_exit_lock = threading.Lock()


def _terminate(code=0):
    """Exit now, taking the processes the user's code started with us."""
    if not _exit_lock.acquire(False):
        time.sleep(5)  # another thread is already exiting
        os._exit(code)
    try:
        if not _signal_others(signal.SIGKILL) and _is_group_leader():
            os.killpg(os.getpid(), signal.SIGTERM)  # we have a handler, so we survive it
    except BaseException:
        pass
    os._exit(code)


def _reap_zombies():
    """As PID 1 of a container we inherit orphans; reap those that stay zombies (a zombie
    seen twice, seconds apart, is nobody's to wait for: subprocess/os.system reap at once)."""
    previous = set()
    while True:
        time.sleep(2.0)
        table = _proc_table() or {}
        me = os.getpid()
        zombies = {pid for pid, (state, ppid, _) in table.items() if state == b"Z" and ppid == me}
        for pid in zombies & previous:
            try:
                os.waitpid(pid, os.WNOHANG)
            except OSError:
                pass
        previous = zombies


class _State:
    in_user = False  # True while user code runs in the main thread


class _Cell:
    __slots__ = ("id", "running", "interrupt_requested", "kbi_delivered", "watchdog")

    def __init__(self, cell_id):
        self.id = cell_id
        self.running = False
        self.interrupt_requested = False
        self.kbi_delivered = False
        self.watchdog = False


_cell_lock = threading.Lock()
_current_cell = None
_last_cell_id = None
_queued_executes = 0
_pending_interrupt = False


def _sigint_handler(signum, frame):
    # Raise only in user code: not between cells, and not in an agent frame (that would
    # break bookkeeping such as a half-written protocol frame). A skipped interrupt is
    # re-sent by the watchdog until user code is running again.
    if not _State.in_user:
        return
    if frame is not None and frame.f_code.co_filename == _AGENT_FILE and frame.f_code not in _INTERRUPTIBLE:
        return
    cell = _current_cell
    if cell is not None:
        if cell.interrupt_requested and cell.kbi_delivered:
            return  # a duplicate SIGINT of an interrupt that already raised
        cell.kbi_delivered = True
    raise KeyboardInterrupt


_AGENT_FILE = _sigint_handler.__code__.co_filename
_INTERRUPTIBLE = {_FdWriter.write.__code__}  # agent code that is really user I/O


def _on_interrupt():
    """Called by the reader thread for an ``interrupt`` message."""
    global _pending_interrupt
    with _cell_lock:
        cell = _current_cell
        if cell is None or not cell.running:
            if _queued_executes:
                _pending_interrupt = True  # the cell was sent but has not started yet
            return
        cell.interrupt_requested = True
        cell.kbi_delivered = False  # a new interrupt may raise again
        start_watchdog = not cell.watchdog
        cell.watchdog = True
    _signal_cell(signal.SIGINT)
    if start_watchdog:
        _start_thread(_interrupt_watchdog, "interrupt", cell)


def _interrupt_watchdog(cell):
    """SIGINT can be lost: ignored by the C library during os.system(), or arriving while
    agent code runs. Re-send it until a KeyboardInterrupt was raised; after 1 s also kill
    the cell's child processes (a child that ignores SIGINT keeps os.system() waiting)."""
    started = time.monotonic()
    killed_children = False
    while True:
        time.sleep(0.2)
        with _cell_lock:
            if not cell.running or cell.kbi_delivered:
                return
            _signal_main_thread()
        if not killed_children and time.monotonic() - started > 1.0:
            killed_children = True
            # only processes this cell started: background jobs of earlier cells survive
            for pid in _descendant_pids() - _background_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def _on_sigterm(signum, frame):
    _terminate(0)


# --------------------------------------------------------------------------------------
# The user's namespace
# --------------------------------------------------------------------------------------
class StdinNotImplementedError(RuntimeError, EOFError):
    """input() was called, but the frontend does not answer input requests."""


def _no_input(prompt=""):
    if prompt:
        try:
            sys.stdout.write(str(prompt))
        except Exception:
            pass
    raise StdinNotImplementedError(
        "input() is not supported here: this frontend does not answer input requests (allow_stdin is false)"
    )


_agent_module = sys.modules.get("__main__")  # keep the agent's own module alive
_user_module = types.ModuleType("__main__", None)
_user_ns = _user_module.__dict__
_user_ns["__builtins__"] = builtins
# pickle and friends look user classes up in sys.modules['__main__']
sys.modules["__main__"] = _user_module
sys.argv = [""]
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = ""  # like IPython: modules in the working directory are importable


# --------------------------------------------------------------------------------------
# Comms (Jupyter's comm messages, which ipywidgets use) and stdin (input(), getpass())
# --------------------------------------------------------------------------------------
class _Request:
    """What the running request (a cell or a frontend comm message) allows and is called."""

    parent = None  # its Jupyter message id: ipywidgets' Output widget captures output by it
    allow_stdin = False  # the frontend can answer input()
    key = None  # the supervisor's key of the running cell (input_request carries it)


class _CommKernel:
    """``comm.kernel``: what ipywidgets asks of a kernel (``get_parent``, for the Output widget)."""

    def get_parent(self, channel="shell"):
        return {"header": {"msg_id": _Request.parent}} if _Request.parent else {}


_COMM_KERNEL = _CommKernel()
_MAX_COMM_BUFFERS = 64


def _send_comm(kind, comm_id, data, metadata, buffers, target_name=None):
    """Send one comm message to the kernel; raises ValueError when it is not JSON or too big."""
    import base64

    if os.getpid() != _AGENT_PID:
        return  # a fork()ed child must never talk to the kernel
    encoded = []
    for buf in buffers or ():
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise TypeError("comm buffers must be bytes-like, not %s" % type(buf).__name__)
        encoded.append(base64.b64encode(bytes(buf)).decode("ascii"))
    if len(encoded) > _MAX_COMM_BUFFERS:
        raise ValueError("a comm message may carry at most %d buffers" % _MAX_COMM_BUFFERS)
    body = {
        "type": kind,
        "id": _last_cell_id,
        "comm_id": comm_id,
        "data": data or {},
        "metadata": metadata or {},
        "buffers": encoded,
    }
    if target_name is not None:
        body["target_name"] = target_name
    try:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError("comm data must be JSON: %s" % exc) from None
    payload = _SURROGATES.sub("\ufffd", payload).encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(
            "a comm message of %d bytes is over the sandbox's %d-byte message limit" % (len(payload), MAX_PAYLOAD)
        )
    on_main = threading.get_ident() == _MAIN_TID
    previous = _State.in_user
    if on_main:
        _State.in_user = False  # not interrupted half-way through a frame
    try:
        _flush_user_streams()
        _sync_output()  # after what was printed before it
        _send_frame(b"msg", payload)
    finally:
        if on_main:
            _State.in_user = previous


class Comm:
    """One comm, with the API of the ``comm`` package's ``BaseComm`` (comm 0.2), through the agent."""

    def __init__(
        self,
        target_name="comm",
        data=None,
        metadata=None,
        buffers=None,
        comm_id=None,
        primary=True,
        target_module=None,
        topic=None,
        _open_data=None,
        _close_data=None,
        **kwargs,
    ):
        import uuid

        self.comm_id = comm_id if isinstance(comm_id, str) and comm_id else uuid.uuid4().hex
        self.target_name = target_name
        self.target_module = target_module  # never sent: a frontend could load it as code
        self.primary = primary
        self.kernel = _COMM_KERNEL
        self._msg_callback = self._close_callback = None
        self._closed = True
        if primary:
            self.open(data=data, metadata=metadata, buffers=buffers)
        else:
            self._closed = False

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        _send_comm(msg_type, self.comm_id, data, metadata, buffers, keys.get("target_name"))

    def open(self, data=None, metadata=None, buffers=None):
        manager = _comm_manager()
        manager.register_comm(self)
        try:
            self.publish_msg("comm_open", data, metadata, buffers, target_name=self.target_name)
        except BaseException:
            manager.unregister_comm(self)
            raise
        self._closed = False

    def close(self, data=None, metadata=None, buffers=None, deleting=False):
        if self._closed:
            return
        self._closed = True
        if not deleting:
            self.publish_msg("comm_close", data, metadata, buffers)
        _comm_manager().unregister_comm(self)

    def send(self, data=None, metadata=None, buffers=None):
        self.publish_msg("comm_msg", data, metadata, buffers)

    def on_close(self, callback):
        self._close_callback = callback

    def on_msg(self, callback):
        self._msg_callback = callback

    def handle_close(self, msg):
        if self._close_callback:
            self._close_callback(msg)

    def handle_msg(self, msg):
        if self._msg_callback:
            self._msg_callback(msg)


class CommManager:
    """The sandbox's comms and comm targets (the API of the ``comm`` package's ``CommManager``)."""

    def __init__(self):
        self.comms = {}
        self.targets = {}

    def register_target(self, target_name, f):
        if isinstance(f, str):
            import importlib

            module, _, name = f.rpartition(".")
            f = getattr(importlib.import_module(module), name)
        self.targets[target_name] = f

    def unregister_target(self, target_name, f=None):
        return self.targets.pop(target_name, None)

    def register_comm(self, comm):
        self.comms[comm.comm_id] = comm
        return comm.comm_id

    def unregister_comm(self, comm):
        self.comms.pop(comm.comm_id, None)

    def get_comm(self, comm_id):
        return self.comms.get(comm_id)

    def comm_open(self, stream, ident, msg):
        content = msg["content"]
        comm = Comm(comm_id=content["comm_id"], primary=False, target_name=content["target_name"])
        self.register_comm(comm)
        handler = self.targets.get(content["target_name"])
        if handler is None:
            comm.close()  # no such target here: the frontend is told at once, as by ipykernel
            return
        try:
            handler(comm, msg)
        except BaseException:
            comm.close()
            raise

    def comm_msg(self, stream, ident, msg):
        comm = self.get_comm(msg["content"]["comm_id"])
        if comm is not None:
            comm.handle_msg(msg)

    def comm_close(self, stream, ident, msg):
        comm = self.comms.pop(msg["content"]["comm_id"], None)
        if comm is not None:
            comm._closed = True
            comm.handle_close(msg)


_comm_managers = []  # type: list  # the one CommManager, made on first use


def _comm_manager():
    if not _comm_managers:
        _comm_managers.append(CommManager())
    return _comm_managers[0]


def _create_comm(*args, **kwargs):
    return Comm(*args, **kwargs)


_PATCHED_MODULES = ("comm", "getpass", "IPython.core.display_functions")


class _ImportPatches:
    """``import comm`` gives the real package with its ``create_comm`` / ``get_comm_manager``
    replaced by the agent's (what an ipykernel does), or, where the package is not installed, a
    module of the agent's own with the same API. ``import getpass`` gets the agent's getpass().
    IPython's ``display()`` without an IPython shell (plain mode) shows through the agent
    instead of printing the object's repr (tqdm.notebook and ipywidgets call it)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _PATCHED_MODULES:
            return None
        import importlib.machinery
        import importlib.util

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            if name != "comm":
                return None
            return importlib.util.spec_from_loader(name, _PatchingLoader(None, name))
        spec.loader = _PatchingLoader(spec.loader, name)
        return spec


class _PatchingLoader:
    def __init__(self, loader, name):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec) if self.loader is not None else None

    def exec_module(self, module):
        if self.loader is not None:
            self.loader.exec_module(module)
        else:
            module.BaseComm, module.CommManager, module.__version__ = Comm, CommManager, "0.2.3"
            module.__doc__ = "The sandbox agent's comms (the comm package is not installed)."
        if self.name == "comm":
            module.create_comm, module.get_comm_manager = _create_comm, _comm_manager
        elif self.name == "getpass":
            module.getpass = _getpass
        else:
            module.display = _plain_ipython_display(module.display)


def _plain_ipython_display(original):
    def display_(
        *objs,
        include=None,
        exclude=None,
        metadata=None,
        transient=None,
        display_id=None,
        raw=False,
        clear=False,
        **kwargs,
    ):
        try:
            from IPython.core.interactiveshell import InteractiveShell

            shell = InteractiveShell.initialized()
        except Exception:
            shell = True
        if shell or display_id is not None or transient or clear:
            return original(
                *objs,
                include=include,
                exclude=exclude,
                metadata=metadata,
                transient=transient,
                display_id=display_id,
                raw=raw,
                clear=clear,
                **kwargs,
            )
        return display(*objs, include=include, exclude=exclude, metadata=metadata, raw=raw)

    display_.__doc__ = original.__doc__
    return display_


def _register_widget_targets():
    """ipywidgets registers its comm targets at import only under IPython; do it otherwise."""
    widgets = sys.modules.get("ipywidgets")
    if widgets is not None and "jupyter.widget" not in _comm_manager().targets:
        try:
            widgets.register_comm_target()
        except Exception as exc:
            _log("registering the widget comm targets failed: %r" % exc)


def _deliver_comm(msg):
    """A frontend comm message, as the handlers of the ``comm`` package see it."""
    import base64

    kind = msg.get("type")
    content = {"comm_id": msg.get("comm_id"), "data": msg.get("data") or {}}
    if kind == "comm_open":
        content["target_name"] = msg.get("target_name")
    buffers = [memoryview(base64.b64decode(b)) for b in msg.get("buffers") or () if isinstance(b, str)]
    message = {
        "header": {"msg_id": _Request.parent or "", "msg_type": kind},
        "parent_header": {},
        "metadata": msg.get("metadata") or {},
        "content": content,
        "buffers": buffers,
    }
    if not isinstance(content["comm_id"], str):
        return
    getattr(_comm_manager(), kind)(None, None, message)


def _run_comm_request(msg):
    """A frontend comm message, run like a cell: its handlers are user code (interruptible, their
    output counted), and ``done`` ends it. An exception is shown on stderr, as a traceback."""
    global _current_cell, _last_cell_id, _queued_executes, _pending_interrupt
    try:
        limit = max(0, int(msg.get("output_limit") or 0))
    except (TypeError, ValueError):
        limit = 0
    _prepare_cell(limit)
    cell = _Cell(msg.get("id"))
    key = msg.pop("key", None)
    with _cell_lock:
        _queued_executes = max(0, _queued_executes - 1)
        _current_cell = cell
        _last_cell_id = cell.id
        cell.running = True
        if _pending_interrupt:
            _pending_interrupt = False
            cell.interrupt_requested = True
    status = "ok"
    try:
        if cell.interrupt_requested:
            raise KeyboardInterrupt
        _State.in_user = True
        try:
            _deliver_comm(msg)
        finally:
            _State.in_user = False
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
        if os.getpid() == _AGENT_PID:
            _warn("\n".join(_error_content(exc)["traceback"]) + "\n")
    if os.getpid() != _AGENT_PID:
        _flush_user_streams()
        os._exit(0 if status == "ok" else 1)
    _flush_user_streams()
    with _cell_lock:
        cell.running = False
    _sync_output()
    with _budget_lock:
        truncated = _budget["truncated"]
    _send_msg({"type": "done", "id": cell.id, "status": status, "truncated": truncated, "key": key})


_input_replies = queue.SimpleQueue()  # type: queue.SimpleQueue[dict]  # from the reader thread
_input_seq = [0]


def _ask_frontend(prompt, password):
    """input()/getpass(): ask the frontend (``input_request``) and wait for its answer; without a
    frontend that allows stdin, the error of before."""
    if not _Request.allow_stdin or os.getpid() != _AGENT_PID or threading.get_ident() != _MAIN_TID:
        return _no_input(prompt)
    _input_seq[0] += 1
    seq = _input_seq[0]
    while True:  # answers to earlier, interrupted questions
        try:
            _input_replies.get_nowait()
        except queue.Empty:
            break
    _State.in_user = False
    try:
        _flush_user_streams()
        payload = _fit(
            {
                "type": "input_request",
                "id": _last_cell_id,
                "prompt": _safe_str(prompt),
                "password": bool(password),
                "seq": seq,
                "key": _Request.key,
            }
        )
        _sync_output()
        _send_frame(b"msg", payload)
    finally:
        _State.in_user = True
    return _wait_for_input(seq)


def _wait_for_input(seq):
    while True:  # interruptible: the SIGINT handler raises KeyboardInterrupt here
        try:
            reply = _input_replies.get(timeout=0.25)
        except queue.Empty:
            continue
        if reply.get("seq") != seq:
            continue
        if isinstance(reply.get("error"), str):
            raise StdinNotImplementedError(reply["error"])
        value = reply.get("value")
        value = value if isinstance(value, str) else ""
        if value == "\x04":
            raise EOFError
        return value


def _input(prompt=""):
    return _ask_frontend(prompt, False)


def _getpass(prompt="Password: ", stream=None):
    return _ask_frontend(prompt, True)


builtins.input = _input
_INTERRUPTIBLE.add(_wait_for_input.__code__)


# --------------------------------------------------------------------------------------
# Rich output
# --------------------------------------------------------------------------------------
_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
_PRETTY_TYPES = (list, tuple, dict, set, frozenset)


def _get_method(obj, name):
    try:
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _normalize(mime, value):
    """Make ``value`` JSON-ready for ``mime``, or return None when it cannot be."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        if mime == "application/pdf" or (mime.startswith("image/") and not mime.startswith("image/svg")):
            import base64

            return base64.b64encode(value).decode("ascii")
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        if mime == "application/json" or mime.endswith("+json"):
            try:
                return json.loads(value)
            except ValueError:
                return None
        return value
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        return None
    return value


def _call_repr(obj, name, *args, **kwargs):
    method = _get_method(obj, name)
    if method is None:
        return None
    try:
        return method(*args, **kwargs)
    except Exception as exc:
        _warn("%s.%s() failed: %s: %s\n" % (type(obj).__name__, name, type(exc).__name__, _safe_str(exc)))
        return None


def _safe_str(obj):
    try:
        return str(obj)
    except Exception:
        return "<unprintable %s>" % type(obj).__name__


def _plain(obj):
    try:
        text = repr(obj)
    except Exception as exc:
        _warn("repr() of %s failed: %s: %s\n" % (type(obj).__name__, type(exc).__name__, _safe_str(exc)))
        return object.__repr__(obj)
    if not isinstance(text, str):
        return object.__repr__(obj)
    if 80 < len(text) < 200000 and type(obj) in _PRETTY_TYPES:
        try:
            import pprint

            text = pprint.pformat(obj, width=80, sort_dicts=False)
        except Exception:
            pass
    return text


def _format_bundle(obj, include=None, exclude=None):
    """A Jupyter mime bundle for ``obj``, as IPython's display formatter builds it."""
    data, metadata = {}, {}
    # Classes have _repr_*_ as plain functions; objects that answer every getattr (mocks)
    # are recognised by IPython's canary attribute.
    rich = not isinstance(obj, type)
    if rich:
        try:
            rich = not hasattr(obj, "_ipython_canary_method_should_not_exist_")
        except Exception:
            rich = False
    if rich and _IPy.shell is None and _is_figure(obj):
        return _figure_bundle(obj)  # matplotlib's Figure has no image repr of its own
    if rich:
        bundle = _call_repr(obj, "_repr_mimebundle_", include=include, exclude=exclude)
        if isinstance(bundle, tuple) and len(bundle) == 2:
            bundle, md = bundle
            if isinstance(md, dict):
                metadata.update(md)
        if isinstance(bundle, dict):
            for mime, value in bundle.items():
                value = _normalize(str(mime), value)
                if value is not None:
                    data[str(mime)] = value
        for name, mime in _REPR_METHODS:
            if mime in data:
                continue
            value = _call_repr(obj, name)
            if value is None:
                continue
            if isinstance(value, tuple) and len(value) == 2:
                value, md = value
                if isinstance(md, dict):
                    metadata[mime] = md
            value = _normalize(mime, value)
            if value is not None:
                data[mime] = value
    if not isinstance(data.get("text/plain"), str):
        data["text/plain"] = _plain(obj)
    if include:
        data = {k: v for k, v in data.items() if k in include or k == "text/plain"}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude or k == "text/plain"}
    return data, metadata


def _emit(kind, data, metadata, transient=None):
    """Send a display frame (``display``, ``update_display`` or ``clear_output``) after everything
    printed before it (ordering is kept)."""
    _flush_user_streams()
    if os.getpid() != _AGENT_PID:  # in a fork()ed child: plain text on stdout
        if kind == "clear_output":
            return
        try:
            sys.stdout.write(str(data.get("text/plain", "")) + "\n")
        except Exception:
            pass
        return
    on_main = threading.get_ident() == _MAIN_TID
    previous = _State.in_user
    if on_main:
        _State.in_user = False  # an interrupt now is postponed (the watchdog re-sends it)
    try:
        body = {"type": kind, "id": _last_cell_id}
        if kind == "clear_output":
            body["wait"] = bool(data)
        else:
            body.update(data=data, metadata=metadata)
            if transient:
                body["transient"] = transient
        payload = _fit(body)
        _sync_output()
        _send_frame(b"msg", payload)
    finally:
        if on_main:
            _State.in_user = previous


def display(*objs, include=None, exclude=None, metadata=None, raw=False, **kwargs):
    """Show objects as rich output, like IPython's ``display()``.

    Each object is rendered with ``_repr_mimebundle_`` / ``_repr_html_`` / ``_repr_png_`` /
    ... and ``repr()``. With ``raw=True`` each object is already a mime bundle (a dict such
    as ``{'text/html': '<b>hi</b>'}``).
    """
    for obj in objs:
        if raw:
            if not isinstance(obj, dict):
                raise TypeError("display(raw=True) takes mime bundles (dicts), not %s" % type(obj).__name__)
            data = {}
            for mime, value in obj.items():
                value = _normalize(str(mime), value)
                if value is not None:
                    data[str(mime)] = value
            md = {}
        else:
            data, md = _format_bundle(obj, include, exclude)
        if metadata:
            md = dict(md)
            md.update(metadata)
        _emit("display", data, md)


# --------------------------------------------------------------------------------------
# IPython mode: cells run through IPython's InteractiveShell when the sandbox has IPython
# --------------------------------------------------------------------------------------
class _IPy:
    """IPython mode's state. ``shell`` is the InteractiveShell once the kernel's ``setup`` asked
    for IPython ('auto' or 'on') and it could be imported; ``mode`` and ``why`` say what was
    asked and, without a shell, why not (told by the messages of plain mode)."""

    shell = None
    mode = "off"  # what the kernel asked for; 'off' until setup arrives (an old kernel)
    why = ""  # why there is no shell
    key = None  # the running cell's key (the displayhook sends its result)
    error = None  # the cell's error as IPython formatted it
    result_sent = False


def _setup(msg):
    """The kernel's ``setup`` (sent once, right after ``ready``): start IPython mode now, before
    the first cell arrives, so importing IPython overlaps the kernel's own start."""
    mode = msg.get("ipython")
    _IPy.mode = mode if mode in ("auto", "on", "off") else "auto"
    if _IPy.mode == "off":
        _IPy.why = "IPython mode is off (Sandbox.ipython = 'off')"
    else:
        try:
            _IPy.shell = _start_ipython()
        except Exception as exc:  # ImportError, or an IPython that fails to start
            _IPy.why = "the sandbox's Python (%s) cannot %s IPython: %s: %s" % (
                sys.executable,
                "import" if isinstance(exc, ImportError) else "start",
                type(exc).__name__,
                _safe_str(exc),
            )
            _log(_IPy.why)
    _install_plot_backend()


def _transient(value):
    """A display's ``transient`` as the protocol carries it: only a string ``display_id``."""
    if isinstance(value, dict) and isinstance(value.get("display_id"), str):
        return {"display_id": value["display_id"][:1000]}
    return None


def _bundle_json(data):
    """An IPython format dict, JSON-ready (PNG bytes become base64, as ipykernel's json_clean)."""
    out = {}
    for mime, value in (data or {}).items():
        value = _normalize(str(mime), value)
        if value is not None:
            out[str(mime)] = value
    return out


def _start_ipython():
    """Build the InteractiveShell whose display publisher, display hook, traceback and pager
    speak this agent's frames (what ipykernel's ZMQInteractiveShell does over ZeroMQ)."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            transient = _transient(transient)
            if update and transient is None:
                return  # update_display needs a display_id (IPython raises before this)
            _emit("update_display" if update else "display", _bundle_json(data), metadata or {}, transient)

        def clear_output(self, wait=False):
            _emit("clear_output", wait, None)

    class Hook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            if _IPy.result_sent or os.getpid() != _AGENT_PID or _IPy.key is None:
                return  # one result per cell (a second displayhook call shows as a display)
            _IPy.result_sent = True
            data = _bundle_json(format_dict)
            _flush_user_streams()
            _send_msg({"type": "result", "id": _last_cell_id, "data": data, "metadata": md_dict or {}, "key": _IPy.key})

        def finish_displayhook(self):
            _flush_user_streams()

    class Shell(InteractiveShell):
        # `!cmd` runs through subprocess with the cell's own stdout/stderr pipes (IPython's
        # default pipes it through pexpect and a pseudo-terminal).
        system = InteractiveShell.system_raw

        def _showtraceback(self, etype, evalue, stb):
            _flush_user_streams()
            content = {
                "ename": getattr(etype, "__name__", "Error"),
                "evalue": _safe_str(evalue),
                "traceback": [line if isinstance(line, str) else _safe_str(line) for line in stb],
            }
            if _IPy.error is None:
                _IPy.error = content
            else:  # a second error in one cell (a post_execute hook, say): shown as text
                _warn("\n".join(content["traceback"]) + "\n")

        def show_usage_error(self, exc):
            text = _safe_str(exc)
            self._showtraceback(type(exc), text, ["UsageError: " + text])

        def enable_gui(self, gui=None):
            if gui not in (None, "inline"):
                raise RuntimeError(
                    "a sandbox has no display for GUI event loops (%%gui %s); use %%matplotlib inline" % gui
                )

    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # no history file in the sandbox's HOME
    shell = Shell.instance(
        config=config, user_module=_user_module, user_ns=_user_ns, displayhook_class=Hook, display_pub_class=Publisher
    )
    from IPython.core import page

    shell.set_hook("show_in_pager", page.as_hook(_pager), priority=90)
    _register_kernel_magics(shell)
    return shell


def _pager(data, start=0, screen_lines=0, pager_cmd=None):
    """`obj?` help and other paged text: shown in the cell (ipykernel sends it as a pager
    payload; the text is the same)."""
    text = data.get("text/plain", "") if isinstance(data, dict) else data
    lines = str(text).split("\n")[max(0, int(start or 0)) :]
    sys.stdout.write("\n".join(lines).rstrip("\n") + "\n")


def _register_kernel_magics(shell):
    """%timeout and %sandbox belong to the kernel, which takes them off the top of a cell; one
    further down reaches the sandbox, and says where it must go."""

    def kernel_magic(name):
        def magic(line=""):
            from IPython.core.error import UsageError

            raise UsageError(
                "%%%s is handled by the Sandbox kernel, not in the sandbox: put it on the first "
                "lines of a cell (before any code)" % name
            )

        return magic

    for name in ("timeout", "sandbox"):
        shell.register_magic_function(kernel_magic(name), "line", name)


def _run_ipython_cell(code, cell, key, count):
    """Run one cell through the shell; (status, error content or None). The result, displays
    and output have been sent while it ran."""
    shell = _IPy.shell
    _IPy.key, _IPy.error, _IPy.result_sent = key, None, False
    store = count is not None
    if store:
        shell.execution_count = count  # the kernel's count: In[n], Out[n], _n
        history = shell.history_manager  # In[n] is a list: cells the kernel ran itself (%timeout) are ''
        for inputs in (history.input_hist_parsed, history.input_hist_raw):
            inputs.extend([""] * (count - len(inputs)))
    _State.in_user = True
    try:
        result = shell.run_cell(code, store_history=store)
    finally:
        _State.in_user = False
        _IPy.key = None
    error = _IPy.error
    failed = result.error_before_exec or result.error_in_exec
    # An interrupted `!cmd` is no error to IPython (the command ends with status 130): still an
    # interrupted cell here, so the kernel reports it like any other.
    interrupted = isinstance(failed, KeyboardInterrupt) or (cell.interrupt_requested and error is None)
    if interrupted:
        if error is None:
            error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ["KeyboardInterrupt"]}
        return "interrupted", error
    if error is not None or failed is not None:
        if error is None:
            error = {"ename": type(failed).__name__, "evalue": _safe_str(failed), "traceback": []}
        return "error", error
    return "ok", None


# Plain mode shows figures inline anyway: notebooks written for ipykernel start with this line.
_INLINE_MAGIC = re.compile(r"^[ \t]*%matplotlib[ \t]+inline[ \t]*$", re.M)
_MAGIC_LINE = re.compile(r"^[ \t]*(%%?[A-Za-z_]\w*|!|[A-Za-z_][\w.]*\?\??[ \t]*$|\?\??[A-Za-z_])", re.M)


def _ipython_syntax_error(code):
    """A clear error for IPython syntax in plain mode (``%pip``, ``!ls``, ``obj?``), or None when
    the cell has none: what is not available, why, and what is."""
    match = _MAGIC_LINE.search(code)
    if match is None:
        return None
    token = match.group(1).strip()
    why = _IPy.why or "the sandbox's Python (%s) has no IPython" % sys.executable
    if token.startswith("!"):
        what = "shell commands (!cmd) are IPython syntax"
        instead = "use subprocess.run(..., shell=True) or os.system(), or a Sandbox (Bash) kernel"
    elif token.endswith("?") or token.startswith("?"):
        what = "help with ? is IPython syntax"
        instead = "use help(obj), or Shift-Tab in the notebook"
    elif token.lstrip("%") in ("pip", "conda", "mamba"):
        what = "%s is an IPython magic" % token
        instead = (
            "packages come from the sandbox's environment: install them where the kernel's Python finds "
            "them (or, on Kubernetes, use an image that has them: KubernetesSandbox.images)"
        )
    else:
        what = "%s is an IPython magic" % token
        instead = (
            "set Sandbox.ipython = 'auto' for magics"
            if _IPy.mode == "off"
            else "install IPython in the sandbox's environment for magics"
        )
    line = code.count("\n", 0, match.start()) + 1
    text = (
        "line %d: %s, and %s. Available here: Python, display(), and the kernel's own %%timeout and "
        "%%sandbox (on the first lines of a cell); %s." % (line, what, why, instead)
    )
    return {"ename": "UsageError", "evalue": text, "traceback": ["UsageError: " + text]}


# --------------------------------------------------------------------------------------
# Plots: matplotlib figures become display frames, with no set-up by the user
# --------------------------------------------------------------------------------------
_PLOT_BACKEND = "sandbox_kernel_inline"  # a module that only this file provides (see _BackendFinder)


def _install_plot_backend():
    """Choose matplotlib's backend before user code can import matplotlib: IPython mode uses
    matplotlib-inline (ipykernel's own: %matplotlib inline, %config InlineBackend, figures at the
    end of the cell); plain mode, or IPython without it, uses this file's inline backend. A
    backend the user chose (MPLBACKEND, matplotlib.use()) wins."""
    import importlib.util

    if os.environ.get("MPLBACKEND"):
        return
    try:
        if importlib.util.find_spec("matplotlib") is None:  # no matplotlib: nothing to set up
            return
    except (ImportError, ValueError):
        return
    if _IPy.shell is not None:
        try:
            if importlib.util.find_spec("matplotlib_inline") is not None:
                os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
                return
        except (ImportError, ValueError):
            pass
    sys.meta_path.append(_BackendFinder)
    os.environ["MPLBACKEND"] = "module://" + _PLOT_BACKEND


class _BackendFinder:
    """Imports ``sandbox_kernel_inline`` (the MPLBACKEND above) from this file: matplotlib reads a
    backend module's namespace whole, so the module is built when matplotlib imports it."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != _PLOT_BACKEND:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(name, cls)

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        class FigureCanvas(FigureCanvasAgg):
            manager_class = FigureManagerBase

        module.__dict__.update(
            FigureCanvas=FigureCanvas,
            FigureManager=FigureManagerBase,
            show=_show_figures,
            __doc__="Sandbox kernel's inline backend: figures are sent to the notebook as images.",
        )


def _show_figures(close=None, block=None):
    """plt.show(): every open figure, as an image, then closed (as matplotlib-inline does)."""
    _flush_figures()


def _flush_figures(skip=None):
    """Display and close the open pyplot figures (at plt.show() and at the end of a cell, plain mode)."""
    if "matplotlib.pyplot" not in sys.modules or _PLOT_BACKEND not in sys.modules:
        return
    import matplotlib.pyplot as plt
    from matplotlib._pylab_helpers import Gcf

    for manager in Gcf.get_all_fig_managers():
        figure = manager.canvas.figure
        if figure is not skip:
            data, md = _figure_bundle(figure)
            if data:
                _emit("display", data, md)
    plt.close("all")


def _figure_format():
    """The image format of inline figures: matplotlib's savefig.format when it is svg or
    jpeg (plain mode's stand-in for %config InlineBackend.figure_formats), else png."""
    import matplotlib

    fmt = str(matplotlib.rcParams.get("savefig.format", "png")).lower()
    return {"svg": "svg", "jpg": "jpeg", "jpeg": "jpeg"}.get(fmt, "png")


def _figure_bundle(figure):
    """A matplotlib Figure as a mime bundle: its image (with the size in metadata) and text."""
    import base64
    import struct

    fmt = _figure_format()
    buf = io.BytesIO()
    try:
        figure.savefig(buf, format=fmt, bbox_inches="tight")
    except Exception as exc:
        _warn("the figure could not be drawn: %s: %s\n" % (type(exc).__name__, _safe_str(exc)))
        return {}, {}
    raw = buf.getvalue()
    data = {"text/plain": _plain(figure)}
    if fmt == "svg":
        data["image/svg+xml"] = raw.decode("utf-8", "replace")
        return data, {}
    mime = "image/" + fmt
    data[mime] = base64.b64encode(raw).decode("ascii")
    md = {}
    if fmt == "png" and raw[12:16] == b"IHDR":
        width, height = struct.unpack(">II", raw[16:24])
        md[mime] = {"width": width, "height": height}
    return data, md


def _is_figure(obj):
    figure_module = sys.modules.get("matplotlib.figure")
    return figure_module is not None and isinstance(obj, figure_module.Figure)


# --------------------------------------------------------------------------------------
# Running cells
# --------------------------------------------------------------------------------------
_cell_count = 0
_future_flags = 0
_loop = None


def _compile_cell(code, filename):
    """Compile a cell: (body code or None, last-expression code or None, silent)."""
    global _future_flags
    flags = _future_flags | _TOP_LEVEL_AWAIT
    tree = compile(code, filename, "exec", flags | ast.PyCF_ONLY_AST, dont_inherit=True)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
    body = None
    if tree.body:
        body = compile(tree, filename, "exec", flags, dont_inherit=True)
        _future_flags |= body.co_flags & _FUTURE_MASK  # `from __future__` lasts, as in IPython
        flags = _future_flags | _TOP_LEVEL_AWAIT
    expr = silent = None
    if last is not None:
        expr = compile(ast.Expression(body=last.value), filename, "eval", flags, dont_inherit=True)
        silent = _ends_with_semicolon(code, last)
    return body, expr, silent


def _source_lines(code):
    """Lines as the compiler numbers them (str.splitlines() would also split at \f etc.)."""
    return code.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _ends_with_semicolon(code, node):
    """`x;` as the last line hides the result, as in IPython."""
    try:
        line = _source_lines(code)[node.end_lineno - 1].encode("utf-8")
        return line[node.end_col_offset :].decode("utf-8", "replace").lstrip().startswith(";")
    except (AttributeError, IndexError, TypeError):
        return False


def _run_code(code):
    if code.co_flags & _CO_COROUTINE:  # top-level await
        return _run_async(eval(code, _user_ns))
    return eval(code, _user_ns)


def _run_async(coro):
    """Run a top-level-await cell in one event loop that lives as long as the agent."""
    global _loop
    if _loop is None or _loop.is_closed():
        import asyncio

        _loop = asyncio.new_event_loop()
    task = _loop.create_task(coro)
    try:
        return _loop.run_until_complete(task)
    except KeyboardInterrupt:
        task.cancel()
        if not _in_cell(sys.exc_info()[2]):
            raise KeyboardInterrupt from None  # its traceback is only event-loop internals
        raise
    except BaseException:
        task.cancel()
        raise


def _in_cell(tb):
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<cell "):
            return True
        tb = tb.tb_next
    return False


def _user_traceback(tb):
    """Drop the agent's (and asyncio's) frames in front of the first frame of a cell."""
    t = tb
    while t is not None:
        if t.tb_frame.f_code.co_filename.startswith("<cell "):
            return t
        t = t.tb_next
    while tb is not None and tb.tb_frame.f_code.co_filename == _AGENT_FILE:
        tb = tb.tb_next
    return tb


def _drop_agent_frames(report, seen):
    """Hide the agent's own frames (e.g. of input() or display()) in a traceback."""
    if report is None or id(report) in seen:
        return
    seen.add(id(report))
    report.stack[:] = [frame for frame in report.stack if frame.filename != _AGENT_FILE]
    _drop_agent_frames(report.__cause__, seen)
    _drop_agent_frames(report.__context__, seen)


def _error_content(exc):
    ename = type(exc).__name__
    evalue = _safe_str(exc)
    try:
        report = traceback.TracebackException(type(exc), exc, _user_traceback(exc.__traceback__))
        _drop_agent_frames(report, set())
        lines = "".join(report.format()).rstrip("\n").split("\n")
    except BaseException:  # e.g. MemoryError while formatting
        lines = ["%s: %s" % (ename, evalue) if evalue else ename]
    return {"ename": ename, "evalue": evalue, "traceback": lines}


def _prepare_cell(limit):
    _repair_streams()
    try:
        if signal.getsignal(signal.SIGINT) is not _sigint_handler:
            signal.signal(signal.SIGINT, _sigint_handler)  # the user may have replaced it
    except (ValueError, OSError, TypeError):
        pass
    if _IPy.shell is None:
        _user_ns.setdefault("display", display)  # IPython mode has IPython's own (a builtin)
    with _budget_lock:
        _budget.update(limit=limit, sent=0, truncated=0)


class _CellDone(Exception):
    """The cell has its status and reply already (IPython mode, a plain-mode UsageError)."""


def _execute(msg):
    global _cell_count, _current_cell, _last_cell_id, _queued_executes, _pending_interrupt
    code = msg.get("code")
    if not isinstance(code, str):
        code = ""
    try:
        limit = max(0, int(msg.get("output_limit") or 0))
    except (TypeError, ValueError):
        limit = 0
    _prepare_cell(limit)
    # Named after the frontend's execution count when the kernel sends it (magics and silent
    # requests never reach the agent, so its own count would drift from the prompt's [N]).
    number = msg.get("cell")
    count = None  # IPython mode: the In[N] to store the cell as (None: not stored in history)
    if type(number) is int and 0 < number < 1 << 53:
        _cell_count = count = number
    else:
        _cell_count += 1
    filename = "<cell %d>" % _cell_count
    # Registered so tracebacks and inspect.getsource() can quote the cell's lines.
    linecache.cache[filename] = (len(code), None, [line + "\n" for line in _source_lines(code)], filename)
    cell = _Cell(msg.get("id"))
    key = msg.pop("key", None)  # the supervisor's key for this request (see _Supervisor.forward_request)
    with _cell_lock:
        _queued_executes = max(0, _queued_executes - 1)
        _current_cell = cell
        _last_cell_id = cell.id
        cell.running = True
        if _pending_interrupt:  # interrupted before it even started
            _pending_interrupt = False
            cell.interrupt_requested = True
    status, reply, value = "ok", None, None
    try:
        if cell.interrupt_requested:
            raise KeyboardInterrupt
        if _IPy.shell is not None:
            status, reply = _run_ipython_cell(code, cell, key, count)
            raise _CellDone
        if _IPy.mode == "on":
            raise RuntimeError("Sandbox.ipython = 'on', but %s" % _IPy.why)
        try:
            body, expr, silent = _compile_cell(_INLINE_MAGIC.sub("", code), filename)
        except SyntaxError:
            reply = _ipython_syntax_error(code)
            if reply is None:
                raise
            status = "error"
            raise _CellDone from None
        _State.in_user = True
        try:
            if body is not None:
                _run_code(body)
            if expr is not None:
                value = _run_code(expr)
            if cell.interrupt_requested and not cell.kbi_delivered:
                raise KeyboardInterrupt  # the SIGINT was swallowed (os.system ignores it)
            if value is not None and not silent and os.getpid() == _AGENT_PID:
                _user_ns["_"] = value
                data, md = _format_bundle(value)
                reply = {"type": "result", "id": cell.id, "data": data, "metadata": md, "key": key}
        finally:
            _State.in_user = False
    except _CellDone:
        pass
    except KeyboardInterrupt as exc:
        status, reply = "interrupted", _error_content(exc)
    except BaseException as exc:  # SystemExit and MemoryError too: the agent survives
        status, reply = "error", _error_content(exc)
    if _IPy.shell is None and os.getpid() == _AGENT_PID:
        try:
            _flush_figures(skip=value if _is_figure(value) else None)  # the value is the result
        except Exception as exc:
            _warn("showing the cell's figures failed: %s: %s\n" % (type(exc).__name__, _safe_str(exc)))
    if os.getpid() != _AGENT_PID:
        # The cell fork()ed and this is the child arriving at the end of the cell: it must
        # not run the agent's loop too (that would speak the protocol twice).
        if status != "ok":
            _warn("\n".join(reply["traceback"]) + "\n")
        _flush_user_streams()
        os._exit(0 if status == "ok" else 1)
    if status != "ok":
        reply.update(type="error", id=cell.id, key=key)
    # Encode first: shrinking an oversized reply warns on stderr, which belongs to the cell.
    payload = _fit(reply) if reply is not None else None
    _flush_user_streams()
    with _cell_lock:
        cell.running = False
    _sync_output()
    if payload is not None:
        _send_frame(b"msg", payload)
    with _budget_lock:
        truncated = _budget["truncated"]
    _send_msg({"type": "done", "id": cell.id, "status": status, "truncated": truncated, "key": key})
    _background_pids.clear()
    _background_pids.update(_descendant_pids())


# --------------------------------------------------------------------------------------
# complete / inspect / is_complete
# --------------------------------------------------------------------------------------
_IMPORT_RE = re.compile(r"^\s*(?:from|import)\s+(\w*)$")
_TOKEN_RE = re.compile(r"[\w.]*$")


def _complete(code, cursor):
    if _IPy.shell is not None:  # IPython's completer (magics, paths, jedi when installed), as ipykernel
        from IPython.core.completer import provisionalcompleter, rectify_completions

        with provisionalcompleter():
            found = list(rectify_completions(code, _IPy.shell.Completer.completions(code, cursor)))
        start = found[0].start if found else cursor
        # Matches cover the whole dotted name before the cursor ('str.isdigit', not 'isdigit'),
        # as in plain mode: one answer whichever mode runs.
        token_start = cursor - len(_TOKEN_RE.search(code[:cursor]).group())
        lead = code[token_start:start] if token_start < start else ""
        matches = []
        for completion in found:
            text = lead + completion.text
            if text not in matches:
                matches.append(text)
        return matches, token_start if lead else start
    before = code[:cursor]
    line = before[before.rfind("\n") + 1 :]
    m = _IMPORT_RE.match(line)
    if m:
        prefix = m.group(1)
        import pkgutil

        names = set(sys.builtin_module_names)
        try:
            names.update(info.name for info in pkgutil.iter_modules())
        except Exception:
            pass
        matches = sorted(n for n in names if n.startswith(prefix) and (prefix.startswith("_") or not n.startswith("_")))
        return matches, cursor - len(prefix)
    text = _TOKEN_RE.search(before).group()
    if text[:1].isdigit() or text.startswith("."):
        return [], cursor
    import rlcompleter

    completer = rlcompleter.Completer(_user_ns)
    try:
        raw = completer.attr_matches(text) if "." in text else completer.global_matches(text)
    except Exception:
        raw = []
    seen, matches = set(), []
    for match in raw:
        # rlcompleter adds "(" or "()" to callables, " " or ":" to keywords
        match = match[:-2] if match.endswith("()") else match.rstrip("(: ")
        if match not in seen:
            seen.add(match)
            matches.append(match)
    matches.sort(key=lambda s: (s.rsplit(".", 1)[-1].startswith("_"), s.lower(), s))
    return matches, cursor - len(text)


_NAME_RE = re.compile(r"(?:(?!\d)\w+\.)*(?!\d)\w+$")


def _name_at(code, cursor):
    """The dotted name to inspect: the callable whose call contains the cursor, else the
    name under/just before the cursor (IPython does the same)."""
    before = code[:cursor]
    depth = 0
    for i in range(len(before) - 1, max(-1, len(before) - 20000), -1):
        c = before[i]
        if c in ")]}":
            depth += 1
        elif c in "([{":
            if depth:
                depth -= 1
                continue
            if c == "(":
                m = _NAME_RE.search(before[:i].rstrip())
                if m:
                    return m.group()
            break
    left = re.search(r"[\w.]*$", before).group()
    right = re.match(r"\w*", code[cursor:]).group()
    name = (left + right).strip(".")
    return name if _NAME_RE.match(name) else ""


def _resolve(name):
    parts = name.split(".")
    if parts[0] in _user_ns:
        obj = _user_ns[parts[0]]
    elif hasattr(builtins, parts[0]):
        obj = getattr(builtins, parts[0])
    else:
        raise LookupError(name)
    for part in parts[1:]:
        obj = getattr(obj, part)
    return obj


def _describe(name, obj, detail):
    import inspect

    lines = []
    if callable(obj):
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            label = "Init signature:" if inspect.isclass(obj) else "Signature:"
            lines.append("%s %s%s" % (label, name, sig))
    lines.append("Type:      %s" % type(obj).__name__)
    if not (callable(obj) or inspect.ismodule(obj)):
        text = _plain(obj)
        if len(text) > 1000:
            text = text[:1000] + "..."
        lines.append("String form: %s" % text)
    if detail:
        try:
            lines.append("File:      %s" % inspect.getfile(obj))
        except (TypeError, OSError):
            pass
    doc = inspect.getdoc(obj)
    lines.append("Docstring: %s" % (doc if doc else "<no docstring>"))
    if detail:
        try:
            lines.append("Source:\n%s" % inspect.getsource(obj).rstrip("\n"))
        except (TypeError, OSError, IndentationError):
            pass
    return "\n".join(lines)


def _inspect(code, cursor, detail):
    if _IPy.shell is not None:  # as ipykernel: IPython's inspector, the same text as `obj?`
        from IPython.utils.tokenutil import token_at_cursor

        name = token_at_cursor(code, cursor)
        try:
            bundle = _IPy.shell.object_inspect_mime(name, detail_level=detail)
        except KeyError:
            return False, {}
        return True, _bundle_json(bundle)
    name = _name_at(code, cursor)
    if not name:
        return False, {}
    try:
        obj = _resolve(name)
    except Exception:
        return False, {}
    return True, {"text/plain": _describe(name, obj, detail)}


def _is_complete(code):
    """complete / incomplete (with the indent of the next line) / invalid, as a console needs.

    The same answers as IPython's (ipykernel's) check: a block stays open while its last line
    is indented and the code does not end with a newline, so ``for x in y: print(x)`` runs at
    once and an indented block runs after one empty line, as in the Python REPL.
    """
    import codeop
    import tokenize
    import warnings

    if not code.strip():
        return "complete", ""
    if _IPy.shell is not None:  # knows magics, !cmd and obj?
        status, spaces = _IPy.shell.input_transformer_manager.check_complete(code)
        return status, " " * spaces if isinstance(spaces, int) else ""
    lines = [line for line in code.split("\n") if line.strip()]
    last = lines[-1] if lines else ""
    indent = last[: len(last) - len(last.lstrip())]
    if last.endswith("\\"):  # an explicit line continuation
        return "incomplete", indent
    compiler = codeop.CommandCompiler()
    compiler.compiler.flags |= _TOP_LEVEL_AWAIT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = compiler(code, "<input>", "exec")
    except (SyntaxError, OverflowError, ValueError, TypeError, MemoryError, RecursionError):
        return "invalid", ""
    if compiled is None:  # an open bracket, string or block header
        return "incomplete", indent + ("    " if last.rstrip().endswith(":") else "")
    # Complete as it stands: still open only if it ends inside an indented block (its last
    # tokens are DEDENTs) and the user has not pressed Enter on an empty line yet.
    if code.rstrip(" \t\f").endswith("\n"):
        return "complete", ""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code + "\n").readline))
    except (tokenize.TokenError, SyntaxError):
        return "complete", ""
    ending = [t.type for t in tokens if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)][-2:]
    if ending and ending[0] == tokenize.DEDENT:
        return "incomplete", indent
    return "complete", ""


def _cursor(msg, code):
    try:
        pos = int(msg.get("cursor_pos", len(code)))
    except (TypeError, ValueError):
        pos = len(code)
    return max(0, min(pos, len(code)))


def _handle(msg):
    kind = msg.get("type")
    if kind in ("execute", "comm_open", "comm_msg", "comm_close"):
        parent = msg.get("parent")
        _Request.parent = parent if isinstance(parent, str) else None
        _Request.allow_stdin = kind == "execute" and msg.get("allow_stdin") is True
        _Request.key = msg.get("key")
        try:
            if kind == "execute":
                _execute(msg)
            else:
                _run_comm_request(msg)
        finally:
            _Request.allow_stdin = False
            _register_widget_targets()
        return
    if kind == "setup":
        _setup(msg)
        return
    code = msg.get("code")
    if not isinstance(code, str):
        code = ""
    if kind == "complete":
        cursor = _cursor(msg, code)
        try:
            matches, start = _complete(code, cursor)
        except Exception as exc:
            _log("complete failed: %r" % exc)
            matches, start = [], cursor
        _send_msg(
            {
                "type": "complete_reply",
                "id": msg.get("id"),
                "matches": matches,
                "cursor_start": start,
                "cursor_end": cursor,
                "key": msg.get("key"),
            }
        )
    elif kind == "inspect":
        try:
            found, data = _inspect(code, _cursor(msg, code), int(msg.get("detail_level") or 0))
        except Exception as exc:
            _log("inspect failed: %r" % exc)
            found, data = False, {}
        _send_msg({"type": "inspect_reply", "id": msg.get("id"), "found": found, "data": data, "key": msg.get("key")})
    elif kind == "is_complete":
        try:
            status, indent = _is_complete(code)
        except Exception as exc:
            _log("is_complete failed: %r" % exc)
            status, indent = "unknown", ""
        _send_msg(
            {
                "type": "is_complete_reply",
                "id": msg.get("id"),
                "status": status,
                "indent": indent,
                "key": msg.get("key"),
            }
        )


# --------------------------------------------------------------------------------------
# Protocol input
# --------------------------------------------------------------------------------------
_requests = queue.SimpleQueue()  # type: queue.SimpleQueue[dict]


def _reader():
    """Read kernel frames; interrupt/shutdown act at once, the rest go to the main thread."""
    global _queued_executes, _received
    buf = bytearray()
    while True:
        try:
            chunk = os.read(_PROTO_IN, READ_CHUNK)
        except OSError as exc:
            _log("cannot read from the kernel: %s" % exc)
            chunk = b""
        if not chunk:  # the kernel is gone
            _terminate(0)
        buf += chunk
        while True:
            newline = buf.find(b"\n", 0, MAX_HEADER)
            if newline < 0:
                if len(buf) >= MAX_HEADER:
                    _log("protocol error: header too long: %r" % bytes(buf[:MAX_HEADER]))
                    _terminate(2)
                break
            parts = bytes(buf[:newline]).split(b" ")
            valid = len(parts) == 2 and parts[0] in (b"msg", b"out", b"err") and parts[1].isdigit()
            if not valid or int(parts[1]) > MAX_PAYLOAD:
                _log("protocol error: bad header %r" % bytes(buf[:newline]))
                _terminate(2)
            length = int(parts[1])
            end = newline + 1 + length
            if len(buf) < end:
                break
            payload = bytes(buf[newline + 1 : end])
            del buf[:end]
            _received += 1
            if parts[0] != b"msg":
                continue
            try:
                msg = json.loads(payload.decode("utf-8"))
                kind = msg["type"]
            except (ValueError, KeyError, TypeError) as exc:
                _log("ignoring a malformed message: %s" % exc)
                continue
            if kind == "interrupt":
                _on_interrupt()
            elif kind == "resume":
                _resume(msg)
            elif kind == "shutdown":
                _terminate(0)
            elif kind in (
                "execute",
                "complete",
                "inspect",
                "is_complete",
                "setup",
                "comm_open",
                "comm_msg",
                "comm_close",
            ):
                if kind == "execute" or kind.startswith("comm_"):
                    with _cell_lock:
                        _queued_executes += 1
                _requests.put(msg)
            elif kind == "input_reply":
                _input_replies.put(msg)
            else:
                _log("ignoring unknown message type %r" % (kind,))


def _language_version():
    try:
        import platform

        return platform.python_version()
    except Exception:
        return "%d.%d.%d" % sys.version_info[:3]


# --------------------------------------------------------------------------------------
# The supervisor: the only process that holds the protocol stream
# --------------------------------------------------------------------------------------
_SURROGATES = re.compile("[\ud800-\udfff]")
_CELL_STATUSES = ("ok", "error", "interrupted")
_COMM_KINDS = ("comm_open", "comm_msg", "comm_close")
_IS_COMPLETE_STATUSES = ("complete", "incomplete", "invalid", "unknown")


def _clean(value, depth=0):
    """A JSON value with every lone surrogate replaced by U+FFFD (the frame must be UTF-8)."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if depth > 200:
        raise ValueError("too deeply nested")
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v, depth + 1) for k, v in value.items()}
    return value


def _set_dumpable(flag):
    """prctl(PR_SET_DUMPABLE): a process that is not dumpable has /proc/<pid>/fd, /mem, ...
    owned by root, so processes of the same uid cannot open its fds (and pidfd_getfd and
    ptrace are refused too). Returns whether it worked."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, int(flag), 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except Exception:
        return False


def _cgroup_usage(request_id):
    """The ``usage_reply`` (PROTOCOL.md): this sandbox's own cgroup, read-only, v2 or v1."""

    def number(path, scale=1):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text.startswith("usage_usec"):  # cpu.stat's first line
                text = text.split()[1]
            value = int(text)
        except (OSError, ValueError, IndexError):
            return None
        return None if value >= 1 << 62 else value / scale if scale != 1 else value

    root = "/sys/fs/cgroup"
    reply = {"type": "usage_reply", "id": request_id}
    if os.path.exists(root + "/cgroup.controllers"):
        reply.update(
            cgroup=2,
            memory=number(root + "/memory.current"),
            memory_limit=number(root + "/memory.max"),
            memory_peak=number(root + "/memory.peak"),
            cpu_seconds=number(root + "/cpu.stat", 1e6),
        )
    elif os.path.isdir(root + "/memory"):
        m = root + "/memory/memory."
        cpu = next(
            (d for d in ("cpuacct", "cpu,cpuacct", "cpu") if os.path.exists("%s/%s/cpuacct.usage" % (root, d))),
            "cpuacct",
        )
        reply.update(
            cgroup=1,
            memory=number(m + "usage_in_bytes"),
            memory_limit=number(m + "limit_in_bytes"),
            memory_peak=number(m + "max_usage_in_bytes"),
            cpu_seconds=number("%s/%s/cpuacct.usage" % (root, cpu), 1e9),
        )
    return reply


_START_DIR = os.getcwd()  # the sandbox's working directory; the supervisor never changes it
FILE_CHUNK = 512 * 1024  # the most one file_read returns (its base64 fits a frame)


def _file_request(msg, raw=None):
    """``file_write`` / ``file_read`` (PROTOCOL.md), answered by the supervisor with a
    ``file_reply``. Paths are relative to the sandbox's working directory (or absolute); only
    regular files (opened non-blocking, so a FIFO cannot hang the supervisor)."""
    import binascii
    import stat

    reply = {"type": "file_reply", "id": msg.get("id")}
    path, offset = msg.get("path"), msg.get("offset", 0)
    if not isinstance(path, str) or not path or "\0" in path or type(offset) is not int or offset < 0:
        reply["error"] = "malformed request"
        return reply
    full = os.path.join(_START_DIR, path)
    fd = -1
    try:
        if msg.get("type") == "file_write":
            data = raw if raw is not None else binascii.a2b_base64(msg.get("data") or "")  # `bin` or `msg`
            if offset == 0 and os.path.dirname(full):
                os.makedirs(os.path.dirname(full), exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_TRUNC if offset == 0 else 0)
            fd = os.open(full, flags, 0o644)
        else:
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            reply["error"] = "not a regular file"
            return reply
        os.lseek(fd, offset, os.SEEK_SET)
        if msg.get("type") == "file_write":
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            reply["size"] = os.fstat(fd).st_size
        else:
            length = msg.get("length")
            length = min(FILE_CHUNK, length) if type(length) is int and length > 0 else FILE_CHUNK
            chunks, left = [], length
            while left > 0:
                part = os.read(fd, left)
                if not part:
                    break
                chunks.append(part)
                left -= len(part)
            reply["size"] = st.st_size
            reply["data"] = binascii.b2a_base64(b"".join(chunks), newline=False)  # bytes: spliced into the frame
    except OSError as exc:
        reply["error"] = os.strerror(exc.errno) if exc.errno else str(exc)
    except ValueError as exc:
        reply["error"] = "bad data: %s" % exc
    finally:
        if fd >= 0:
            os.close(fd)
    return reply


LIST_BYTES = 1 << 20  # the most a file_list reply holds (names and numbers; the frame's limit is 2 MiB)
LIST_DEPTH = 32


def _file_list(msg):
    """``file_list`` (PROTOCOL.md): the regular files below the working directory, answered by
    the supervisor. Never follows a symlink (lstat only), passes over hidden names (the working
    directory is also HOME on Kubernetes: .cache, .ipython, .local live there), goes at most
    ``LIST_DEPTH`` directories down, and stops at ``max_files`` files, ``max_entries`` names
    looked at or ``LIST_BYTES`` of reply (``truncated`` says which)."""
    import stat

    def bound(value, most):
        return min(value, most) if type(value) is int and value > 0 else most

    max_files = bound(msg.get("max_files"), 100000)
    budget = bound(msg.get("max_entries"), 1000000)
    files, skipped, size, truncated = [], [], 0, False
    stack = [""]
    while stack and not truncated:
        prefix = stack.pop()
        try:
            entries = os.scandir(os.path.join(_START_DIR, prefix) if prefix else _START_DIR)
        except OSError:
            continue  # gone, or not readable: nothing of it is listed
        with entries:
            for entry in entries:
                budget -= 1
                if budget < 0:
                    truncated = "entries"
                    break
                if entry.name.startswith("."):
                    continue
                name = prefix + entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since it was listed
                if stat.S_ISDIR(st.st_mode):
                    if name.count("/") + 1 < LIST_DEPTH:
                        stack.append(name + "/")
                    continue
                size += len(json.dumps(name)) + 48  # at least what it adds to the reply
                if size > LIST_BYTES:
                    truncated = "bytes"
                    break
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:  # sent with U+FFFD: the kernel could not name it back
                    if len(skipped) < 100:
                        skipped.append([name, "name"])
                    continue
                if stat.S_ISREG(st.st_mode):
                    if len(files) >= max_files:
                        truncated = "files"
                        break
                    files.append([name, st.st_size, "%d:%d" % (st.st_mtime_ns, st.st_ino)])
                elif len(skipped) < 100:
                    skipped.append([name, "symlink" if stat.S_ISLNK(st.st_mode) else "special"])
    return {"type": "file_reply", "id": msg.get("id"), "files": files, "skipped": skipped, "truncated": truncated}


def _take_frames(buf, on_frame, kinds=(b"msg", b"out", b"err")):
    """Take whole frames off ``buf`` (frames of ``kinds``); False on a framing error."""
    while True:
        newline = buf.find(b"\n", 0, MAX_HEADER)
        if newline < 0:
            return len(buf) < MAX_HEADER
        parts = bytes(buf[:newline]).split(b" ")
        if not (len(parts) == 2 and parts[0] in kinds and parts[1].isdigit()):
            return False
        length = int(parts[1])
        if length > MAX_PAYLOAD:
            return False
        end = newline + 1 + length
        if len(buf) < end:
            return True
        frame = bytes(buf[:end])
        del buf[:end]
        on_frame(parts[0], frame[newline + 1 :], frame)


def _send_ready():
    _send_msg(
        {
            "type": "ready",
            "language_info": {
                "name": "python",
                "version": _language_version(),
                "mimetype": "text/x-python",
                "file_extension": ".py",
                "pygments_lexer": "ipython3",
                "codemirror_mode": {"name": "ipython", "version": 3},
            },
            "agent": "python",
            "comms": True,  # comm_* requests and input_request (see "Comms and stdin")
            "binary_files": True,  # file_write chunks may come as `bin` frames, raw bytes
            "protocol": PROTOCOL_VERSION,
        }
    )


class _Supervisor:
    """What the supervisor knows of the worker and its requests, and what it does with each
    frame from either side (see ``_supervise``, which runs it)."""

    def __init__(self, worker, to_worker, from_worker):
        self.worker, self.to_worker, self.from_worker = worker, to_worker, from_worker
        self.cell = None  # the running cell: its id, key, and whether it sent a result/error
        self.last_id = None  # the id of the last cell, for displays and comms after it ended
        self.budget = {"limit": 0, "sent": 0, "dropped": 0}  # the running cell's output, in bytes
        self.noted = False  # whether the running cell was told of a message dropped
        self.pending = {}  # key -> (request type, id), for complete/inspect/is_complete
        self.kernel_buf, self.worker_buf, self.to_worker_buf = bytearray(), bytearray(), bytearray()
        self.worker_alive = True
        self.worker_status = None  # the worker's wait status once reaped

    def kill_all(self, code):
        try:
            os.killpg(self.worker, signal.SIGKILL)
        except OSError:
            pass
        _signal_others(signal.SIGKILL, group=False)
        os._exit(code)

    def send(self, body):
        try:
            payload = json.dumps(_clean(body), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (ValueError, TypeError, RecursionError):
            return False
        if len(payload) > MAX_PAYLOAD:
            return False
        _send_frame(b"msg", payload)
        return True

    def output(self, kind, data):
        budget = self.budget
        limit = budget["limit"]
        n = len(data)
        if limit:
            room = max(0, limit - budget["sent"])
            if n > room:
                budget["dropped"] += n - room
                data, n = data[:room], room
        budget["sent"] += n
        if n:
            _send_frame(kind, data)

    def dropped(self, why):
        _log("dropped a message from the worker: %s" % why)
        if not self.noted:
            self.noted = True
            self.output(
                b"err", b"[sandbox] ignored a message written into the agent's private channel (%s)\n" % why.encode()
            )

    # ----------------------------------------------------------------------------------
    # From the kernel
    # ----------------------------------------------------------------------------------
    def on_kernel_frame(self, kind, payload, frame):
        global _received
        _received += 1
        if kind == b"bin":  # a file_write: its JSON line, then the chunk's raw bytes
            head, _, raw = payload.partition(b"\n")
            try:
                msg = json.loads(head.decode("utf-8"))
            except ValueError as exc:
                _log("ignoring a malformed bin frame: %s" % exc)
                return
            if isinstance(msg, dict) and msg.get("type") == "file_write":
                self.answer_file_request(msg, raw)
            return
        if kind != b"msg":
            return
        try:
            msg = json.loads(payload.decode("utf-8"))
            msg["type"]
        except (ValueError, KeyError, TypeError) as exc:
            _log("ignoring a malformed message: %s" % exc)
            return
        self.from_kernel(msg, frame)

    def from_kernel(self, msg, frame):
        kind = msg.get("type")
        if kind in ("interrupt", "input_reply"):
            self.to_worker_buf.extend(frame)
        elif kind == "resume":
            _resume(msg)
        elif kind == "usage":
            self.send(_cgroup_usage(msg.get("id")))
        elif kind in ("file_write", "file_read"):
            self.answer_file_request(msg)
        elif kind == "file_list":
            self.send(_file_list(msg))
        elif kind == "shutdown":
            self.kill_all(0)
        elif kind == "setup":  # no answer: forwarded as it is (the worker checks its fields)
            payload = json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii")
            self.to_worker_buf.extend(b"msg %d\n" % len(payload) + payload)
        elif kind in ("execute", "complete", "inspect", "is_complete") or kind in _COMM_KINDS:
            self.forward_request(msg, kind)
        else:
            _log("ignoring unknown message type %r" % (kind,))

    def answer_file_request(self, msg, raw=None):
        reply = _file_request(msg, raw)
        data = reply.pop("data", None)
        if data is None:
            self.send(reply)
        else:  # base64 needs no escaping: spliced in (json.dumps of it costs more than the read)
            meta = json.dumps(_clean(reply), ensure_ascii=True, separators=(",", ":")).encode("ascii")
            _send_frame(b"msg", meta[:-1] + b',"data":"' + data + b'"}')

    def forward_request(self, msg, kind):
        """Pass a request on to the worker under a new random key, the only one its answers
        may carry."""
        key = os.urandom(16).hex()
        if kind == "execute" or kind in _COMM_KINDS:  # a frontend comm message runs like a cell
            try:
                limit = max(0, int(msg.get("output_limit") or 0))
            except (TypeError, ValueError):
                limit = 0
            self.cell = {"id": msg.get("id"), "key": key, "result": False, "error": False}
            self.last_id = msg.get("id")
            self.budget = {"limit": limit, "sent": 0, "dropped": 0}
            self.noted = False
        else:
            self.pending[key] = (kind, msg.get("id"))
        msg["key"] = key
        payload = json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        self.to_worker_buf.extend(b"msg %d\n" % len(payload) + payload)

    # ----------------------------------------------------------------------------------
    # From the worker: each message checked, and written again from scratch
    # ----------------------------------------------------------------------------------
    def on_worker_frame(self, kind, payload, frame):
        if kind != b"msg":
            self.output(kind, payload)
            return
        try:
            msg = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):
            return self.dropped("not JSON")
        self.from_worker_msg(msg)

    def from_worker_msg(self, msg):
        if not isinstance(msg, dict):
            return self.dropped("not an object")
        kind, cell = msg.get("type"), self.cell
        if kind in _COMM_KINDS:  # at any time, like display: a widget may change between cells
            return self.forward_comm(msg, kind, cell)
        if kind == "input_request":
            return self.forward_input_request(msg, cell)
        if kind in ("display", "update_display"):
            return self.forward_display(msg, kind, cell)
        if kind == "clear_output":
            cell_id = cell["id"] if cell else self.last_id
            self.send({"type": "clear_output", "id": cell_id, "wait": msg.get("wait") is True})
            return
        if kind in ("result", "error", "done"):
            if cell is None or msg.get("key") != cell["key"]:
                return self.dropped("%s without this cell's key" % kind)
            if kind == "result":
                self.forward_result(msg, cell)
            elif kind == "error":
                self.forward_error(msg, cell)
            else:
                self.forward_done(msg, cell)
            return
        if kind in ("complete_reply", "inspect_reply", "is_complete_reply"):
            return self.forward_reply(msg, kind)
        self.dropped("type %r is not the worker's to send" % (kind,))

    def forward_comm(self, msg, kind, cell):
        comm_id, data, md, buffers = (
            msg.get("comm_id"),
            msg.get("data", {}),
            msg.get("metadata", {}),
            msg.get("buffers", []),
        )
        if not (
            isinstance(comm_id, str)
            and isinstance(data, dict)
            and isinstance(md, dict)
            and isinstance(buffers, list)
            and all(isinstance(b, str) for b in buffers)
        ):
            return self.dropped("malformed %s" % kind)
        body = {
            "type": kind,
            "id": cell["id"] if cell else self.last_id,
            "comm_id": comm_id,
            "data": data,
            "metadata": md,
            "buffers": buffers,
        }
        if kind == "comm_open":
            if not isinstance(msg.get("target_name"), str):
                return self.dropped("malformed comm_open")
            body["target_name"] = msg["target_name"]
        if not self.send(body):
            self.dropped("%s cannot be encoded" % kind)

    def forward_input_request(self, msg, cell):
        prompt, seq = msg.get("prompt"), msg.get("seq")
        if cell is None or msg.get("key") != cell["key"] or not isinstance(prompt, str) or type(seq) is not int:
            return self.dropped("input_request without this cell's key")
        self.send(
            {
                "type": "input_request",
                "id": cell["id"],
                "prompt": prompt,
                "password": msg.get("password") is True,
                "seq": seq,
            }
        )

    def forward_display(self, msg, kind, cell):
        data, md, transient = msg.get("data"), msg.get("metadata", {}), msg.get("transient")
        if not isinstance(data, dict) or not isinstance(md, dict):
            return self.dropped("malformed %s" % kind)
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if kind == "update_display" and not isinstance(display_id, str):
            return self.dropped("update_display without a display_id")
        cell_id = cell["id"] if cell else self.last_id
        body = {"type": kind, "id": cell_id, "data": data, "metadata": md}
        if isinstance(display_id, str):
            body["transient"] = {"display_id": display_id[:1000]}
        if not self.send(body):
            self.dropped("%s cannot be encoded" % kind)

    def forward_result(self, msg, cell):
        data, md = msg.get("data"), msg.get("metadata", {})
        if cell["result"] or not isinstance(data, dict) or not isinstance(md, dict):
            return self.dropped("malformed result")
        cell["result"] = True
        self.send({"type": "result", "id": cell["id"], "data": data, "metadata": md})

    def forward_error(self, msg, cell):
        tb = msg.get("traceback")
        tb = [line if isinstance(line, str) else repr(line) for line in tb] if isinstance(tb, list) else []
        ename, evalue = msg.get("ename"), msg.get("evalue")
        if cell["error"] or not isinstance(ename, str) or not isinstance(evalue, str):
            return self.dropped("malformed error")
        cell["error"] = True
        if not self.send({"type": "error", "id": cell["id"], "ename": ename, "evalue": evalue, "traceback": tb}):
            self.send(
                {
                    "type": "error",
                    "id": cell["id"],
                    "ename": ename[:200],
                    "evalue": evalue[:10000],
                    "traceback": [],
                }
            )

    def forward_done(self, msg, cell):
        status, truncated = msg.get("status"), msg.get("truncated")
        if status not in _CELL_STATUSES:
            status = "error"
        if type(truncated) is not int or truncated < 0:
            truncated = 0
        self.cell = None
        self.send(
            {
                "type": "done",
                "id": cell["id"],
                "status": status,
                "truncated": min(truncated + self.budget["dropped"], 1 << 53),
            }
        )

    def forward_reply(self, msg, kind):
        request = self.pending.get(msg.get("key"))
        if request is None or request[0] + "_reply" != kind:
            return self.dropped("%s that was not asked for" % kind)
        del self.pending[msg.get("key")]
        body = {"type": kind, "id": request[1]}
        if kind == "complete_reply":
            matches = msg.get("matches")
            body["matches"] = [m for m in matches if isinstance(m, str)] if isinstance(matches, list) else []
            for name in ("cursor_start", "cursor_end"):
                body[name] = msg.get(name) if type(msg.get(name)) is int else 0
        elif kind == "inspect_reply":
            data = msg.get("data")
            body["found"] = msg.get("found") is True and isinstance(data, dict)
            body["data"] = data if body["found"] else {}
        else:
            status, indent = msg.get("status"), msg.get("indent")
            body["status"] = status if status in _IS_COMPLETE_STATUSES else "unknown"
            body["indent"] = indent if isinstance(indent, str) else ""
        self.send(body)

    # ----------------------------------------------------------------------------------
    # The streams, and the worker's end
    # ----------------------------------------------------------------------------------
    def write_to_worker(self):
        try:
            n = os.write(self.to_worker, self.to_worker_buf[:65536])
            del self.to_worker_buf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.to_worker_buf.clear()

    def read_from_worker(self):
        try:
            chunk = os.read(self.from_worker, READ_CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            self.worker_alive = False
        else:
            self.worker_buf += chunk
            if not _take_frames(self.worker_buf, self.on_worker_frame):
                # Only user code writing garbage into the channel can do that: the frames
                # cannot be told apart any more. End the cell and this sandbox.
                _log("the worker's channel is corrupt: %r" % bytes(self.worker_buf[:64]))
                self.end_corrupt_cell()
                self.kill_all(3)

    def end_corrupt_cell(self):
        cell = self.cell
        if cell is not None:
            why = "user code wrote into the agent's private channel; the sandbox stops"
            self.send(
                {
                    "type": "error",
                    "id": cell["id"],
                    "ename": "SandboxError",
                    "evalue": why,
                    "traceback": ["SandboxError: " + why],
                }
            )
            self.send({"type": "done", "id": cell["id"], "status": "error", "truncated": 0})

    def read_from_kernel(self):
        try:
            chunk = os.read(_PROTO_IN, 1 << 20)  # whole file_write chunks at once
        except OSError as exc:
            _log("cannot read from the kernel: %s" % exc)
            chunk = b""
        if not chunk:
            self.kill_all(0)
        self.kernel_buf += chunk
        if not _take_frames(self.kernel_buf, self.on_kernel_frame, (b"msg", b"out", b"err", b"bin")):
            _log("protocol error: bad header %r" % bytes(self.kernel_buf[:MAX_HEADER]))
            self.kill_all(2)

    def reap(self):
        """Reap the worker, and orphans when we are PID 1 of a container."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if not pid:
                break
            if pid == self.worker:
                self.worker_alive = False
                self.worker_status = status

    def exit_with_worker(self):
        # The worker died (out of memory, os._exit(3), …): end with its status, as the
        # one-process agent did, so the kernel reports why (a signal N as 128 + N, like a
        # shell). Its last output is already forwarded.
        # Its channel may close a moment before it can be reaped; one that stays alive
        # without its channel is broken (user code closed it) and is killed.
        deadline = time.monotonic() + 1.0
        while self.worker_status is None:
            try:
                pid, status = os.waitpid(self.worker, os.WNOHANG)
            except ChildProcessError:
                self.worker_status = 1 << 8
                break
            if pid:
                self.worker_status = status
            elif time.monotonic() > deadline:
                os.killpg(self.worker, signal.SIGKILL)
                deadline = float("inf")
            else:
                time.sleep(0.01)
        code = os.waitstatus_to_exitcode(self.worker_status)
        _log("the worker exited (status %d); exiting" % code)
        self.kill_all(128 - code if code < 0 else code)


def _supervise(worker, to_worker, from_worker):
    """Run the protocol for the worker process (which runs the cells). Never returns.

    Only this process holds the kernel's stream (fd _PROTO_IN/_PROTO_OUT), and it never runs
    user code. Frames from the worker are parsed, checked against the requests this process
    forwarded and written again from scratch (PROTOCOL.md, "What user code can reach")."""
    for fd in (_OUT_R, _OUT_W, _ERR_R, _ERR_W):
        os.close(fd)
    os.dup2(_DEVNULL, 0)
    os.dup2(_DEVNULL, 1)
    if _LOG_FD >= 0:
        os.dup2(_LOG_FD, 2)
    if not _set_dumpable(False):
        _log("warning: cannot make the supervisor non-dumpable; user code could open the protocol stream")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import select

    sup = _Supervisor(worker, to_worker, from_worker)
    signal.signal(signal.SIGTERM, lambda *_: sup.kill_all(0))
    signal.signal(signal.SIGHUP, lambda *_: sup.kill_all(0))
    _send_ready()
    os.set_blocking(to_worker, False)
    while True:
        wlist = [to_worker] if sup.to_worker_buf and sup.worker_alive else []
        rlist = [_PROTO_IN] + ([from_worker] if sup.worker_alive else [])
        try:
            readable, writable, _ = select.select(rlist, wlist, [], 0.5)
        except InterruptedError:
            continue
        if to_worker in writable:
            sup.write_to_worker()
        if from_worker in readable:
            sup.read_from_worker()
        if _PROTO_IN in readable:
            sup.read_from_kernel()
        sup.reap()
        if not sup.worker_alive:
            sup.exit_with_worker()


def main():
    global _PROTO_IN, _PROTO_OUT, _AGENT_PID, _MAIN_TID, REPLAY_BYTES
    to_worker_r, to_worker = _private_pipe()
    from_worker, from_worker_w = _private_pipe()
    pid = os.fork()
    if pid:
        os.close(to_worker_r)
        os.close(from_worker_w)
        _supervise(pid, to_worker, from_worker)
    # The worker: user code runs here. It never holds the kernel's stream, and it leads its
    # own process group (an interrupt signals that group, never the supervisor).
    os.close(to_worker)
    os.close(from_worker)
    os.close(_PROTO_IN)
    os.close(_PROTO_OUT)
    _PROTO_IN, _PROTO_OUT = to_worker_r, from_worker_w
    _AGENT_PID, _MAIN_TID = os.getpid(), threading.get_ident()
    REPLAY_BYTES = 0  # the supervisor keeps the replay buffer
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    signal.signal(signal.SIGINT, _sigint_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    try:
        os.register_at_fork(after_in_child=_after_fork_in_child)
    except AttributeError:
        pass
    sys.meta_path.insert(0, _ImportPatches())  # comm and getpass (see "Comms and stdin")
    for rfd, wfd, kind in ((_OUT_R, _OUT_W, b"out"), (_ERR_R, _ERR_W, b"err")):
        pump = _Pump(rfd, wfd, kind)
        _pumps.append(pump)
        pump.thread = _start_thread(pump.run, "pump-" + kind.decode())
    _start_thread(_reader, "reader")
    while True:
        msg = _requests.get()
        key = msg.get("key")
        try:
            _handle(msg)
        except BaseException as exc:  # a bug in the agent: report it, keep serving
            _log("internal error: %s" % "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            if msg.get("type") == "execute":
                with _cell_lock:
                    if _current_cell is not None:
                        _current_cell.running = False
                error = {"ename": "AgentError", "evalue": _safe_str(exc), "traceback": []}
                _send_msg(dict(error, type="error", id=msg.get("id"), key=key))
                _send_msg({"type": "done", "id": msg.get("id"), "status": "error", "truncated": 0, "key": key})


def _after_fork_in_child():
    # A child made by os.fork()/multiprocessing must not hold the protocol streams.
    for fd in (_PROTO_IN, _PROTO_OUT):
        try:
            os.close(fd)
        except OSError:
            pass


if __name__ == "__main__":
    main()
