"""What of a sandbox's rich output may reach the browser: the active-content policy.

Everything a cell displays comes from untrusted code, yet a frontend renders it in the Jupyter
server's own origin: a ``<script>`` in ``text/html``, an ``application/javascript`` bundle or an
``<img onerror>`` would run with the user's session (read the server's token, open a terminal).
So with ``Sandbox.active_content = 'block'`` (the default) every MIME bundle goes through
:func:`filter_bundle` before the kernel publishes it:

- the MIME types in :data:`MIME_POLICY` are kept, each after its own check (HTML and SVG are
  sanitized, images must be base64, Markdown with raw HTML or odd links becomes sanitized HTML);
- every other type is dropped with a notice: script types, widget and notebook-extension types
  that execute code (``application/vnd.bokehjs_exec…``), and anything unknown.

HTML is cleaned by `nh3` (the Python binding of the Rust `ammonia` sanitizer, built on
html5ever's spec-compliant parser), SVG is parsed by `defusedxml` (no entity expansion, no
external entities) and rebuilt from allow-listed elements and attributes. The tables below are
the whole policy; ``%sandbox policy`` prints :func:`describe`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable
from xml.etree import ElementTree

import nh3

if TYPE_CHECKING:
    from .session import Event

log = logging.getLogger("sandbox_kernel")

MODES = ("block", "allow")

# ---------------------------------------------------------------------------------------------
# The policy, as data.

MIME_POLICY: dict[str, str] = {
    "text/plain": "kept as text",
    "text/html": "sanitized (nh3): no scripts, event handlers, iframes, forms, <style> or javascript: URLs",
    "text/markdown": "kept; with raw HTML, entities or non-web links it becomes sanitized text/html",
    "text/latex": "kept unless it uses MathJax commands that make links or set HTML attributes",
    "image/svg+xml": "rebuilt from allow-listed SVG elements and attributes (no scripts, handlers, foreignObject, animation)",
    "image/png": "kept if valid base64",
    "image/jpeg": "kept if valid base64",
    "image/gif": "kept if valid base64",
    "image/webp": "kept if valid base64",
    "image/bmp": "kept if valid base64",
    "application/json": "kept (shown as a JSON tree)",
    "application/vnd.jupyter.widget-view+json": "kept only for widget models the kernel accepted (module on WIDGET_MODULES)",
}
"""MIME type → what happens to it. Any type not listed is dropped with a notice."""

KNOWN_ACTIVE = (
    "application/javascript",
    "text/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/vnd.bokehjs_exec.v0+json",
    "application/vnd.bokehjs_load.v0+json",
    "application/vnd.holoviews_exec.v0+json",
    "application/vnd.holoviews_load.v0+json",
    "application/vnd.jupyter.widget-state+json",
    "text/vnd.javascript",
)
"""Types known to run code in the frontend (dropped like every unlisted type; named in notices)."""

WIDGET_MODULES = ("@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/output")
"""Frontend widget packages whose models a sandbox may create (JupyterLab ships these)."""

HTML_TAGS = frozenset(nh3.ALLOWED_TAGS) - {"area", "map"}
"""ammonia's default tag set (text, lists, tables, images, details…), without image maps."""

# The allow-list tables stay compact: one glance shows what passes.
# fmt: off
HTML_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"class", "style", "title", "align", "valign", "lang", "dir", "colspan", "rowspan", "width", "height"},
    "a": {"href"},
    "img": {"src", "alt"},
    "table": {"border", "cellpadding", "cellspacing"},
    "th": {"scope"},
    "ol": {"start", "type"},
    "li": {"value"},
    "col": {"span"},
    "colgroup": {"span"},
}

STYLE_PROPERTIES = frozenset({
    "color", "background-color", "text-align", "vertical-align", "font-weight", "font-style",
    "font-size", "font-family", "text-decoration", "white-space", "border", "border-collapse",
    "border-color", "border-style", "border-width", "border-top", "border-bottom", "border-left",
    "border-right", "padding", "padding-left", "padding-right", "padding-top", "padding-bottom",
    "margin", "margin-left", "margin-right", "margin-top", "margin-bottom", "width", "height",
    "max-width", "max-height", "min-width", "display", "line-height",
})
"""CSS properties kept in ``style`` attributes (none of them takes a URL or positions over the page)."""

URL_SCHEMES = frozenset({"http", "https", "mailto", "data"})

DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp|bmp|svg\+xml)(;[a-z0-9=.+-]+)*(;base64)?,", re.I)

SVG_ELEMENTS = frozenset({
    "svg", "g", "defs", "symbol", "use", "title", "desc", "metadata", "switch",
    "path", "rect", "circle", "ellipse", "line", "polyline", "polygon", "text", "tspan", "textPath",
    "clipPath", "mask", "pattern", "marker", "linearGradient", "radialGradient", "stop", "filter",
    "feGaussianBlur", "feOffset", "feBlend", "feColorMatrix", "feComposite", "feFlood", "feMerge",
    "feMergeNode", "image", "style",
})
"""SVG elements kept (matplotlib's, graphviz's and plotting libraries' output); no ``script``,
``foreignObject``, ``a``, ``animate``/``set`` (which can set ``href`` to ``javascript:``)."""

SVG_ATTRIBUTES = frozenset({
    "id", "class", "style", "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "rx", "ry", "dx", "dy",
    "width", "height", "viewBox", "preserveAspectRatio", "d", "points", "transform", "fill",
    "fill-opacity", "fill-rule", "stroke", "stroke-width", "stroke-opacity", "stroke-linecap",
    "stroke-linejoin", "stroke-dasharray", "stroke-dashoffset", "stroke-miterlimit", "opacity",
    "clip-path", "clip-rule", "clipPathUnits", "mask", "font-family", "font-size", "font-weight",
    "font-style", "text-anchor", "dominant-baseline", "alignment-baseline", "letter-spacing",
    "offset", "stop-color", "stop-opacity", "gradientUnits", "gradientTransform", "spreadMethod",
    "fx", "fy", "patternUnits", "patternTransform", "markerWidth", "markerHeight", "refX", "refY",
    "orient", "markerUnits", "marker-start", "marker-mid", "marker-end", "version", "visibility",
    "display", "filter", "stdDeviation", "in", "in2", "result", "mode", "values", "type",
    "operator", "flood-color", "flood-opacity", "lengthAdjust", "textLength", "overflow",
    "vector-effect", "color", "href", "space",
})
"""SVG attributes kept (``href`` only as a same-document ``#ref`` or a data: image)."""

# fmt: on
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"

LATEX_FORBIDDEN = re.compile(r"\\(href|url|class|cssId|style|html\w*|unicode|require|data)\b")

_BASE64 = re.compile(rb"^[A-Za-z0-9+/=\s]*$")
_ACTIVE_URL = re.compile(r"(javascript|vbscript|data|file|blob):", re.I)
_CSS_DANGER = re.compile(r"@import|url\s*\(|expression\s*\(|behavior\s*:|-moz-binding|</", re.I)


# ---------------------------------------------------------------------------------------------
# Applying it.


@dataclass
class Filtered:
    """A bundle after the policy: what may be published, and what the user should be told."""

    data: dict[str, Any]
    metadata: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    """MIME types removed from the bundle."""

    def notice(self) -> str | None:
        """One line for the cell's stderr, or None when nothing was removed."""
        if not self.dropped:
            return None
        active = [m for m in self.dropped if m in KNOWN_ACTIVE]
        what = ", ".join(self.dropped)
        why = "it could run code in your browser" if active else "it is not on the sandbox's list of safe output types"
        return (
            f"[sandbox] removed {what} from the output: {why} (Sandbox.active_content = 'block'; see %sandbox policy)"
        )


def filter_bundle(
    data: dict[str, Any], metadata: dict[str, Any] | None = None, *, widget_models: frozenset[str] = frozenset()
) -> Filtered:
    """Apply the policy to one MIME bundle. Never raises: a type whose check fails is dropped.

    ``widget_models`` are the ids of widget models the kernel accepted (see
    :func:`widget_model_allowed`); a widget view of any other model is dropped.
    """
    metadata = dict(metadata or {})
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for mime, value in data.items():
        check = _CHECKS.get(mime)
        result = None
        if check is not None:
            try:
                result = check(value, widget_models)
            except Exception:  # noqa: BLE001 - any failure of a check means "not safe"
                log.debug("output check for %s failed", mime, exc_info=True)
                result = None
            except BaseException as exc:  # nh3 (pyo3) panics derive from BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                log.warning("the HTML sanitizer failed on %s output", mime)
                result = None
        if result is None:
            dropped.append(mime)
            metadata.pop(mime, None)
            continue
        new_mime, new_value = result
        if new_mime != mime:
            metadata.pop(mime, None)
            if new_mime in data or new_mime in kept:
                continue  # the bundle has its own (checked) copy of that type
        kept[new_mime] = new_value
    if not kept:
        kept["text/plain"] = ""
    return Filtered(kept, metadata, dropped)


