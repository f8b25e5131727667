"""The notebook's files on the Kubernetes backend (issue 9, items 2 and 7), on the real cluster:
the pod cannot see the kernel's disk, so the notebook's directory is copied in at start through
the agent protocol (bounded), and %sandbox upload / download move files both ways, with the
same refusals as the local backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "data.csv").write_text("a,b\n1,2\n")
    (d / "sub").mkdir()
    (d / "sub" / "inner.txt").write_text("inner")
    (d / "analysis.ipynb").write_text('{"cells": []}')
    (d / ".env").write_text("TOKEN=secret")
    (d / "large.bin").write_bytes(os.urandom(700 * 1024))
    (tmp_path / "secret").write_text("SECRET")
    (d / "planted.txt").symlink_to(tmp_path / "secret")
    return d


@pytest.mark.parametrize(
    "language,code",
    [
        (
            "python",
            "import os; print(os.getcwd()); print(open('data.csv').read().strip()); print(sorted(os.listdir('.')))",
        ),
        (
            "node",
            "const fs = require('fs'); console.log(process.cwd()); console.log(fs.readFileSync('data.csv', 'utf8').trim()); "
            "console.log(JSON.stringify(fs.readdirSync('.').filter(n => !n.startsWith('.')).sort()).replace(/\"/g, \"'\").replace(/,/g, ', '))",
        ),
        (
            "bash",
            "pwd; cat data.csv | tail -1 | sed 's/^/a,b\\n/' | tail -2 | head -1 >/dev/null; head -2 data.csv | tail -1 | sed 's/^/a,b\\n/'; "
            'printf "[\'%s\']\\n" "$(ls | sort | paste -sd, | sed "s/,/\', \'/g")"',
        ),
    ],
)
def test_the_notebook_directory_is_copied_in_at_start(
    language: str, code: str, k8s_kernel: Callable[..., Any], notebook_dir: Path
) -> None:
    kernel = k8s_kernel(language, "--Sandbox.workspace_limit=512Ki", cwd=notebook_dir)
    cell = kernel.run(code)
    assert cell.reply["status"] == "ok", cell
    lines = cell.stdout.splitlines()
    assert lines[0] == "/home/sandbox" and lines[1:3] == ["a,b", "1,2"], lines
    # Hidden files, symlinks and what is over the limit stay on the host; notebooks come along.
    assert lines[3] == "['analysis.ipynb', 'data.csv', 'sub']", lines
    assert "'large.bin' (700.0 KiB): the copy would hold more than 512.0 KiB" in cell.stderr, cell.stderr
    assert "'planted.txt': a symlink, left out" in cell.stderr
    assert kernel.run("true" if language == "bash" else "1").stderr == ""  # told once


def test_upload_and_download_on_kubernetes(k8s_kernel: Callable[..., Any], notebook_dir: Path) -> None:
    kernel = k8s_kernel("python", "--Sandbox.workspace=hidden", cwd=notebook_dir)
    assert kernel.run("import os; print(sorted(os.listdir('.')))").stdout == "[]\n"  # hidden: nothing copied
    cell = kernel.run("%sandbox upload large.bin sub")
    assert cell.reply["status"] == "ok" and "uploaded 2 files" in cell.stdout, cell
    cell = kernel.run(
        "import hashlib\nprint(hashlib.sha256(open('large.bin', 'rb').read()).hexdigest(), open('sub/inner.txt').read())"
    )
    import hashlib

    assert cell.stdout.split() == [hashlib.sha256((notebook_dir / "large.bin").read_bytes()).hexdigest(), "inner"]
    kernel.run(
        "open('result.csv', 'w').write('x,y\\n3,4\\n'); open('analysis.ipynb', 'w').write('evil'); open('planted.txt', 'w').write('x')"
    )
    cell = kernel.run("%sandbox download result.csv")
    assert cell.reply["status"] == "ok", cell
    assert (notebook_dir / "result.csv").read_text() == "x,y\n3,4\n" and (
        notebook_dir / "result.csv"
    ).stat().st_uid == os.geteuid()
    for name, why in (
        ("analysis.ipynb", "it is a notebook"),
        ("planted.txt", "a symlink of that name"),
        ("../x", "goes up with '..'"),
    ):
        cell = kernel.run(f"%sandbox download {name}")
        assert cell.reply["status"] == "error" and why in cell.error["evalue"], cell
    assert (notebook_dir / "analysis.ipynb").read_text() == '{"cells": []}' and (
        notebook_dir.parent / "secret"
    ).read_text() == "SECRET"
