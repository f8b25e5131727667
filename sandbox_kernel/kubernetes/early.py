"""Start the Kubernetes sandbox while the kernel process is still importing ipykernel.

A kernel process spends its first ~0.5-0.8 s importing ipykernel (IPython, jupyter_client,
zmq, tornado) and setting up its sockets, and only then creates its sandbox, whose pod takes
another second or more to run. Both are mostly waiting of different kinds (the CPU for the
imports, the kubelet for the pod), so ``python -m sandbox_kernel.kernelapp`` calls
:func:`begin` before those imports: it reads the same configuration the kernel will read
(``sandbox_kernel_config.py`` in the Jupyter config path, then the command line, then
``SANDBOX_KERNEL_BACKEND``), and for the Kubernetes backend creates the namespace, all its
objects and the first pod (:func:`.provision.prepare_sandbox`, with the standard library's HTTP
client, :mod:`.early_client`: importing the kubernetes client first cost 0.2–0.6 s), before
importing on. The same thread then waits for the pod to run, attaches and sends the gate line
(:func:`.provision.start_prepared`), so the agent starts while ipykernel is still imported and
its ``ready`` waits in the stream for the session.

Nothing about the sandbox is weakened: the objects are created by the same code in the same
order (the deny-all policy before the pod), and the pod's agent still waits for the kernel's
gate line and for the policy to be enforced (:func:`.pod_command.agent_command`). The session
takes the prepared sandbox over (:meth:`.session.KubernetesSandboxSession._claim_early`) only
if every object is exactly what it would have created itself from the configuration ipykernel
finally loaded; otherwise it deletes it and starts its own. Any failure here only means no head
start. A prepared sandbox nobody claims is deleted at exit (its Lease, never renewed, also lets
``sandbox-kernel gc`` reclaim it after ``KubernetesSandbox.heartbeat_ttl``).

This module imports only the standard library at import time, so importing it is free.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .claiming import PreparedClaim
    from .provision import PreparedSandbox

log = logging.getLogger("sandbox_kernel")

CONFIG_FILE = "sandbox_kernel_config.py"

_ASSIGNMENT = re.compile(r"--[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=.*", re.DOTALL)
"""``--Class.trait=value``, the only command-line form besides ``-f FILE`` :func:`load_config` takes."""

FOREGROUND_WAIT = 1.0
"""Most seconds :func:`begin` waits for the sandbox's objects and pod to be created."""

_pending: Future[PreparedSandbox | PreparedClaim] | None = None
_made = threading.Event()  # the sandbox's objects and pod are created (or that failed)
_progress = ""


def load_config(argv: list[str]) -> Any:
    """The traitlets Config the kernel application will load, as far as the sandbox is concerned.

    Mirrors :class:`sandbox_kernel.kernelapp.SandboxKernelApp`: ``sandbox_kernel_config.py``
    from every Jupyter config directory (lowest priority first), then the command line on top.
    IPython profile files are not read (a setting there makes the result differ, and the
    session then simply does not use the early sandbox). Any other kind of argument (an
    ipykernel flag, say) raises ValueError, and there is no early start.
    """
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config import Config
    from traitlets.config.loader import (
        ConfigFileNotFound,
        KVArgParseConfigLoader,
        PyFileConfigLoader,
    )

    config = Config()
    for path in reversed(jupyter_config_path()):
        try:
            config.merge(PyFileConfigLoader(CONFIG_FILE, path=path).load_config())
        except ConfigFileNotFound:
            pass
    rest = list(argv)
    while rest:  # argparse would exit the process on an argument it does not know: check first
        arg = rest.pop(0)
        if arg == "-f" and rest:
            rest.pop(0)
        elif not (arg.startswith("-f=") or _ASSIGNMENT.fullmatch(arg)):
            raise ValueError(f"not an argument the early start understands: {arg!r}")
    loader = KVArgParseConfigLoader(argv, aliases={"f": "IPKernelApp.connection_file"}, flags={})
    config.merge(loader.load_config())
    return config