def widget_model_allowed(state: dict[str, Any]) -> bool:
    """Whether a widget model (the ``state`` of a ``comm_open`` for ``jupyter.widget``) may be
    created in the frontend: its model and view modules must be installed frontend packages on
    :data:`WIDGET_MODULES`, never code fetched from elsewhere."""
    for key in ("_model_module", "_view_module"):
        module = state.get(key)
        if module is not None and module not in WIDGET_MODULES:
            return False
    return isinstance(state.get("_model_module"), str)


def describe(mode: str) -> str:
    """The policy as text, for ``%sandbox policy``."""
    if mode == "allow":
        return (
            "active content: ALLOWED (Sandbox.active_content = 'allow'): the sandbox's output is "
            "published as it is, scripts included. Only for code you trust.\n"
        )
    lines = ["active content: blocked (Sandbox.active_content = 'block'); output types:"]
    width = max(len(m) for m in MIME_POLICY)
    lines += [f"  {mime:<{width}}  {what}" for mime, what in MIME_POLICY.items()]
    lines.append(f"  {'(any other type)':<{width}}  dropped with a notice, e.g. {', '.join(KNOWN_ACTIVE[:2])}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The checks, one per kept type: return (mime, value) to publish, or None to drop.


def _text(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)  # nbformat's multi-line strings
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _keep_text(value: Any, _models: frozenset[str]) -> tuple[str, Any]:
    return "text/plain", _text(value)


def _url_filter(tag: str, attribute: str, value: str) -> str | None:
    if attribute in ("href", "src"):
        url = _squeeze(value)
        if url.lower().startswith("data:"):
            return value if tag == "img" and DATA_IMAGE.match(url) else None
    return value


def sanitize_html(html: str) -> str:
    """``html`` with everything that could run code removed (nh3/ammonia)."""
    return nh3.clean(
        html,
        tags=set(HTML_TAGS),
        attributes={k: set(v) for k, v in HTML_ATTRIBUTES.items()},
        attribute_filter=_url_filter,
        url_schemes=set(URL_SCHEMES),
        filter_style_properties=set(STYLE_PROPERTIES),
        url_relative="deny",
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def _html(value: Any, _models: frozenset[str]) -> tuple[str, Any]:
    return "text/html", sanitize_html(_text(value))


def _squeeze(text: str) -> str:
    """Text as a browser reads a URL: without whitespace and control characters."""
    return "".join(ch for ch in text if ch > " " and ch != "\x7f")


@functools.cache
def _markdown() -> Any:
    """The Markdown renderer, made at the first Markdown that needs it (mistune's import is
    ~20-50 ms of a kernel's start otherwise)."""
    import mistune

    return mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])


def _markdown_check(value: Any, _models: frozenset[str]) -> tuple[str, Any]:
    text = _text(value)
    # Keep Markdown only when no renderer could find HTML or an active link in it: no '<' (raw
    # HTML, autolinks), no '&' (entities that spell 'javascript:'), no non-web URL scheme.
    if "<" not in text and "&" not in text and not _ACTIVE_URL.search(_squeeze(text)):
        return "text/markdown", text
    return "text/html", sanitize_html(str(_markdown()(text)))


def _latex(value: Any, _models: frozenset[str]) -> tuple[str, Any] | None:
    text = _text(value)
    return None if LATEX_FORBIDDEN.search(text) else ("text/latex", text)


def _image(mime: str) -> Callable[[Any, frozenset[str]], tuple[str, Any]]:
    def check(value: Any, _models: frozenset[str]) -> tuple[str, Any]:
        text = _text(value)
        raw = text.encode("ascii")
        if not _BASE64.match(raw):
            raise ValueError("not base64")
        base64.b64decode(b"".join(raw.split()), validate=True)
        return mime, text

    return check


def _json(value: Any, _models: frozenset[str]) -> tuple[str, Any]:
    json.dumps(value, allow_nan=False)  # plain JSON data only
    return "application/json", value


def _widget_view(value: Any, models: frozenset[str]) -> tuple[str, Any] | None:
    if isinstance(value, dict) and value.get("model_id") in models:
        return "application/vnd.jupyter.widget-view+json", {
            "model_id": value["model_id"],
            "version_major": value.get("version_major", 2),
            "version_minor": value.get("version_minor", 0),
        }
    return None


