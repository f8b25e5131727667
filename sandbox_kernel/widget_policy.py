"""What of a sandbox's widget traffic may reach the browser: the widget policy, as data.

A widget is a model in the frontend whose state the sandbox sets through comm messages
(``comm_open`` with the whole state, ``comm_msg`` ``update`` with changes). The frontend renders
that state with the widget packages JupyterLab ships, and some of it is HTML: an ``HTML`` widget's
``value`` is put into the page as it is, an ``Output`` widget renders a list of MIME bundles, a
``jslink`` copies one widget's value into another in the browser. So, with
``Sandbox.active_content = 'block'``, every state the sandbox sends goes through
:func:`check_state` first:

- a model must come from a package on ``output_policy.WIDGET_MODULES`` (never code fetched from
  elsewhere), and its module and name cannot change after it was opened;
- the models in :data:`REFUSED_MODELS` are refused whole;
- the fields in :data:`HTML_FIELDS` are sanitized like ``text/html`` output (``HTMLMath`` also
  loses the MathJax commands the output policy forbids in ``text/latex``);
- ``description_allow_html`` is always off (descriptions are shown as text);
- an ``Output`` widget's ``outputs`` go through the output policy, bundle by bundle;
- style and layout values that load or run something (``url(``, ``expression(``…) are dropped.

The tables below are the whole policy; ``%sandbox policy`` prints :func:`describe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import output_policy

WIDGET_TARGET = "jupyter.widget"
"""The comm target of widget models (ipywidgets)."""

CONTROL_TARGET = "jupyter.widget.control"
"""The comm the frontend opens to fetch every widget's state (a notebook reloaded)."""

SANDBOX_TARGETS = (WIDGET_TARGET,)
"""Comm targets the sandbox may open comms to. Other frontend targets belong to extensions that
may load or run code; comms the frontend opens itself may have any target."""

REFUSED_MODELS = frozenset({"LinkModel", "DirectionalLinkModel"})
"""jslink / jsdlink: the browser copies values between widgets without the kernel seeing them
(a Text widget's plain value into an HTML widget's value)."""

HTML_FIELDS: dict[str, tuple[str, ...]] = {
    "HTMLModel": ("value", "placeholder"),
    "HTMLMathModel": ("value", "placeholder"),
}
"""Model → fields the frontend renders as HTML."""

FIXED_FIELDS = frozenset(
    {
        "_model_module",
        "_model_module_version",
        "_model_name",
        "_view_module",
        "_view_module_version",
        "_view_name",
    }
)
"""Fields set when a model opens; an update may not change them."""

CSS_MODELS_SUFFIXES = ("StyleModel", "LayoutModel")
"""Models whose string values are CSS."""


@dataclass
class Checked:
    """A widget state after the policy: what may be published, and what was removed."""

    state: dict[str, Any]
    removed: list[str] = field(default_factory=list)
    refused: str | None = None
    """Why the whole message is refused (then nothing is published)."""


def check_open(state: Any, widget_models: frozenset[str]) -> Checked:
    """The state of a new widget model (``comm_open`` data ``state``)."""
    if not isinstance(state, dict):
        return Checked({}, refused="its state is not an object")
    model = state.get("_model_name")
    if not output_policy.widget_model_allowed(state):
        return Checked(
            {},
            refused=f"its module {str(state.get('_model_module'))[:80]!r} is not on the widget list "
            f"({', '.join(output_policy.WIDGET_MODULES)})",
        )
    if not isinstance(model, str):
        return Checked({}, refused="it has no _model_name")
    if model in REFUSED_MODELS:
        return Checked({}, refused=f"{model} (jslink/jsdlink) is not allowed: it copies values in the browser")
    return _clean(model, state, widget_models, opening=True)


def check_update(model: str, state: Any, widget_models: frozenset[str]) -> Checked:
    """A state change of an open model named ``model`` (``update`` / ``echo_update``)."""
    if not isinstance(state, dict):
        return Checked({}, refused="its state is not an object")
    return _clean(model, state, widget_models, opening=False)


