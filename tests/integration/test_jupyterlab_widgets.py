"""Widgets and input() in a real JupyterLab in headless Chromium (issue 9, items 5 and 6).

A notebook with an ipywidgets IntSlider observed by a callback in the sandbox: Playwright drags
the slider, and a cell run afterwards prints the sandbox's value, which must be the one the
browser shows; a ``tqdm.notebook`` bar renders; ``input()`` gets JupyterLab's input box and
Playwright's answer. Screenshots are kept in ``artifacts/`` (the path is printed).

The sandbox runs the kernel's own Python environment (``LocalSandbox.python_environment``,
default 'kernel'), where the test extras install ipywidgets and tqdm; JupyterLab renders the
widgets with jupyterlab_widgets, which ipywidgets brings.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from jupyterlab import jupyterlab, run_browser_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "browser" / "lab_widgets.js"
ARTIFACTS = REPO / "artifacts"
SCREENSHOT = ARTIFACTS / "jupyterlab-widgets.png"


def notebook() -> dict:
    cells = [
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=10, min=0, max=100, description='level')\n"
        "moves = []\nslider.observe(lambda change: moves.append(change['new']), 'value')\ndisplay(slider)",
        "print('value now', slider.value, 'moves', len(moves), 'in', type(get_ipython()).__mro__[1].__name__)",
        "from tqdm.notebook import tqdm\nfor i in tqdm(range(40), desc='steps'):\n    pass\nprint('TQDM-DONE')",
        "name = input('Your name? ')\nprint('hello', name)",
    ]
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "sandbox-python", "display_name": "Sandbox (Python)", "language": "python"}
        },
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
    }


@pytest.fixture
def lab(local_kernelspecs: Path, tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    import ipywidgets  # noqa: F401  - in the test extras; their absence is a failure, not a skip
    import jupyterlab_widgets  # noqa: F401  - renders widgets in JupyterLab; ipywidgets brings it
    import tqdm  # noqa: F401

    with jupyterlab(tmp_path) as server:
        (tmp_path / "notebooks" / "widgets.ipynb").write_text(json.dumps(notebook()))
        yield server


def test_slider_tqdm_and_input_in_jupyterlab(lab: tuple[str, str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, token, _server = lab
    ARTIFACTS.mkdir(exist_ok=True)
    seen = run_browser_script(
        SCRIPT,
        url,
        token,
        tmp_path / "chromium-profile",
        SCREENSHOT,
        timeout=300,
        NOTEBOOK="widgets.ipynb",
        KERNEL_DISPLAY_NAME="Sandbox (Python)",
        ANSWER="Ada",
    )
    print(f"screenshots: {SCREENSHOT} and {SCREENSHOT.with_name('jupyterlab-widgets-slider.png')}")
    # The browser's slider moved, and the sandbox's IntSlider has that value, set by its callback.
    assert seen["before"] == "10" and seen["after"] != "10", seen
    assert f"value now {seen['after']} moves" in seen["printed"], seen
    assert "moves 0" not in seen["printed"], seen
    assert "in InteractiveShell" in seen["printed"], seen  # the default IPython mode
    # tqdm.notebook drew a progress bar widget (not text).
    assert seen["progress_bars"] >= 1, seen
    # input(): the prompt in JupyterLab's box, the typed answer back in the sandbox.
    assert seen["prompt"].startswith("Your name?") and "hello Ada" in seen["answered"], seen
    for picture in (SCREENSHOT, SCREENSHOT.with_name("jupyterlab-widgets-slider.png")):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