_SVG_DOCTYPE = re.compile(r'\A\s*(<\?xml[^<>]*\?>\s*)?<!DOCTYPE\s+svg\s+PUBLIC\s+"[^"<>\[\]]*"\s+"[^"<>\[\]]*"\s*>')
"""The one DOCTYPE kept out of the parser instead of refusing the SVG: SVG 1.1's public DTD by name,
with no internal subset (so no entities), as matplotlib writes it. The parser never loads a DTD,
and any other DOCTYPE is still refused."""


def sanitize_svg(svg: str) -> str:
    """``svg`` rebuilt from allow-listed elements and attributes; raises ValueError if it is not SVG."""
    doctype = _SVG_DOCTYPE.match(svg)
    if doctype:
        svg = svg[doctype.end() :]
    from defusedxml import ElementTree as SafeElementTree  # at the first SVG (a kernel's start is shorter)

    root = SafeElementTree.fromstring(svg.encode("utf-8"), forbid_dtd=True)
    if _local(root.tag) != "svg":
        raise ValueError("not an SVG document")
    clean = _clean_svg_element(root)
    assert clean is not None
    ElementTree.register_namespace("", SVG_NS)
    ElementTree.register_namespace("xlink", XLINK_NS)
    return ElementTree.tostring(clean, encoding="unicode")


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _clean_svg_element(element: ElementTree.Element) -> ElementTree.Element | None:
    name = _local(element.tag) if isinstance(element.tag, str) else ""
    if name not in SVG_ELEMENTS or (
        isinstance(element.tag, str) and element.tag.startswith("{") and not element.tag.startswith("{" + SVG_NS)
    ):
        return None
    clean = ElementTree.Element(f"{{{SVG_NS}}}{name}")
    for key, value in element.attrib.items():
        attr = _local(key)
        if attr not in SVG_ATTRIBUTES or attr.lower().startswith("on"):
            continue
        if attr == "href":
            url = _squeeze(value)
            if not (url.startswith("#") or DATA_IMAGE.match(url)):
                continue
            key = f"{{{XLINK_NS}}}href"
        elif attr == "style" and _CSS_DANGER.search(value):
            continue
        elif _ACTIVE_URL.search(_squeeze(value)):
            continue
        clean.set(
            key if key.startswith("{" + XLINK_NS) or key == "{http://www.w3.org/XML/1998/namespace}space" else attr,
            value,
        )
    if name == "style":
        if element.text and not _CSS_DANGER.search(element.text):
            clean.text = element.text
        return clean
    clean.text = element.text
    for child in element:
        kept = _clean_svg_element(child)
        if kept is not None:
            kept.tail = child.tail
            clean.append(kept)
    return clean


def _svg(value: Any, _models: frozenset[str]) -> tuple[str, Any]:
    return "image/svg+xml", sanitize_svg(_text(value))


_CHECKS: dict[str, Callable[[Any, frozenset[str]], tuple[str, Any] | None]] = {
    "text/plain": _keep_text,
    "text/html": _html,
    "text/markdown": _markdown_check,
    "text/latex": _latex,
    "image/svg+xml": _svg,
    "image/png": _image("image/png"),
    "image/jpeg": _image("image/jpeg"),
    "image/gif": _image("image/gif"),
    "image/webp": _image("image/webp"),
    "image/bmp": _image("image/bmp"),
    "application/json": _json,
    "application/vnd.jupyter.widget-view+json": _widget_view,
}
assert set(_CHECKS) == set(MIME_POLICY), "every listed type has a check"


def guard(event: "Event", mode: str, widget_models: frozenset[str] = frozenset()) -> list["Event"]:
    """One session event as it may be published under ``mode``: rich bundles filtered, and a
    stderr notice after them when something was removed. Other events pass unchanged (comm
    messages have their own policy: comms.py). ``widget_models``: see :func:`filter_bundle`."""
    from .session import DisplayData, ExecuteResult, Stream

    if mode == "allow" or not isinstance(event, (DisplayData, ExecuteResult)):
        return [event]
    filtered = filter_bundle(event.data, event.metadata, widget_models=widget_models)
    out: list[Any] = [dataclasses.replace(event, data=filtered.data, metadata=filtered.metadata)]
    notice = filtered.notice()
    if notice:
        out.append(Stream("stderr", notice + "\n"))
    return out
