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


WRITE_OUT = {
    "python": "open('out.csv', 'w').write('x,y\\n3,4\\n'); open('sub/inner.txt', 'a').write('+')",
    "node": "const fs = require('fs'); fs.writeFileSync('out.csv', 'x,y\\n3,4\\n'); fs.appendFileSync('sub/inner.txt', '+')",
    "bash": "printf 'x,y\\n3,4\\n' > out.csv; printf + >> sub/inner.txt",
}


@pytest.mark.parametrize("language", list(WRITE_OUT))
def test_read_write_a_file_a_cell_writes_appears_next_to_the_notebook_after_the_cell(
    language: str, k8s_kernel: Callable[..., Any], notebook_dir: Path
) -> None:
    kernel = k8s_kernel(language, "--Sandbox.workspace=read-write", "--Sandbox.workspace_limit=512Ki", cwd=notebook_dir)
    data = (notebook_dir / "data.csv").stat()
    cell = kernel.run(WRITE_OUT[language])
    assert cell.reply["status"] == "ok", cell
    assert (notebook_dir / "out.csv").read_text() == "x,y\n3,4\n", cell.stderr
    assert (notebook_dir / "out.csv").stat().st_uid == os.geteuid()
    assert (notebook_dir / "sub" / "inner.txt").read_text() == "inner+"  # a changed file comes back too
    # What the cell did not change is not written again (the same inode: never replaced).
    assert (notebook_dir / "data.csv").stat().st_ino == data.st_ino
    assert "written back" not in cell.stderr and "was not copied" not in cell.stderr, cell.stderr
    cell = kernel.run(
        "rm out.csv"
        if language == "bash"
        else ("require('fs').unlinkSync('out.csv')" if language == "node" else "import os; os.remove('out.csv')")
    )
    assert cell.reply["status"] == "ok" and cell.stderr == "", cell
    assert (notebook_dir / "out.csv").exists()  # deleted in the sandbox: it stays on the host


def test_read_write_refuses_notebooks_and_symlinks_on_kubernetes(
    k8s_kernel: Callable[..., Any], notebook_dir: Path
) -> None:
    kernel = k8s_kernel("python", "--Sandbox.workspace=read-write", "--Sandbox.workspace_limit=512Ki", cwd=notebook_dir)
    assert kernel.run("1").reply["status"] == "ok"  # the copy-in's notices are told here
    cell = kernel.run(
        "import os\n"
        "open('notebook.ipynb', 'w').write('evil'); open('analysis.ipynb', 'w').write('evil')\n"
        "os.symlink('/etc/passwd', 'passwd'); os.symlink(%r, 'hostlink')\n"
        "open('planted.txt', 'w').write('overwrite')\n"  # a symlink to a secret on the host
        "open('.hidden', 'w').write('h'); open('kept.txt', 'w').write('kept')" % str(notebook_dir.parent / "secret")
    )
    assert cell.reply["status"] == "ok", cell
    err = cell.stderr
    assert "[sandbox] 'notebook.ipynb' was not copied: it is a notebook" in err, err
    assert "[sandbox] 'analysis.ipynb' was not copied: it is a notebook" in err
    assert "[sandbox] not written back: 'passwd': a symlink, left out" in err
    assert "[sandbox] not written back: 'hostlink': a symlink, left out" in err
    assert "[sandbox] 'planted.txt' was not copied: a symlink of that name is in the notebook's directory." in err
    assert (notebook_dir / "analysis.ipynb").read_text() == '{"cells": []}'
    assert (notebook_dir.parent / "secret").read_text() == "SECRET" and (notebook_dir / "planted.txt").is_symlink()
    for name in ("notebook.ipynb", "passwd", "hostlink", ".hidden"):
        assert not os.path.lexists(notebook_dir / name), name
    assert (notebook_dir / "kept.txt").read_text() == "kept"  # the rest of the cell's files still came back
    assert kernel.run("1").stderr == ""  # each refusal told once
