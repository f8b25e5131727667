"""The active-content policy (sandbox_kernel/output_policy.py), on bundles alone.

Every vector of issue 11's browser attack is fed through :func:`filter_bundle`; the browser
itself is tested in tests/security/test_browser_active_content.py.
"""

from __future__ import annotations

import base64
import re

import pytest

from sandbox_kernel.output_policy import (
    KNOWN_ACTIVE,
    MIME_POLICY,
    describe,
    filter_bundle,
    guard,
    sanitize_html,
    sanitize_svg,
    widget_model_allowed,
)
from sandbox_kernel.session import DisplayData, ErrorOutput, ExecuteResult, Stream

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
ACTIVE = re.compile(r"<script|<iframe|<object|<embed|<form|\son\w+\s*=|=[\"']?\s*javascript:|srcdoc", re.I)

HTML_VECTORS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)><circle r=1></svg>",
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s></svg>",
    "<a href='javascript:alert(1)'>x</a>",
    "<a href='JaVa\tScRiPt:alert(1)'>x</a>",
    "<a href='&#106;avascript:alert(1)'>x</a>",
    "<iframe srcdoc='<script>alert(1)</script>'></iframe>",
    "<iframe src='javascript:alert(1)'></iframe>",
    "<object data='javascript:alert(1)'></object>",
    "<embed src='javascript:alert(1)'>",
    "<form action='javascript:alert(1)'><button>go</button></form>",
    "<details open ontoggle=alert(1)>x</details>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",
    "<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>",
    "<body onload=alert(1)>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "<base href='javascript:alert(1)//'>",
    "<link rel=stylesheet href='https://evil.example/x.css'>",
    "<div style='background:url(javascript:alert(1))'>x</div>",
    "<img src='data:text/html,<script>alert(1)</script>'>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<input autofocus onfocus=alert(1)>",
]


@pytest.mark.parametrize("vector", HTML_VECTORS)
def test_html_vectors_lose_everything_that_runs(vector: str) -> None:
    out = filter_bundle({"text/html": vector}).data["text/html"]
    assert not ACTIVE.search(out), out
    assert "<link" not in out and "<meta" not in out and "<base" not in out and "url(" not in out
    assert "href=" not in out and "src=" not in out, out  # no vector has a URL worth keeping


def test_html_keeps_tables_styles_images_and_links() -> None:
    html = (
        "<div><table border='1' class='dataframe'><thead><tr style='text-align: right;'><th>a</th></tr></thead>"
        "<tbody><tr><td style='color: red; position: fixed'>1</td></tr></tbody></table>"
        f"<img src='data:image/png;base64,{PNG}' alt='plot'><a href='https://jupyter.org'>docs</a></div>"
    )
    out = sanitize_html(html)
    assert "<table" in out and 'class="dataframe"' in out and "<th>a</th>" in out
    assert 'style="color:red"' in out.replace(" ", "") or "color: red" in out
    assert "position" not in out
    assert f'src="data:image/png;base64,{PNG}"' in out
    assert 'href="https://jupyter.org"' in out and "noopener" in out


def test_script_types_and_unknown_types_are_dropped_with_a_notice() -> None:
    bundle = {"text/plain": "fallback", **{mime: "alert(1)" for mime in KNOWN_ACTIVE}, "application/x-unknown": "?"}
    result = filter_bundle(bundle, {"application/javascript": {"x": 1}})
    assert result.data == {"text/plain": "fallback"}
    assert set(result.dropped) == set(KNOWN_ACTIVE) | {"application/x-unknown"}
    assert result.metadata == {}
    notice = result.notice()
    assert notice and "application/javascript" in notice and "could run code" in notice
    assert "Sandbox.active_content" in notice


def test_markdown_with_raw_html_or_odd_links_becomes_sanitized_html() -> None:
    for markdown in [
        "# hi <img src=x onerror=alert(1)>",
        "[click](javascript:alert(1))",
        "[click](java\nscript:alert(1))",
        "<javascript:alert(1)>",
        "[a][r]\n\n[r]: javascript:alert(1)",
        "&#106;avascript:alert(1)",
    ]:
        data = filter_bundle({"text/markdown": markdown}).data
        assert "text/markdown" not in data, markdown
        assert not ACTIVE.search(data["text/html"]), (markdown, data)


def test_plain_markdown_is_kept_as_markdown() -> None:
    text = "# Results\n\n*mean* is $x^2$, see [docs](https://jupyter.org)\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    assert filter_bundle({"text/markdown": text}).data == {"text/markdown": text}


def test_markdown_beside_its_own_html_keeps_that_html() -> None:
    data = filter_bundle({"text/markdown": "<b onclick=x>m</b>", "text/html": "<i>h</i>"}).data
    assert data == {"text/html": "<i>h</i>"}


