"""Shared helpers for tests that run real kernels through jupyter_client."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent


def _gvisor_missing() -> str | None:
    from sandbox_kernel.local import gvisor

    return None if os.environ.get("CI") else gvisor.unavailable_reason("runsc")


LOCAL_RUNTIMES = [
    "bubblewrap",
    pytest.param("gvisor", marks=pytest.mark.skipif(_gvisor_missing() is not None, reason=str(_gvisor_missing()))),
]
"""The local sandbox's runtimes, to parametrize a test with: gVisor is skipped (visibly) where
runsc cannot run, never in CI, where that is a failure."""


def write_kernelspecs(root: Path, backend: str = "local", extra_argv: list[str] | None = None) -> Path:
    """Write the three Sandbox kernelspecs under ``root/kernels`` (use as JUPYTER_PATH): this
    Python, ``backend`` (on the command line and in the metadata), then ``extra_argv``."""
    for source in sorted((REPO / "kernelspecs").iterdir()):
        if not (source / "kernel.json").is_file():
            continue
        target = root / "kernels" / source.name
        shutil.copytree(source, target, dirs_exist_ok=True)
        spec = json.loads((source / "kernel.json").read_text())
        spec["argv"][0] = sys.executable
        spec["argv"] += [f"--SandboxKernel.backend={backend}", *(extra_argv or [])]
        spec["metadata"]["sandbox_kernel"]["backend"] = backend
        (target / "kernel.json").write_text(json.dumps(spec))
    return root


@contextmanager
def running_kernel(
    name: str,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
    startup_timeout: float = 60,
    cwd: Path | str | None = None,
) -> Iterator[tuple[KernelManager, Any]]:
    """A kernel of kernelspec ``name``; ``cwd``: its working directory (as Jupyter starts a
    kernel in the notebook's directory)."""
    km = KernelManager(kernel_name=name)
    kwargs: dict[str, Any] = {}
    if cwd is not None:
        kwargs["cwd"] = str(cwd)
    if env is not None:
        kwargs["env"] = {**os.environ, **env}
    if argv:
        kwargs["extra_arguments"] = argv
    km.start_kernel(**kwargs)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=startup_timeout)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def run_cell(kc: Any, code: str, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; return (reply content, [iopub messages with arrival times])."""
    outputs: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("stream", "execute_result", "display_data", "error"):
            outputs.append({"type": msg["msg_type"], "t": time.monotonic(), **msg["content"]})

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], outputs


def text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(o["text"] for o in outputs if o["type"] == "stream" and o["name"] == name)


def result(outputs: list[dict[str, Any]]) -> str:
    found = [o["data"]["text/plain"] for o in outputs if o["type"] == "execute_result"]
    assert found, f"no execute_result in {outputs}"
    return found[-1]


def errors(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in outputs if o["type"] == "error"]