def _clean(model: str, state: dict[str, Any], widget_models: frozenset[str], opening: bool) -> Checked:
    out: dict[str, Any] = {}
    removed: list[str] = []
    html_fields = HTML_FIELDS.get(model, ())
    css = model.endswith(CSS_MODELS_SUFFIXES)
    for key, value in state.items():
        if key in FIXED_FIELDS and not opening:
            removed.append(key)
            continue
        if key == "description_allow_html":
            out[key] = False
            if value:
                removed.append(key)
            continue
        if key in html_fields and isinstance(value, str):
            clean = output_policy.sanitize_html(value)
            if model == "HTMLMathModel":
                clean = output_policy.LATEX_FORBIDDEN.sub(lambda m: m.group(0)[1:], clean)
            if clean != value:
                removed.append(f"{key} (sanitized)")
            out[key] = clean
            continue
        if model == "OutputModel" and key == "outputs":
            out[key] = _outputs(value, widget_models, removed)
            continue
        if css and _css_danger(value):
            removed.append(key)
            continue
        out[key] = value
    return Checked(out, removed)


def _css_danger(value: Any) -> bool:
    if isinstance(value, str):
        return bool(output_policy._CSS_DANGER.search(value)) or bool(
            output_policy._ACTIVE_URL.search(output_policy._squeeze(value))
        )
    if isinstance(value, list):
        return any(_css_danger(item) for item in value)
    return False


def _outputs(value: Any, widget_models: frozenset[str], removed: list[str]) -> list[dict[str, Any]]:
    """An Output widget's outputs (nbformat output dicts), each through the output policy."""
    if not isinstance(value, list):
        removed.append("outputs")
        return []
    kept: list[dict[str, Any]] = []
    for output in value:
        if not isinstance(output, dict):
            continue
        kind = output.get("output_type")
        if kind == "stream" and isinstance(output.get("text"), str):
            kept.append(
                {
                    "output_type": "stream",
                    "name": "stderr" if output.get("name") == "stderr" else "stdout",
                    "text": output["text"],
                }
            )
        elif kind in ("display_data", "execute_result") and isinstance(output.get("data"), dict):
            filtered = output_policy.filter_bundle(
                output["data"],
                output.get("metadata") if isinstance(output.get("metadata"), dict) else {},
                widget_models=widget_models,
            )
            removed.extend(f"outputs: {mime}" for mime in filtered.dropped)
            clean: dict[str, Any] = {"output_type": kind, "data": filtered.data, "metadata": filtered.metadata}
            if kind == "execute_result":
                clean["execution_count"] = (
                    output.get("execution_count") if isinstance(output.get("execution_count"), int) else None
                )
            kept.append(clean)
        elif kind == "error":
            traceback = output.get("traceback")
            kept.append(
                {
                    "output_type": "error",
                    "ename": str(output.get("ename", "")),
                    "evalue": str(output.get("evalue", "")),
                    "traceback": [str(line) for line in traceback] if isinstance(traceback, list) else [],
                }
            )
        else:
            removed.append(f"outputs: {str(kind)[:40]}")
    return kept


def describe() -> str:
    """The widget policy as text, for ``%sandbox policy``."""
    lines = [
        "widgets (comm messages): the sandbox may open comms to " + ", ".join(SANDBOX_TARGETS) + " only;",
        "  widget modules: " + ", ".join(output_policy.WIDGET_MODULES),
        "  refused models: " + ", ".join(sorted(REFUSED_MODELS)),
        "  sanitized as HTML: " + ", ".join(f"{m}.{f}" for m, fs in HTML_FIELDS.items() for f in fs),
        "  description_allow_html: always off; Output widget outputs: the output policy above;",
        "  style/layout values with url(), expression() or script URLs: dropped",
    ]
    return "\n".join(lines) + "\n"
