"""The session seam: what the kernel asks of a sandbox, and what a cell produces.

:class:`SandboxSession` is the contract the kernel codes against; it knows nothing of Jupyter.
A cell's outputs are the events below (:data:`Event`). :class:`AgentChannel` is the byte
stream a backend gives :class:`~sandbox_kernel.agent_session.AgentSession`, the implementation
every backend shares (it drives an in-sandbox agent, see ``agents/PROTOCOL.md``); the output
limits it applies live in ``output_gate.py``.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncGenerator, Callable, Union

from .config import Limits
from .errors import ConfigError, SandboxError
from .languages import Language

if TYPE_CHECKING:
    from .usage import CellUsage, Usage


class ReportTopic(str, enum.Enum):
    """What ``%sandbox TOPIC`` asks :meth:`SandboxSession.report` for; every backend answers each.

    The kernel answers the other ``%sandbox`` topics itself (``kernel.SANDBOX_TOPICS``).
    """

    STATUS = "status"
    QUOTA = "quota"
    POLICY = "policy"
    EVENTS = "events"
    MANIFESTS = "manifests"


REPORT_TOPICS: tuple[str, ...] = tuple(topic.value for topic in ReportTopic)
"""The :class:`ReportTopic` values, in the order ``%sandbox`` lists them."""

CLUSTER_TOPICS: tuple[str, ...] = ("whoami", "can-i", "rules", "dry-run", "lab", "describe", "logs")
"""``%sandbox`` topics that ask the cluster as the kernel's own identity (the study notebooks 05
and 06): :meth:`SandboxSession.inspect_cluster`; only the Kubernetes backend has a cluster to ask."""


# ---------------------------------------------------------------------------------------------
# What a cell produces, in the order it produces it.


@dataclass(frozen=True)
class Stream:
    """Text the cell wrote to ``stdout`` or ``stderr``."""

    name: str
    text: str


@dataclass(frozen=True)
class DisplayData:
    """A rich object the cell displayed with ``display()``; with ``update`` set, new content for
    the earlier display whose ``display_id`` (in ``transient``) is the same (``update_display``)."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    transient: dict[str, Any] = field(default_factory=dict)
    update: bool = False


@dataclass(frozen=True)
class ClearOutput:
    """``clear_output()``: the cell's output so far is cleared (``wait``: when the next arrives)."""

    wait: bool = False


@dataclass(frozen=True)
class ExecuteResult:
    """The value of the cell's last expression."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorOutput:
    """The cell failed; ``traceback`` lines are shown as they are."""

    ename: str
    evalue: str
    traceback: list[str]

    @classmethod
    def from_exception(cls, exc: SandboxError) -> "ErrorOutput":
        """The cell's error for ``exc``: its message, then its one-line hint on a line of its own."""
        lines = [f"{exc.ename}: {exc}"]
        if exc.hint:
            lines.append(f"Hint: {exc.hint}")
        return cls(exc.ename, str(exc), lines)


@dataclass(frozen=True)
class CommEvent:
    """A comm message from the sandbox (``kind``: comm_open, comm_msg or comm_close), its fields
    checked by ``messages.py``; the kernel's comm policy (``comms.py``) decides what is published."""

    kind: str
    content: dict[str, Any]
    """``comm_id``, ``data``, ``metadata`` (and ``target_name`` for comm_open)."""
    buffers: list[str] = field(default_factory=list)
    """Binary buffers, base64."""


@dataclass(frozen=True)
class InputRequest:
    """The cell called ``input()`` or ``getpass()`` (``password``): the kernel asks the frontend
    and answers with :meth:`SandboxSession.input_reply` (``seq`` names the request)."""

    prompt: str
    password: bool
    seq: int


Event = Union[Stream, DisplayData, ExecuteResult, ErrorOutput, ClearOutput, CommEvent, InputRequest]


@dataclass(frozen=True)
class Completion:
    matches: list[str]
    cursor_start: int
    cursor_end: int


