"""The study notebooks opened on the LOCAL sandbox (what `bash scripts/start.sh` gives a learner).

Each notebook's first code cell checks where the kernel runs and, on the local backend, stops
"Run All" with one readable error that says so and how to get the Kubernetes kernel, instead of a
TypeError, "Network is unreachable" or a write to / that succeeds further down. (On Kubernetes the
same cell passes: tests/e2e/test_notebooks.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import nbformat
import pytest

from kernels import errors, run_cell, running_kernel

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def py(local_kernelspecs: Path) -> Iterator[Any]:
    with running_kernel("sandbox-python") as (_km, kc):
        yield kc


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_first_code_cell_says_the_notebook_needs_kubernetes(py: Any, path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first["id"] == "backend", f"{path.name}: the backend check must be the first code cell"
    assert "raises-exception" not in first.get("metadata", {}).get("tags", []), "it must stop Run All"
    reply, outputs = run_cell(py, first.source)
    assert reply["status"] == "error"
    [error] = errors(outputs)
    assert error["ename"] == "NeedsKubernetes", error
    for words in ("LOCAL sandbox", "Sandbox (Python) · Kubernetes", "tests/cluster/up", "README"):
        assert words in error["evalue"], error["evalue"]
    assert len(error["traceback"]) <= 6, "one readable error, not a long traceback"
