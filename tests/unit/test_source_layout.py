"""Small facts about how the package's source reads: every attribute docstring sits under the
attribute it describes, and no section banner is left with nothing under it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sandbox_kernel"
BANNER = re.compile(r"^# -{20,}$")


def orphaned_docstrings(source: str) -> list[int]:
    """Lines of string statements that follow neither the start of a body nor an assignment."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for before, statement in zip(node.body, node.body[1:]):
            if (
                isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            ):
                if not isinstance(before, (ast.Assign, ast.AnnAssign)):
                    found.append(statement.lineno)
    return found


def empty_sections(source: str) -> list[int]:
    """Lines of ``# ----`` section banners with no code before the next banner or the end."""
    lines = source.splitlines()
    banners: list[int] = []
    for i, line in enumerate(lines):
        boxed = banners and all(text.startswith("#") for text in lines[banners[-1] + 1 : i])
        if BANNER.match(line) and not boxed:  # (a rule right under a title's comment lines closes its box)
            banners.append(i)
    empty = []
    for at, end in zip(banners, banners[1:] + [len(lines)]):
        body = [line for line in lines[at + 1 : end] if line.strip() and not line.lstrip().startswith("#")]
        if not body:
            empty.append(at + 1)
    return empty


def sources() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(PACKAGE.parent)), path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_every_attribute_docstring_follows_its_attribute() -> None:
    assert {name: lines for name, source in sources() if (lines := orphaned_docstrings(source))} == {}


def test_no_section_banner_is_empty() -> None:
    assert {name: lines for name, source in sources() if (lines := empty_sections(source))} == {}


def test_the_checks_find_what_they_look_for() -> None:
    source = 'class A:\n    """Doc."""\n\n    x: int\n    """Of x."""\n    y: int = 1\n    z: int = 2\n    """Of z."""\n    """Orphan."""\n'
    assert orphaned_docstrings(source) == [9]
    banner = "# " + "-" * 30
    assert empty_sections(f"{banner}\n# One.\n\n\n{banner}\n# Two.\nx = 1\n") == [1]
    assert empty_sections(f"{banner}\n# Boxed.\n{banner}\nx = 1\n") == []


def test_every_subpackage_is_in_the_wheel() -> None:
    """pyproject.toml lists its packages one by one: a new one missing there is missing from the
    installed package (the JupyterLab image's `sandbox-kernel` then fails to import)."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "add them to [tool.setuptools] packages in pyproject.toml"


def test_test_file_names_are_unique_across_tiers() -> None:
    # pytest imports test files by their base name (rootdir-relative packages are not used): two
    # tiers with the same file name stop the whole run at collection ("import file mismatch").
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}