def test_svg_is_rebuilt_without_scripts_handlers_or_foreign_content() -> None:
    svg = (
        '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'viewBox="0 0 10 10" onload="alert(1)"><style>*{stroke:red}</style>'
        '<linearGradient id="g"><stop offset="0" stop-color="red"/></linearGradient>'
        '<rect x="1" width="5" height="5" fill="url(#g)"/><script>alert(2)</script>'
        '<a href="javascript:alert(3)"><text x="1" y="8">hi</text></a>'
        '<foreignObject><iframe src="x"/></foreignObject><use xlink:href="#g"/><use href="javascript:x"/>'
        '<animate attributeName="href" to="javascript:alert(4)"/><set attributeName="onclick" to="alert(5)"/></svg>'
    )
    out = sanitize_svg(svg)
    assert 'viewBox="0 0 10 10"' in out and "<linearGradient" in out and "<rect" in out
    assert 'xlink:href="#g"' in out and "stroke:red" in out
    for bad in ("onload", "script", "javascript", "foreignObject", "iframe", "animate", "<set", "<a"):
        assert bad not in out, (bad, out)


@pytest.mark.parametrize(
    "svg",
    [
        '<!DOCTYPE svg [<!ENTITY a "aaaa">]><svg xmlns="http://www.w3.org/2000/svg">&a;</svg>',
        "<html><script>alert(1)</script></html>",
        "not xml at all <",
    ],
)
def test_svg_that_is_not_plain_svg_is_dropped(svg: str) -> None:
    result = filter_bundle({"image/svg+xml": svg, "text/plain": "x"})
    assert result.data == {"text/plain": "x"} and result.dropped == ["image/svg+xml"]


def test_svg_style_with_urls_or_imports_is_dropped() -> None:
    out = sanitize_svg(
        '<svg xmlns="http://www.w3.org/2000/svg"><style>@import url(https://evil/x.css);</style>'
        '<rect style="fill:url(https://evil/t)"/></svg>'
    )
    assert "@import" not in out and "evil" not in out


def test_images_must_be_base64() -> None:
    assert filter_bundle({"image/png": PNG}).data == {"image/png": PNG}
    assert filter_bundle({"image/png": '" onerror="alert(1)'}).dropped == ["image/png"]
    assert filter_bundle({"image/jpeg": 42}).dropped == ["image/jpeg"]


def test_latex_that_makes_links_is_dropped() -> None:
    assert filter_bundle({"text/latex": r"$\frac{1}{2}$"}).data == {"text/latex": r"$\frac{1}{2}$"}
    assert filter_bundle({"text/latex": r"$\href{javascript:alert(1)}{x}$"}).dropped == ["text/latex"]


def test_json_must_be_plain_data() -> None:
    assert filter_bundle({"application/json": {"a": [1, 2]}}).data == {"application/json": {"a": [1, 2]}}
    assert filter_bundle({"application/json": float("nan")}).dropped == ["application/json"]


def test_widget_views_only_for_accepted_models() -> None:
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    assert filter_bundle({"application/vnd.jupyter.widget-view+json": view}).dropped
    kept = filter_bundle({"application/vnd.jupyter.widget-view+json": view}, widget_models=frozenset({"abc"}))
    assert kept.data == {"application/vnd.jupyter.widget-view+json": view}
    assert widget_model_allowed(
        {"_model_module": "@jupyter-widgets/controls", "_view_module": "@jupyter-widgets/controls"}
    )
    assert not widget_model_allowed({"_model_module": "https://evil.example/widget.js"})
    assert not widget_model_allowed({"_model_module": "@jupyter-widgets/controls", "_view_module": "evil-widget"})
    assert not widget_model_allowed({})


def test_nbformat_multiline_strings_are_joined() -> None:
    assert filter_bundle({"text/html": ["<b>a", "</b><script>x</script>"]}).data == {"text/html": "<b>a</b>"}


def test_a_bundle_with_nothing_safe_still_has_text_plain() -> None:
    assert filter_bundle({"application/javascript": "x"}).data == {"text/plain": ""}


def test_guard_filters_displays_and_results_and_passes_the_rest() -> None:
    display = DisplayData({"text/html": "<script>x</script><b>b</b>", "application/javascript": "x"})
    out = guard(display, "block")
    assert out[0] == DisplayData({"text/html": "<b>b</b>"}, {})
    assert isinstance(out[1], Stream) and out[1].name == "stderr" and "application/javascript" in out[1].text
    result = guard(ExecuteResult({"text/html": "<i onclick=x>i</i>"}), "block")
    assert result == [ExecuteResult({"text/html": "<i>i</i>"}, {})]
    stream, error = Stream("stdout", "<script>"), ErrorOutput("E", "<script>", [])
    assert guard(stream, "block") == [stream] and guard(error, "block") == [error]
    assert guard(display, "allow") == [display]


def test_describe_lists_every_type() -> None:
    text = describe("block")
    for mime in MIME_POLICY:
        assert mime in text
    assert "ALLOWED" in describe("allow")