@dataclass(frozen=True)
class Inspection:
    found: bool
    data: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The contract.


class SandboxSession(abc.ABC):
    """One kernel's sandbox, from first cell to shutdown.

    The kernel creates one session per kernel process, calls :meth:`start` once, then any number
    of :meth:`execute`, :meth:`complete`, :meth:`inspect` and :meth:`is_complete` calls (never two
    at once), :meth:`interrupt` at any moment, and finally :meth:`close`. A sandbox that dies is
    replaced by the session itself; the kernel only relays what happened.
    """

    backend: str = "abstract"

    def __init__(self, language: Language, limits: Limits) -> None:
        self.language = language
        self.limits = limits
        self.timeout = limits.timeout
        self.idle_comm_sink: Callable[[CommEvent], None] | None = None
        """Set by the kernel: called with each comm message that arrives while no cell or comm
        request runs (a thread or timer updating a widget), after the output limits."""
        self.start_progress = ""
        """What a start under way waits for, in the user's words ("pulling the image …", "no node
        can run the sandbox pod yet (…)"), kept current by the backend while :meth:`start` runs;
        '' when it has nothing to say. The kernel shows it in a cell that waits for a slow start."""

    @property
    def generation(self) -> int:
        """Changes every time a new sandbox starts: comms of an earlier one are gone."""
        return 0

    @property
    def supports_comms(self) -> bool:
        """Whether the sandbox takes comm messages (:meth:`comm`); known after :meth:`start`."""
        return False

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the sandbox and wait until its agent is ready.

        Called once, when the kernel starts, before any other method. Raises a
        :class:`~sandbox_kernel.errors.SandboxError` (never anything else) when the sandbox cannot
        be had; the message says why and what to do.
        """

    @property
    @abc.abstractmethod
    def language_info(self) -> dict[str, Any]:
        """The runtime's real language_info (name, version, mimetype, …), known after :meth:`start`."""

    @abc.abstractmethod
    def execute(
        self, code: str, cell_number: int | None = None, *, allow_stdin: bool = False, parent: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """Run one cell; yield its outputs as they are produced.

        Called for every execute request; ``cell_number`` is its execution count (the prompt's
        ``[N]``), which tracebacks name the cell after (``<cell N>``), or None for none. The iterator ends when the cell has finished; a failed,
        interrupted or timed-out cell ends with an :class:`ErrorOutput`. The per-cell time limit
        is :attr:`timeout` (seconds, 0 = none), which the kernel may change between cells.
        In IPython mode the same number is ``In[N]``/``Out[N]``/``_N``; None: not stored in history.
        Time spent waiting for an answer to an :class:`InputRequest` does not count. ``allow_stdin``:
        the frontend can answer ``input()``; ``parent``: the request's Jupyter message id (what
        ipywidgets' Output widget captures by).
        """

    def comm(
        self, kind: str, content: dict[str, Any], buffers: list[str], parent: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """Deliver a comm message from the frontend (``kind``: comm_open, comm_msg or comm_close;
        ``content`` its Jupyter content, ``buffers`` base64) to the sandbox; yield what the
        sandbox's handlers produce, as for a cell, until they have finished.

        Called by the kernel for every comm message of the frontend, never while a cell runs.
        The default: the sandbox cannot take comm messages, nothing happens.
        """
        return _nothing()

    async def input_reply(self, seq: int, value: str | None, error: str | None = None) -> None:
        """Answer the running cell's :class:`InputRequest` ``seq`` with ``value`` (or make its
        ``input()`` raise with ``error``). Called by the kernel once the frontend answered."""

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Stop the running cell, if any. Called when the user presses stop or Ctrl-C.

        Returns at once; the running :meth:`execute` ends with an interrupted error, within
        ``interrupt_grace`` seconds even if the sandbox has to be replaced to achieve it.
        """

    @abc.abstractmethod
    async def complete(self, code: str, cursor_pos: int) -> Completion:
        """Completions at ``cursor_pos`` (code points). Called on Tab."""

    @abc.abstractmethod
    async def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> Inspection:
        """Help for the name at ``cursor_pos``. Called on Shift-Tab."""

    @abc.abstractmethod
    async def is_complete(self, code: str) -> tuple[str, str]:
        """``(status, indent)``: whether ``code`` is ready to run. Called by consoles on Enter."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Destroy the sandbox and everything it created. Called at kernel shutdown and restart.

        Safe to call more than once, and after a failed :meth:`start`.
        """

    @property
    def close_timeout(self) -> float:
        """Most seconds :meth:`close` may take: the kernel's shutdown waits this long for it."""
        return 120.0

    @abc.abstractmethod
    def report(self, topic: str) -> str:
        """Plain text for ``%sandbox TOPIC``, one of :class:`ReportTopic`; ``ValueError`` for any other."""

    def inspect_cluster(self, topic: str, words: list[str], body: str) -> str:
        """Plain text for ``%sandbox TOPIC WORDS...``, ``topic`` one of :data:`CLUSTER_TOPICS`;
        ``body`` is the rest of the cell (the manifests of ``dry-run``). Blocking: the kernel runs
        it off the event loop. Backends without a cluster (the default) refuse with a ConfigError."""
        raise ConfigError(
            f"%sandbox {topic}",
            f"asks the Kubernetes cluster as the kernel's identity, and this kernel runs on the {self.backend} backend",
            hint="Switch to a Kubernetes kernel (Kernel > Change Kernel... > Sandbox (Python) · Kubernetes; "
            "notebooks/README.md says how to get one).",
        )

    async def usage(self) -> "Usage | None":
        """The sandbox's memory and CPU now, with its limits (:class:`~sandbox_kernel.usage.Usage`).

        Called for every ``usage_request`` (JupyterLab's resource-usage panel polls every 5 s
        while it is open, also while a cell runs) and by ``%sandbox usage``; runs on the shell
        event loop. Must be cheap, answer within a second and never raise; ``None`` when there
        is no sandbox to ask (the default: the kernel then reports no figures).
        """
        return None

    def cell_usage_start(self) -> None:
        """A cell is about to run: take the readings :meth:`cell_usage_end` compares against
        (and reset per-cell peaks). Called on the shell loop before every :meth:`execute` that
        runs code; synchronous and cheap (the kernel's per-cell budget for accounting is 0.2 ms)."""

    def cell_usage_end(self, wall: float) -> "CellUsage":
        """The cell that just ended: ``wall`` seconds plus whatever the backend measured since
        :meth:`cell_usage_start` (CPU seconds, peak memory); missing figures carry a reason."""
        from .usage import CellUsage

        return CellUsage(wall, reason=f"CPU and memory per cell are not measured on the {self.backend} backend")

    def banner(self) -> str:
        """The kernel's banner: ``Sandbox (Python) on the local backend; limits: ...``."""
        name = self.language.display_name
        # "Sandbox (Node.js)" names the language in parentheses; a display name without them is the language.
        label = name[name.rfind("(") + 1 : -1] if name.endswith(")") and "(" in name else name
        return f"Sandbox ({label}) on the {self.backend} backend; limits: {self.limits.summary()}"


# ---------------------------------------------------------------------------------------------
# What a backend gives the shared agent-driving half: a byte stream to the agent.


async def _nothing() -> AsyncGenerator[Event, None]:
    return
    yield  # an async generator that yields nothing


@dataclass(frozen=True)
class StreamGap:
    """Returned by :meth:`AgentChannel.read`: ``lost`` bytes of the agent's output are gone for
    good, and the stream goes on at the start of a frame (see PROTOCOL.md, "Resuming")."""

    lost: int


class AgentChannel(abc.ABC):
    """A byte stream to a running agent, supplied by a backend."""

    @abc.abstractmethod
    async def read(self) -> bytes | StreamGap:
        """Next chunk from the agent's stdout; ``b""`` once the stream has ended."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes to the agent's stdin."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop using the stream (does not by itself stop the sandbox)."""
