"""The README's configuration reference is generated from the traits: it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from sandbox_kernel.cli import settings_reference

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", re.S)


def update_readme() -> None:
    text = README.read_text()
    README.write_text(BLOCK.sub(lambda _m: f"<!-- settings:begin -->\n{settings_reference()}<!-- settings:end -->", text))


def test_readme_lists_every_setting_with_its_default() -> None:
    match = BLOCK.search(README.read_text())
    assert match, "README.md lost its settings markers"
    assert match.group(1) == settings_reference(), (
        "README.md's settings table is stale: run "
        "`python -c 'import tests.unit.test_readme_settings as t; t.update_readme()'`"
    )


def test_every_setting_has_help() -> None:
    for line in settings_reference().splitlines()[2:]:
        assert line.rstrip(" |").split("|")[-1].strip(), f"setting without help: {line}"
