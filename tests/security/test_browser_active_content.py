"""Attack: a cell's output tries to run code in JupyterLab (issue 11, breach 1).

A real JupyterLab in headless Chromium runs one Sandbox (Python) cell that displays every vector
seen to run in the Jupyter server's origin (script tags, event handlers, inline SVG onload,
javascript: links that are clicked, iframes with srcdoc, Markdown raw HTML and links,
application/javascript, SVG images, mXSS shapes) next to what real work needs (a pandas-style
table, an inline PNG). Each vector, if it runs, sets ``window.__pwned_<name>`` and requests
``/api/contents?pwned=<name>`` with the user's session.

The same notebook first runs with ``Sandbox.active_content = 'allow'`` as a control: the vectors
known to run in JupyterLab must be detected there, so the check itself can fail. Then with the
default ('block') none may run, no request may be made, and the table and PNG still render.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyterlab import jupyterlab, run_browser_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "browser" / "lab_attack.js"
ARTIFACTS = REPO / "artifacts"

ATTACK_CELL = r"""
import base64, struct, zlib

def png(w, h):
    raw = b"".join(b"\x00" + b"\xff\x80\x00" * w for _ in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    head = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")).decode()

def hit(name):
    return "top.__pwned_%s=1;top.fetch('/api/contents?pwned=%s')" % (name, name)

html = {
    "script": "<script>%s</script>",
    "img": '<img src="x" onerror="%s">',
    "svginline": '<svg onload="%s"><circle r="1"/></svg>',
    "link": '<a href="javascript:%s">click-me</a>',
    "iframe": '<iframe srcdoc="<script>%s</script>"></iframe>',
    "details": '<details open ontoggle="%s">d</details>',
    "focus": '<input autofocus onfocus="%s">',
    "mxss": '<math><mtext><table><mglyph><style><img src=x onerror="%s">',
    "object": '<object data="javascript:%s"></object>',
}
for name, template in html.items():
    display({"text/html": template % hit(name), "text/plain": name}, raw=True)
display({"application/javascript": hit("js"), "text/plain": "js"}, raw=True)
display({"text/markdown": 'md <img src="x" onerror="%s">' % hit("md")}, raw=True)
display({"text/markdown": "[click-me](javascript:top.__pwned_mdlink=1)"}, raw=True)
display({"image/svg+xml": '<svg xmlns="http://www.w3.org/2000/svg" onload="%s"><circle r="5"/></svg>' % hit("svg")}, raw=True)
display({"text/html": '<table border="1" class="dataframe"><thead><tr style="text-align: right;"><th></th><th>a</th></tr></thead><tbody><tr><th>0</th><td>1</td></tr></tbody></table>', "text/plain": "table"}, raw=True)
display({"image/png": png(40, 20), "text/plain": "png"}, raw=True)
print("ATTACK-DONE")
"""

# Seen to run in JupyterLab 4 when output is published unfiltered (issue 11): the control must see these.
KNOWN_TO_RUN = {"__pwned_script", "__pwned_img", "__pwned_js", "__pwned_md"}


def write_notebook(path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {
                    "kernelspec": {"name": "sandbox-python", "display_name": "Sandbox (Python)", "language": "python"}
                },
                "cells": [
                    {
                        "cell_type": "code",
                        "id": "attack",
                        "metadata": {},
                        "execution_count": None,
                        "outputs": [],
                        "source": ATTACK_CELL.strip(),
                    }
                ],
            }
        )
    )


def attack(url: str, token: str, tmp_path: Path, notebook: str, mode: str) -> dict:
    ARTIFACTS.mkdir(exist_ok=True)
    # The kernel reads its config when it starts, so each notebook gets the mode written now.
    (tmp_path / "config" / "sandbox_kernel_config.py").write_text(f"c.Sandbox.active_content = {mode!r}\n")
    write_notebook(tmp_path / "notebooks" / notebook)
    seen = run_browser_script(
        SCRIPT,
        url,
        token,
        tmp_path / f"chromium-{mode}",
        ARTIFACTS / f"active-content-{mode}.png",
        NOTEBOOK=notebook,
        WORKSPACE=f"attack-{mode}",
        KERNEL_DISPLAY_NAME="Sandbox (Python)",
        EXPECT="ATTACK-DONE",
    )
    return seen


@pytest.fixture
def lab(local_kernelspecs: Path, tmp_path: Path):
    with jupyterlab(tmp_path) as server:
        yield server


def test_no_active_content_runs_in_jupyterlab(lab, tmp_path: Path) -> None:
    url, token, _server = lab
    control = attack(url, token, tmp_path, "control.ipynb", "allow")
    assert KNOWN_TO_RUN <= set(control["globals"]), (
        f"the control run (active content allowed) did not detect the known vectors: {control}"
    )
    assert control["requests"], "the control run's scripts made no request: the detector is broken"

    seen = attack(url, token, tmp_path, "attack.ipynb", "block")
    assert seen["globals"] == [], f"active content ran in the browser: {seen['globals']}"
    assert seen["requests"] == [], f"active content called the Jupyter API: {seen['requests']}"
    assert seen["dialogs"] == [] and seen["scripts"] == 0 and seen["iframes"] == 0
    assert "/tree/attack.ipynb" in seen["url"], "a link navigated the page away"
    # Real work still renders: the table and the inline PNG, and the user is told what was removed.
    assert seen["tables"] == 1, seen
    assert seen["pngs"] >= 1, seen
    assert "removed application/javascript" in seen["text"]
