"""Attack: active content in a cell's output, seen at IOPub as a frontend gets it (issue 11, 1).

Real Sandbox kernels through jupyter_client: what a Python or Node.js cell displays, returns as
its value or offers as help (inspect) reaches the frontend without anything that can run; the
user is told what was removed. ``Sandbox.active_content = 'allow'`` is the control that shows
the same cell does produce the active content.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kernels import run_cell, running_kernel, text

ACTIVE = re.compile(r"<script|\son\w+\s*=|=[\"']?\s*javascript:|<iframe|srcdoc", re.I)

PYTHON_CELL = r"""
display({"text/html": "<script>alert(1)</script><b onmouseover='alert(2)'>bold</b>",
         "application/javascript": "alert(3)", "text/plain": "p"}, raw=True)
display({"text/markdown": "<img src=x onerror=alert(4)> [x](javascript:alert(5))"}, raw=True)
display({"image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg' onload='alert(6)'><circle r='1'/></svg>"}, raw=True)
class Evil:
    def _repr_html_(self):
        return "<iframe srcdoc='<script>alert(7)</script>'></iframe><i>value</i>"
Evil()
"""

NODE_CELL = r"""
display({"text/html": "<script>alert(1)</script><b onmouseover='alert(2)'>bold</b>",
         "application/javascript": "alert(3)", "text/plain": "p"});
display({"text/markdown": "<img src=x onerror=alert(4)> [x](javascript:alert(5))"});
display({"image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg' onload='alert(6)'><circle r='1'/></svg>"});
({ _toHtml() { return "<iframe srcdoc='<script>alert(7)</script>'></iframe><i>value</i>"; } })
"""


def rich(outputs: list[dict]) -> list[dict]:
    return [o for o in outputs if o["type"] in ("display_data", "execute_result")]


@pytest.mark.parametrize("kernel,cell", [("sandbox-python", PYTHON_CELL), ("sandbox-node", NODE_CELL)])
def test_outputs_reach_the_frontend_without_active_content(local_kernelspecs: Path, kernel: str, cell: str) -> None:
    with running_kernel(kernel) as (_km, kc):
        reply, outputs = run_cell(kc, cell)
    assert reply["status"] == "ok", outputs
    bundles = rich(outputs)
    assert len(bundles) == 4, outputs
    for output in bundles:
        assert "application/javascript" not in output["data"]
        for mime, value in output["data"].items():
            assert not ACTIVE.search(str(value)), (mime, value)
    html = [o["data"].get("text/html", "") for o in bundles]
    assert "<b>bold</b>" in html[0] and "<i>value</i>" in html[3]
    assert "image/svg+xml" in bundles[2]["data"] and "<circle" in bundles[2]["data"]["image/svg+xml"]
    assert "removed application/javascript" in text(outputs, "stderr")


@pytest.mark.parametrize("kernel,cell", [("sandbox-python", PYTHON_CELL), ("sandbox-node", NODE_CELL)])
def test_control_allow_publishes_the_active_content(local_kernelspecs: Path, kernel: str, cell: str) -> None:
    with running_kernel(kernel, argv=["--Sandbox.active_content=allow"]) as (_km, kc):
        reply, outputs = run_cell(kc, cell)
    assert reply["status"] == "ok", outputs
    bundles = rich(outputs)
    assert any("application/javascript" in o["data"] for o in bundles)
    assert any(ACTIVE.search(str(o["data"].get("text/html", ""))) for o in bundles)


def test_inspect_help_is_sanitized(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python") as (_km, kc):
        run_cell(
            kc,
            'class Evil:\n    "<img src=x onerror=alert(1)>"\n    def _repr_html_(self): return "<script>x</script>"\nevil = Evil()',
        )
        kc.inspect("evil", 4, detail_level=0)
        reply = kc.get_shell_msg(timeout=30)["content"]
    assert reply["status"] == "ok" and "Docstring" in reply["data"]["text/plain"]
    for mime, value in reply["data"].items():
        if mime == "text/html":  # IPython mode's help: the docstring's markup is escaped text, no element
            assert not active_markup(str(value)) and "&lt;img src=x onerror=alert(1)&gt;" in value, reply["data"]
        else:
            assert mime == "text/plain" or not ACTIVE.search(str(value)), reply["data"]  # plain text is shown as text


def active_markup(html: str) -> list[str]:
    """The elements and attributes of ``html`` that could run (escaped text is no markup)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in ("script", "iframe", "object", "embed"):
                found.append(tag)
            for name, value in attrs:
                if name.startswith("on") or name == "srcdoc" or "javascript:" in (value or "").replace(" ", "").lower():
                    found.append(f"{tag} {name}")

    Parser().feed(html)
    return found


def test_bad_active_content_setting_is_reported_in_the_cell(local_kernelspecs: Path) -> None:
    with running_kernel("sandbox-python", argv=["--Sandbox.active_content=sometimes"]) as (_km, kc):
        reply, outputs = run_cell(kc, "1 + 1")
    assert reply["status"] == "error"
    assert "Invalid setting Sandbox.active_content" in reply["evalue"] and "'block', 'allow'" in reply["evalue"]
