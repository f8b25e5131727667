"""k8s/sandbox/*.yaml must be exactly what `sandbox-kernel render` prints for the code as it is.

When this fails, the builders, the default settings or an agent changed: regenerate with
``python -m sandbox_kernel.kubernetes.commands k8s/sandbox`` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sandbox_kernel.cli import main
from sandbox_kernel.kubernetes.commands import rendered_file, rendered_objects
from sandbox_kernel.languages import LANGUAGES

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate with `python -m sandbox_kernel.kubernetes.commands k8s/sandbox`"


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SANDBOX_IMAGE_PYTHON",
        "SANDBOX_IMAGE_NODE",
        "SANDBOX_IMAGE_BASH",
        "SANDBOX_MEMORY_LIMIT",
        "SANDBOX_CPU_LIMIT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_rendered_file_matches_the_code(language: str) -> None:
    path = ROOT / "k8s" / "sandbox" / f"{language}.yaml"
    assert path.is_file(), f"{path} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == rendered_file(language), f"{path} drifted from the code: {REGENERATE}"


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_cli_render_prints_the_same_objects(language: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--language", language]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == rendered_objects(language)
    stored = list(yaml.safe_load_all((ROOT / "k8s" / "sandbox" / f"{language}.yaml").read_text(encoding="utf-8")))
    assert printed == stored