def begin(argv: list[str]) -> None:
    """Begin creating the sandbox if this kernel will use the Kubernetes backend (see the module doc)."""
    global _pending
    if _pending is not None:
        return
    began = time.perf_counter()
    try:
        from ..config import chosen_backend  # the kernel's choice, and its precedence (sessions.py)

        config = load_config(argv)
        kernel = config.SandboxKernel
        backend = chosen_backend(str(kernel.get("backend", "") or ""))
        if backend != "kubernetes":
            return
        _pending = start_early(config, str(kernel.get("language_name", "python")))
        atexit.register(_discard_unclaimed)
        # Let the API calls finish before importing on: they are short (~70 ms) but would crawl
        # beside a CPU-bound import in the main thread, every socket wake-up waiting for the GIL
        # (a pod created ~0.3 s later, measured). A slow or unreachable cluster does not hold
        # the kernel up for longer than this.
        _made.wait(FOREGROUND_WAIT)
        log.debug(
            "early sandbox start: %s after %.3f s",
            "created" if _made.is_set() else "still creating",
            time.perf_counter() - began,
        )
    except Exception as exc:  # noqa: BLE001 - no head start; the kernel reports real problems itself
        log.debug("no early sandbox start: %s", exc)


def start_early(config: Any, language_name: str) -> Future[PreparedSandbox | PreparedClaim]:
    """Begin :func:`.provision.prepare_sandbox` in a thread, with the settings ``config`` gives
    (in claims mode :func:`.claiming.prepare_claim`: the claim, served by the controller).

    Settings are validated here, in the caller's thread: a bad one raises at once (and the
    kernel reports it properly later, when it reads the same configuration).
    """
    from ..config import Sandbox
    from ..languages import LANGUAGES
    from .provision import prepare_sandbox, start_prepared
    from .settings import KubernetesSandbox, current_kernel_id

    language = LANGUAGES[language_name]
    limits = Sandbox(config=config).limits()
    settings = KubernetesSandbox(config=config)
    settings.validate(limits)
    if settings.mode == "claims" and limits.allow_hosts:
        raise ValueError("a claim with egress carries the session's own proxy credential: no early claim")
    kernel_id = current_kernel_id()
    future: Future[PreparedSandbox | PreparedClaim] = Future()

    def work() -> None:
        try:
            if settings.mode == "claims":
                from .claiming import prepare_claim  # imports the kubernetes client

                future.set_result(prepare_claim(settings, language, limits, kernel_id, _set_progress))
                return
            prepared = prepare_sandbox(settings, language, limits, kernel_id)
            _made.set()  # the main thread imports on while the pod starts; this thread waits for it
            future.set_result(start_prepared(prepared, settings, language, limits, _set_progress))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever claims it
            future.set_exception(exc)
        finally:
            _made.set()

    threading.Thread(target=work, name="sandbox-early-start", daemon=True).start()
    return future


def _set_progress(text: str) -> None:
    global _progress
    _progress = text


def progress() -> str:
    """What the early start waits for now (claims mode: the controller's word), or ''."""
    return _progress


def claim() -> Future[PreparedSandbox | PreparedClaim] | None:
    """The early start's result, once per process (``None`` if there was none or it was taken)."""
    global _pending
    future, _pending = _pending, None
    return future


def _discard_unclaimed() -> None:
    """At exit: delete a sandbox that was prepared but never taken over."""
    future = claim()
    if future is None:
        return
    try:
        prepared = future.result(timeout=30)
        from .claiming import PreparedClaim

        if isinstance(prepared, PreparedClaim):
            prepared.discard()
        else:
            if prepared.stream is not None:
                prepared.stream.close()
            prepared.api.delete_namespace(prepared.ident.namespace)
    except Exception:  # noqa: BLE001 - gc reclaims it once its lease expires
        log.debug("could not delete the unclaimed early sandbox", exc_info=True)


async def take_over(show: Callable[[str], None], default: str) -> PreparedSandbox | PreparedClaim | None:
    """What :func:`begin` started, once it is made (its progress shown meanwhile, else ``default``);
    ``None`` if nothing was started or it failed (the session's own start then reports the cause)."""
    import asyncio  # here: importing this module stays free

    future = claim()
    if future is None:
        return None
    waiting = asyncio.wrap_future(future)
    while not waiting.done():  # the early start's progress is this start's
        show(progress() or default)
        await asyncio.wait({waiting}, timeout=0.25)
    try:
        return await waiting
    except Exception as exc:  # noqa: BLE001 - the normal start reports the cause properly
        log.info("early sandbox start failed (%s); starting the sandbox now", exc)
        return None
