"""The troubleshooting lab's answers (notebook 06) are hidden in JupyterLab until opened.

The answers are markdown cells with ``jupyter.source_hidden``; this opens the notebook in a real
JupyterLab in headless Chromium (``browser/lab_hidden_answers.js``) and checks that an answer's
text is not on the page, that each answer shows as a collapsed placeholder, and that a click on
the placeholder shows it. The screenshot is kept in ``artifacts/jupyterlab-hidden-answers.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat

from jupyterlab import jupyterlab, run_browser_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "browser" / "lab_hidden_answers.js"
SCREENSHOT = REPO / "artifacts" / "jupyterlab-hidden-answers.png"
NOTEBOOK = REPO / "notebooks" / "06-troubleshooting-lab.ipynb"


def test_the_lab_answers_are_collapsed_until_clicked(local_kernelspecs: Path, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    answers = [c for c in nb.cells if "answer" in c.metadata.get("tags", [])]
    assert len(answers) == 4
    first_answer = "A refused pod is never"
    assert first_answer in answers[0].source
    # Every cell in the page (JupyterLab 4 renders only the cells in view by default).
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"windowingMode": "none"}')
    with jupyterlab(tmp_path) as (url, token, _server):
        shutil.copy(NOTEBOOK, tmp_path / "notebooks" / NOTEBOOK.name)
        seen = run_browser_script(
            SCRIPT,
            url,
            token,
            tmp_path / "chromium-profile",
            SCREENSHOT,
            timeout=240,
            NOTEBOOK=NOTEBOOK.name,
            ANSWER=first_answer,
            VISIBLE="Four broken sandboxes are waiting for you",
        )
    assert seen["cells"] == len(nb.cells), seen
    # A collapsed cell shows its first line: the answers' first lines give nothing away.
    assert len(seen["placeholders"]) == len(answers), seen
    for n, text in enumerate(seen["placeholders"], 1):
        assert text.startswith(f"**Answer {n}** (open it once you have your own diagnosis)"), seen
    assert seen["answerShownBefore"] == 0, seen
    assert seen["answerShownAfter"] >= 1 and seen["placeholdersAfter"] == len(answers) - 1, seen
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
