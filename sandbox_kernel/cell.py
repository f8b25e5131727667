"""One running cell: its state while the session handles its frames, and what they become.

:meth:`~sandbox_kernel.agent_session.AgentSession._execute` sends a cell and then handles what
comes back one frame at a time; :class:`Cell` holds what that needs between frames (its id and
limits, the output tally, the stream output not yet published) and turns the agent's messages
and the ways a cell ends into the session's events (``session.py``). Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import CellTimeout, ProtocolError, SandboxError
from .messages import COMM
from .output_gate import CellOutput, Chunk, Tally, cell_summary, problem_sentence
from .protocol import Message
from .session import ClearOutput, CommEvent, DisplayData, ErrorOutput, Event, ExecuteResult, InputRequest, Stream

STUCK = "the cell did not stop when interrupted, so the sandbox was replaced; variables from earlier cells are gone."
"""What the user is told when a cell ignored its interrupt and the sandbox was replaced."""


@dataclass
class Cell:
    """The running cell, from the ``execute`` request until it is over."""

    request_id: str
    limit: int  # output bytes per cell (0 = none), Sandbox.output_limit
    rate: int  # output messages per second (0 = none), Sandbox.output_rate
    timeout: float  # seconds (0 = none)
    started: float  # time.monotonic() when it started
    tally: Tally = field(default_factory=Tally)  # what the output gate kept and dropped
    timed_out: bool = False  # the time limit is up and the agent was asked to stop
    done: bool = False  # the agent's ``done`` arrived
    output: CellOutput = field(default_factory=CellOutput)  # the streams' decoders
    pending: list[Chunk] = field(default_factory=list)  # output received but not yet published
    pending_bytes: int = 0
    last_flush: float = float("-inf")  # when pending output was last published
    input_since: float | None = None  # an input() has waited for the frontend since then (not timed)
    input_paused: float = 0.0  # seconds the cell waited for input before

    def time_left(self, now: float, interrupt_requested_at: float | None, grace: float) -> float | None:
        """Seconds until the next deadline: the interrupt's ``grace`` once one was asked for,
        else the cell's time limit; ``None`` when there is none."""
        if interrupt_requested_at is not None:
            return interrupt_requested_at + grace - now
        if self.timeout and not self.timed_out and self.input_since is None:
            return self.started + self.input_paused + self.timeout - now
        return None

    def input_answered(self, now: float) -> None:
        """The frontend answered an input(): the time limit runs again, less the wait."""
        if self.input_since is not None:
            self.input_paused += now - self.input_since
            self.input_since = None

    def add(self, chunk: Chunk) -> None:
        """Stream output arrived; it waits until :meth:`flush`."""
        self.pending.append(chunk)
        self.pending_bytes += len(chunk.data)

    def flush(self) -> list[Stream]:
        """The pending output as stream events, oldest first; nothing is pending after."""
        events = self.output.events(self.pending)
        self.pending, self.pending_bytes = [], 0
        return events

    def stuck_end(self) -> Iterator[Event]:
        """The end of a cell that did not stop when interrupted (its sandbox is replaced next)."""
        yield from self.flush()
        yield from cell_summary(self.tally, 0, self.limit, self.rate)
        if self.timed_out:
            yield ErrorOutput.from_exception(CellTimeout(self.timeout))
        else:
            yield ErrorOutput("KeyboardInterrupt", "Interrupted", [f"KeyboardInterrupt: {STUCK}"])

    def lost_end(self, error: SandboxError) -> Iterator[Event]:
        """The end of a cell whose sandbox was lost (it is replaced next)."""
        yield from cell_summary(self.tally, 0, self.limit, self.rate)
        yield ErrorOutput.from_exception(error)

    def message(self, frame: Message) -> Iterator[Event]:
        """The events for one message from the agent; after ``done``, :attr:`done` is set."""
        body = frame.body  # checked by messages.check: every field has its type
        kind = frame.type
        if kind in COMM:  # whichever request it names: widgets change between cells too
            yield comm_event(frame)
            return
        if kind == "input_request":  # the session admits only the running cell's
            yield InputRequest(body["prompt"], body["password"], body["seq"])
            return
        if body.get("id") not in (None, self.request_id):
            return  # a late reply to an earlier request
        if kind in ("display", "update_display"):
            transient = display_transient(body["transient"])
            if kind == "display" or transient:  # an update names the display it updates
                yield DisplayData(body["data"], body["metadata"], transient, kind == "update_display")
        elif kind == "clear_output":
            yield ClearOutput(body["wait"])
        elif kind == "result":
            yield ExecuteResult(body["data"], body["metadata"])
        elif kind == "error":
            if self.timed_out:
                yield ErrorOutput.from_exception(CellTimeout(self.timeout))
            elif frame.problem:
                yield ErrorOutput.from_exception(ProtocolError(problem_sentence(frame.problem)))
            else:
                yield ErrorOutput(body["ename"], body["evalue"], body["traceback"])
        elif kind == "done":
            self.done = True
            yield from self.output.finish()
            yield from cell_summary(self.tally, body["truncated"], self.limit, self.rate)
            if frame.problem:
                yield ErrorOutput.from_exception(ProtocolError(problem_sentence(frame.problem)))
            elif self.timed_out and body["status"] == "ok":
                yield ErrorOutput.from_exception(CellTimeout(self.timeout))


def display_transient(transient: dict[str, Any]) -> dict[str, Any]:
    """A display's ``transient`` as the kernel publishes it: only a ``display_id`` string of at
    most 1000 characters (ids are the sandbox's to choose; nothing else in transient is)."""
    display_id = transient.get("display_id")
    return {"display_id": display_id} if isinstance(display_id, str) and 0 < len(display_id) <= 1000 else {}


def comm_event(message: Message) -> CommEvent:
    """The event for a (checked) comm message of the sandbox."""
    body = message.body
    content: dict[str, Any] = {
        name: body[name] for name in ("comm_id", "target_name", "data", "metadata") if name in body
    }
    return CommEvent(message.type, content, list(body.get("buffers") or []))
