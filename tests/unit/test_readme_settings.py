"""The README's configuration reference is generated from the traits: it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from sandbox_kernel.cli import settings_reference

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", re.S)
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")  # a help text's own '|' is written '\|'


def update_readme() -> None:
    text = README.read_text()
    README.write_text(
        BLOCK.sub(lambda _m: f"<!-- settings:begin -->\n{settings_reference()}<!-- settings:end -->", text)
    )


def rows(table: str) -> dict[str, tuple[str, str]]:
    """``{setting: (default, help)}`` of a settings table (without its header lines)."""
    found = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in _CELL_SEPARATOR.split(line.strip())]
        assert len(cells) == 5 and cells[0] == cells[-1] == "", f"not a row of three cells: {line!r}"
        found[cells[1].strip("`")] = (cells[2].strip("`"), cells[3])
    return found


def settings_without_help(table: str) -> list[str]:
    return [name for name, (_default, help_text) in rows(table).items() if not help_text]


def test_readme_lists_every_setting_with_its_default() -> None:
    match = BLOCK.search(README.read_text())
    assert match, "README.md lost its settings markers"
    assert match.group(1) == settings_reference(), (
        "README.md's settings table is stale: run "
        "`python -c 'import tests.unit.test_readme_settings as t; t.update_readme()'`"
    )


def test_every_setting_has_help() -> None:
    assert rows(settings_reference()), "no settings found"
    assert settings_without_help(settings_reference()) == []


def test_an_empty_help_is_found_even_with_a_default() -> None:
    table = "| setting | default | help |\n|---|---|---|\n| `A.x` | `'local'` |  |\n| `A.y` | `1` | Some \\| help. |\n"
    assert settings_without_help(table) == ["A.x"]
    assert rows(table)["A.y"] == ("1", "Some \\| help.")


def test_the_backend_default_is_the_kernel_trait_s_own() -> None:
    from sandbox_kernel.kernel import SandboxKernel
    from sandbox_kernel.sessions import DEFAULT_BACKEND

    trait = SandboxKernel.class_traits()["backend"]
    assert trait.default() == DEFAULT_BACKEND
    assert rows(settings_reference())["SandboxKernel.backend"][0] == repr(DEFAULT_BACKEND)
