"""``python -m sandbox_kernel.kernelapp -f CONNECTION_FILE``: what a kernelspec starts."""

from __future__ import annotations

import atexit
import sys
from typing import Any

if __name__ == "__main__":
    # Before the imports below, which take the kernel process ~0.5-0.8 s: a Kubernetes sandbox
    # is created meanwhile (its pod takes a second or more to run). See kubernetes/early.py.
    from sandbox_kernel.kubernetes import early

    early.begin(sys.argv[1:])

from ipykernel.kernelapp import IPKernelApp  # noqa: E402
from jupyter_core.paths import jupyter_config_path  # noqa: E402
from traitlets import Type  # noqa: E402
from traitlets.config.application import Application  # noqa: E402

from sandbox_kernel.kernel import SandboxKernel  # noqa: E402


class SandboxKernelApp(IPKernelApp):
    """IPKernelApp that runs :class:`SandboxKernel` and reads ``sandbox_kernel_config.py``."""

    name = "sandbox-kernel"
    # Cells never run in this process, so there is no user output to capture here: skip
    # ipykernel's stdout/stderr capture (it costs time on every cell).
    # The kernel's own logging goes to the server's log, where it belongs.
    outstream_class = None  # type: ignore[assignment]
    kernel_class = Type(SandboxKernel, klass="ipykernel.kernelbase.Kernel").tag(config=True)  # type: ignore[assignment]

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        super().load_config_file(*args, **kwargs)  # type: ignore[no-untyped-call]
        # Settings live with the rest of Jupyter's configuration, e.g.
        # ~/.jupyter/sandbox_kernel_config.py, not in an IPython profile.
        for path in reversed(jupyter_config_path()):
            Application.load_config_file(self, "sandbox_kernel_config.py", path=path)


    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)  # type: ignore[no-untyped-call]
        # ipykernel 7's exit order races: its IOPub thread's atexit stop (registered when the
        # thread starts) runs before the app's own close(), and the control thread is a daemon
        # nobody waits for. A shutdown_request is handled on that thread, which publishes its
        # final "idle" status after the reply: when the IOPub thread is already gone, the send
        # blocks for ever or aborts in zmq's signaler (~3 % of shutdowns with 20 kernels at
        # once, benchmarks/bench_load.py). Registered after the IOPub thread's, this runs first.
        atexit.register(self._let_control_thread_finish)

    def _let_control_thread_finish(self) -> None:
        control = getattr(self, "control_thread", None)
        if control is not None and control.is_alive():
            control.stop()
            control.join(timeout=10)


def main() -> None:
    SandboxKernelApp.launch_instance()


if __name__ == "__main__":
    main()
