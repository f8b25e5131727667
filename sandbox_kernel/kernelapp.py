"""``python -m sandbox_kernel.kernelapp -f CONNECTION_FILE``: what a kernelspec starts."""

from __future__ import annotations

from typing import Any

from ipykernel.kernelapp import IPKernelApp
from jupyter_core.paths import jupyter_config_path
from traitlets import Type
from traitlets.config.application import Application

from .kernel import SandboxKernel


class SandboxKernelApp(IPKernelApp):
    """IPKernelApp that runs :class:`SandboxKernel` and reads ``sandbox_kernel_config.py``."""

    name = "sandbox-kernel"
    # Cells never run in this process, so there is no user output to capture here: skip
    # ipykernel's stdout/stderr capture (it costs time on every cell).
    # The kernel's own logging goes to the server's log, where it belongs.
    outstream_class = None  # type: ignore[assignment]
    kernel_class = Type(SandboxKernel, klass="ipykernel.kernelbase.Kernel").tag(config=True)  # type: ignore[assignment]

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        super().load_config_file(*args, **kwargs)
        # Settings live with the rest of Jupyter's configuration, e.g.
        # ~/.jupyter/sandbox_kernel_config.py, not in an IPython profile.
        for path in reversed(jupyter_config_path()):
            Application.load_config_file(self, "sandbox_kernel_config.py", path=path)


def main() -> None:
    SandboxKernelApp.launch_instance()


if __name__ == "__main__":
    main()
