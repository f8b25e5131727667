"""JupyterLab in headless Chromium: pick "Sandbox (Python)" in the launcher and run a cell.

A real ``jupyter lab`` server offers the Sandbox kernelspecs (JUPYTER_PATH from the
``local_kernelspecs`` fixture); Debian's ``chromium`` is driven by npm ``playwright-core``
(``browser/lab_run_cell.js``), which needs no browser download. The screenshot is kept in
``artifacts/jupyterlab-sandbox-python.png`` for CI (the plots in ``artifacts/jupyterlab-plots.png``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from jupyterlab import jupyterlab, run_browser_script
from processes import alive, sandbox_groups, sandbox_kernels

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "browser" / "lab_run_cell.js"
SCREENSHOT = REPO / "artifacts" / "jupyterlab-sandbox-python.png"
PLOT_SCREENSHOT = REPO / "artifacts" / "jupyterlab-plots.png"
USAGE_SCRIPT = Path(__file__).resolve().parent / "browser" / "lab_kernel_usage.js"
USAGE_SCREENSHOT = REPO / "artifacts" / "jupyterlab-kernel-usage.png"


@pytest.fixture
def lab(local_kernelspecs: Path, tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """A JupyterLab server on a free loopback port; yields (base URL, token, process)."""
    with jupyterlab(tmp_path) as server:
        yield server


def test_sandbox_python_runs_a_cell_in_jupyterlab(
    lab: tuple[str, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, token, server = lab
    seen = run_browser_script(
        SCRIPT,
        url,
        token,
        tmp_path / "chromium-profile",
        SCREENSHOT,
        timeout=240,
        KERNEL_DISPLAY_NAME="Sandbox (Python)",
        CODE="print(6*7)",
        EXPECT="42",
    )

    assert "Sandbox (Python)" in seen["tiles"] and "Sandbox (Node.js)" in seen["tiles"]
    assert seen["typed"] == "print(6*7)"
    assert seen["output"].strip() == "42"
    assert seen["kernel"] == "Sandbox (Python)"
    assert seen["prompt"] == "[1]:"
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000

    # The cell really ran in a sandbox of the Sandbox kernel the notebook started.
    [kernel] = sandbox_kernels(server.pid)
    groups = sandbox_groups(kernel)
    assert len(groups) == 1
    pids = {int(p) for p in (groups[0] / "cgroup.procs").read_text().split()}
    assert pids

    # Stopping JupyterLab (SIGTERM) shuts the kernel down, and the kernel its sandbox.
    server.terminate()
    assert server.wait(60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (alive(kernel) or any(alive(p) for p in pids)):
        time.sleep(0.2)
    assert not alive(kernel) and not [p for p in pids if alive(p)]
    assert not sandbox_groups(kernel)


def test_matplotlib_plots_show_as_images_in_ipython_mode(
    lab: tuple[str, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The default IPython mode (the cell prints IPython's shell class): a figure shown with
    plt.show() and one left open at the end of the cell are two PNG images in JupyterLab, with
    no set-up by the user (matplotlib-inline in the sandbox)."""
    import matplotlib  # noqa: F401  - in the test extras; its absence is a failure, not a skip

    url, token, _server = lab
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.show()\n"
        "plt.figure(figsize=(4, 2))\n"
        "plt.plot([3, 2, 1])\n"
        "print('shell', type(get_ipython()).__mro__[1].__name__)"
    )
    seen = run_browser_script(
        SCRIPT,
        url,
        token,
        tmp_path / "chromium-profile",
        PLOT_SCREENSHOT,
        timeout=240,
        KERNEL_DISPLAY_NAME="Sandbox (Python)",
        CODE=code,
        EXPECT="shell",
        EXPECT_IMAGES="2",
    )
    print(f"screenshot: {PLOT_SCREENSHOT}")
    assert "shell InteractiveShell" in seen["output"], seen
    first, second = seen["images"]
    assert first["type"] == second["type"] == "data:image/png", seen
    # Each figure at its own size: matplotlib's default 6.4 x 4.8 in and 4 x 2 in, at the same dpi
    # and cropped to what is drawn (matplotlib-inline's bbox_inches='tight', as under ipykernel).
    assert 1.2 < first["width"] / first["height"] < 1.45 and 1.6 < second["width"] / second["height"] < 2.1, seen
    assert 0.5 < second["width"] / first["width"] < 0.75, seen
    assert PLOT_SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and PLOT_SCREENSHOT.stat().st_size > 10_000


def test_kernel_usage_panel_shows_the_sandboxs_memory_against_its_limit(
    lab: tuple[str, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """jupyter-resource-usage's Kernel Usage panel asks the kernel (usage_request): a cell holding
    150 MiB in the sandbox shows as at least 150 MiB, and the host figures are the sandbox's
    limit (256Mi by default). The status bar's "Mem:" item is the Jupyter server's process tree
    (not asked of the kernel); locally that tree includes the sandbox, so it shows the 150 MiB too."""
    import jupyter_resource_usage  # noqa: F401  - in the test extras; its absence is a failure, not a skip

    url, token, server = lab
    seen = run_browser_script(
        USAGE_SCRIPT,
        url,
        token,
        tmp_path / "chromium-profile",
        USAGE_SCREENSHOT,
        KERNEL_DISPLAY_NAME="Sandbox (Python)",
        ALLOC_MIB="150",
    )
    assert "holding 150 MiB" in seen["output"]
    # The panel: the sandbox's memory (>= what the cell holds, below the limit) ...
    assert 150 <= seen["memory_mib"] < 256, seen
    # ... against the sandbox's limit, shown as the "host" total.
    assert seen["total_mib"] == 256 and seen["available_mib"] == pytest.approx(256 - seen["memory_mib"], abs=1), seen
    # The status bar's Mem: item (the server's process tree, which holds the sandbox here).
    assert seen["statusbar_mem_mib"] is not None and seen["statusbar_mem_mib"] >= 150, seen
    assert USAGE_SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
