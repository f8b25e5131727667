"""The one driver of the three agents as plain subprocesses (no sandbox), for the agent, resume,
usage and protocol-forgery tests: :class:`Agent` speaks the framed protocol (PROTOCOL.md) on
the agent's stdin/stdout; :class:`Cell` is what one ``execute`` produced. ``spawn`` and ``stop``
are the process underneath, also used on their own where a test needs just the pipes.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sandbox_kernel.protocol import FrameDecoder, Message, Output, encode_message

AGENTS = Path(__file__).resolve().parents[1] / "sandbox_kernel" / "agents"

COMMANDS: dict[str, list[str]] = {
    "python": [sys.executable, str(AGENTS / "python_agent.py")],
    "node": [shutil.which("node") or "/usr/bin/node", str(AGENTS / "node_agent.js")],
    "bash": [shutil.which("bash") or "/bin/bash", str(AGENTS / "bash_agent.sh")],
}

NOBODY = 65534

# Cells that print the numbers 0 .. n-1, one per line, optionally pausing ~2 ms after each.
COUNT: dict[str, Callable[[int, bool], str]] = {
    "python": lambda n, slow: (
        "import time\nfor i in range(%d):\n    print(i, flush=True)\n    %s"
        % (n, "time.sleep(0.002)" if slow else "pass")
    ),
    "node": lambda n, slow: (
        "for (let i = 0; i < %d; i++) { console.log(i); %s}"
        % (n, "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2); " if slow else "")
    ),
    "bash": lambda n, slow: "for ((i = 0; i < %d; i++)); do echo $i; %sdone" % (n, "sleep 0.002; " if slow else ""),
}


def numbers(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(n))


def spawn(
    language: str,
    workdir: Path,
    replay_bytes: int | None = None,
    *,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    ignore_sigint: bool = False,
) -> subprocess.Popen[bytes]:
    """Start an agent as a plain subprocess: stdin/stdout are the protocol pipes, stderr goes to
    ``workdir/agent.log``, the environment is what a sandbox gives it (PATH, HOME, LANG, and
    ``env`` on top). ``command`` replaces :data:`COMMANDS`' (a wrapper, another interpreter)."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8", **(env or {})}
    if replay_bytes is not None:
        full_env["SANDBOX_AGENT_REPLAY_BYTES"] = str(replay_bytes)
    # ipykernel runs with SIGINT ignored and its children inherit that; an agent must cope.
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    with open(workdir / "agent.log", "wb") as log:
        return subprocess.Popen(
            list(command or COMMANDS[language]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=workdir,
            env=full_env,
            preexec_fn=preexec,
        )


def private_dirs(pid: int) -> set[Path]:
    """The Bash agent's private FIFO directory (``.skbash.*``), found through its open files.

    In a sandbox it lives on the sandbox's own /dev/shm or /tmp and goes with it; a bare agent
    that is killed leaves it on the host's, so tests remove it (see :func:`stop`)."""
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.parent.name.startswith(".skbash."):
                found.add(target.parent)
    except OSError:
        pass
    return found


def stop(proc: subprocess.Popen[bytes], leftovers: set[Path] | None = None) -> None:
    """Ask the agent to shut down; kill it if it has not within 5 s; remove ``leftovers`` (by
    default its :func:`private_dirs`, if it still runs)."""
    leftovers = private_dirs(proc.pid) if leftovers is None else leftovers
    if proc.poll() is None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(encode_message({"type": "shutdown"}))
            proc.stdin.flush()
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for directory in leftovers:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Cell:
    """Everything one ``execute`` produced, in arrival order."""

    id: str = ""
    frames: list[tuple[float, Any]] = field(default_factory=list)  # (arrival time, frame)
    sent_at: float = 0.0
    interrupted_at: float | None = None  # when execute(interrupt_after=...) sent the interrupt

    @property
    def done(self) -> dict[str, Any]:
        return self.messages("done")[-1]

    @property
    def status(self) -> str:
        return str(self.done["status"])

    @property
    def elapsed(self) -> float:
        """Seconds from sending the cell to its last frame (its ``done``)."""
        return self.frames[-1][0] - self.sent_at

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [f.body for _, f in self.frames if isinstance(f, Message) and (kind is None or f.type == kind)]

    def output(self, stream: str = "stdout") -> bytes:
        return b"".join(f.data for _, f in self.frames if isinstance(f, Output) and f.stream == stream)

    @property
    def stdout(self) -> str:
        return self.output("stdout").decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.output("stderr").decode("utf-8", "replace")

    @property
    def result(self) -> dict[str, Any] | None:
        """The first ``result`` message."""
        results = self.messages("result")
        return results[0] if results else None

    @property
    def value(self) -> str | None:
        """The text/plain of the last ``result``."""
        results = self.messages("result")
        return results[-1]["data"]["text/plain"] if results else None

    @property
    def error(self) -> dict[str, Any] | None:
        """The first ``error`` message."""
        errors = self.messages("error")
        return errors[0] if errors else None

    @property
    def last_error(self) -> dict[str, Any] | None:
        errors = self.messages("error")
        return errors[-1] if errors else None

    def kinds(self) -> list[str]:
        return [f.type if isinstance(f, Message) else f.stream for _, f in self.frames]

    def flow(self) -> list[str]:
        """kinds() with runs of output frames of one stream merged (a print may be 2 writes)."""
        merged: list[str] = []
        for kind in self.kinds():
            if not (merged and kind in ("stdout", "stderr") and merged[-1] == kind):
                merged.append(kind)
        return merged

    def summary(self) -> str:
        kinds = self.kinds()
        return f"{len(kinds)} frames, last ones {kinds[-5:]}, messages {self.messages()[:3]}"


class Agent:
    """An agent as a subprocess, spoken to over its stdin/stdout.

    A reader thread keeps every byte the agent writes (:attr:`raw`, for the resume tests) and,
    unless ``decode`` is false, decodes it into :attr:`frames` (a queue of ``(arrival time,
    frame)``, ``None`` at the end); clearing :attr:`gate` stops it reading, like a slow kernel.
    The first frame must be ``ready`` (:attr:`ready`). ``as_nobody`` runs it as uid 65534 (as in a
    sandbox: root could open any process's fds); ``strict_ids`` fails a cell on any message
    that does not carry its id."""

    def __init__(
        self,
        language: str,
        workdir: Path,
        *,
        command: Sequence[str] | None = None,
        wrapper: Sequence[str] = (),
        env: dict[str, str] | None = None,
        replay_bytes: int | None = None,
        ignore_sigint: bool = False,
        as_nobody: bool = False,
        decode: bool = True,
        strict_ids: bool = False,
        ready_timeout: float = 15,
    ) -> None:
        self.language = language
        self.workdir = workdir
        self.strict_ids = strict_ids
        argv = [*wrapper, *(command or COMMANDS[language])]
        if as_nobody and os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", *argv]
        self.proc = spawn(language, workdir, replay_bytes, command=argv, env=env, ignore_sigint=ignore_sigint)
        self.raw = bytearray()
        self.raw_lock = threading.Condition()  # held while raw changes; notified on every chunk
        self.frames: queue.Queue[tuple[float, Any]] = queue.Queue()
        self._held: collections.deque[tuple[float, Any]] = (
            collections.deque()
        )  # frames set aside by wait_message(keep=True)
        self.eof = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.sent = 0  # frames written to the agent
        self._counter = 0
        self._decode = decode
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready: dict[str, Any] = {}
        if decode:
            first = self.next_frame(ready_timeout)
            assert isinstance(first, Message) and first.type == "ready", first
            self.ready = first.body
        else:
            frames = list(
                FrameDecoder().feed(self.wait_raw(lambda raw: list(FrameDecoder().feed(bytes(raw))), ready_timeout))
            )
            assert isinstance(frames[0], Message) and frames[0].type == "ready", frames[0]
            self.ready = frames[0].body
        self.private = private_dirs(self.proc.pid)  # removed by close() even if a test kills the agent

    def _read(self) -> None:
        decoder = FrameDecoder()
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            self.gate.wait()
            try:
                data = os.read(fd, 1 << 20)
            except OSError:  # closed under it
                data = b""
            now = time.monotonic()
            with self.raw_lock:
                self.raw += data
                if not data:
                    self.eof.set()
                self.raw_lock.notify_all()
            if not data:
                self.frames.put((now, None))
                return
            if self._decode:
                for frame in decoder.feed(data):  # a ProtocolError fails the test loudly
                    self.frames.put((now, frame))

    # -- low level -----------------------------------------------------------------------------

    def send(self, body: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_message(body))
        self.proc.stdin.flush()
        self.sent += 1

    def new_id(self) -> str:
        self._counter += 1
        return f"req-{self._counter}"

    def next_timed(self, timeout: float) -> tuple[float, Any]:
        """The next frame with its arrival time; TimeoutError if none came, EOFError at the end."""
        if self._held:
            return self._held.popleft()
        try:
            stamp, frame = self.frames.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            raise TimeoutError(f"no frame from the {self.language} agent within {timeout:g} s") from None
        if frame is None:
            self.frames.put((stamp, None))  # stays the end for whoever asks next
            raise EOFError(f"the {self.language} agent closed its stdout (exit status {self.proc.poll()})")
        return stamp, frame

    def next_frame(self, timeout: float = 10) -> Any:
        return self.next_timed(timeout)[1]

    def next_message(
        self, kind: str, timeout: float = 10, request_id: str | None = None, keep: bool = False
    ) -> Message:
        """The next ``kind`` message (with ``request_id``, if given). Frames before it are
        dropped, or with ``keep`` set aside for the next reads (a cell running meanwhile)."""
        deadline = time.monotonic() + timeout
        kept: list[tuple[float, Any]] = []
        try:
            while True:
                stamp, frame = self.next_timed(deadline - time.monotonic())
                if (
                    isinstance(frame, Message)
                    and frame.type == kind
                    and (request_id is None or frame.body.get("id") == request_id)
                ):
                    return frame
                if keep:
                    kept.append((stamp, frame))
        finally:
            self._held.extendleft(reversed(kept))

    def wait_message(
        self, kind: str, timeout: float = 10, request_id: str | None = None, keep: bool = False
    ) -> dict[str, Any]:
        """The body of :meth:`next_message`."""
        return self.next_message(kind, timeout, request_id, keep).body

    def collect(self, seconds: float) -> list[Any]:
        """Frames that arrive in the next ``seconds`` (output between cells)."""
        frames, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames.append(self.next_frame(left))
            except (TimeoutError, EOFError):
                break
        return frames

    def wait_raw(self, ready: Callable[[bytearray], Any], timeout: float = 20.0) -> bytes:
        """Wait until ``ready(raw)`` holds; return a copy of every byte received so far."""
        deadline = time.monotonic() + timeout
        with self.raw_lock:
            while True:
                try:
                    if ready(self.raw):
                        return bytes(self.raw)
                except Exception:  # noqa: BLE001 - an incomplete frame is "not yet"
                    pass
                left = deadline - time.monotonic()
                assert left > 0 and not self.eof.is_set(), f"timed out; got {bytes(self.raw[-300:])!r}"
                self.raw_lock.wait(left)

    # -- requests and cells ---------------------------------------------------------------------

    def request(self, kind: str, timeout: float = 10, keep: bool = False, **fields: Any) -> dict[str, Any]:
        """Send a ``kind`` request and return its ``kind_reply``."""
        request_id = self.new_id()
        self.send({"type": kind, "id": request_id, **fields})
        return self.wait_message(f"{kind}_reply", timeout, request_id, keep)

    def start(self, code: str, output_limit: int = 0, cell_id: str | None = None, **fields: Any) -> Cell:
        """Send a cell; :meth:`finish` collects what it produces."""
        cell = Cell(id=cell_id or self.new_id(), sent_at=time.monotonic())
        self.send({"type": "execute", "id": cell.id, "code": code, "output_limit": output_limit, **fields})
        return cell

    def wait_done(self, cell: Cell, timeout: float = 15, interrupt_after: float | None = None) -> bool:
        """Collect the cell's frames until its ``done`` (True), or ``timeout`` seconds from its
        start (False); ``interrupt_after`` seconds from its start, send an interrupt."""
        interrupt_at = None if interrupt_after is None else cell.sent_at + interrupt_after
        deadline = cell.sent_at + timeout
        while True:
            now = time.monotonic()
            if interrupt_at is not None and now >= interrupt_at:
                self.send({"type": "interrupt"})
                cell.interrupted_at = now
                interrupt_at = None
            wait = deadline - now
            if interrupt_at is not None:
                wait = min(wait, interrupt_at - now)
            if wait <= 0 and interrupt_at is None:
                return False
            try:
                stamp, frame = self.next_timed(max(wait, 0.001))
            except TimeoutError:
                continue
            except EOFError as exc:
                raise AssertionError(f"{exc} during the cell; got {cell.summary()}") from None
            cell.frames.append((stamp, frame))
            if isinstance(frame, Message):
                if self.strict_ids:
                    assert frame.body.get("id") == cell.id, frame
                else:
                    assert frame.body.get("id") == cell.id or frame.type not in ("result", "error", "done"), frame
                if frame.type == "done":
                    return True

    def finish(self, cell: Cell, timeout: float = 15, interrupt_after: float | None = None) -> Cell:
        """:meth:`wait_done`, failing the test when the cell does not end within ``timeout``."""
        if not self.wait_done(cell, timeout, interrupt_after):
            raise AssertionError(f"no done within {timeout:g} s; got {cell.summary()}")
        return cell

    def execute(
        self, code: str, output_limit: int = 0, timeout: float = 15, interrupt_after: float | None = None, **fields: Any
    ) -> Cell:
        """Run one cell to its ``done``; the test fails if it takes over ``timeout`` seconds."""
        return self.finish(self.start(code, output_limit, **fields), timeout, interrupt_after)

    def close(self) -> None:
        stop(self.proc, self.private | private_dirs(self.proc.pid))
        self.gate.set()
        self._reader.join(5)  # the agent has exited: its stdout ends
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
