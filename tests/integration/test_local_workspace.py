"""The notebook's directory as the local sandbox's working directory (issue 9, items 2 and 7),
through jupyter_client: Jupyter starts the kernel in the notebook's directory (``cwd``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kernels import LOCAL_RUNTIMES, errors, run_cell, running_kernel, text

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    d.chmod(0o755)
    (d / "data.csv").write_text("a,b\n1,2\n")
    (d / "data.csv").chmod(0o644)
    (d / "analysis.ipynb").write_text('{"cells": []}')
    (tmp_path / "secret").write_text("SECRET")
    return d


def out(kc: Any, code: str) -> str:
    reply, outputs = run_cell(kc, code)
    assert reply["status"] == "ok", errors(outputs)
    return text(outputs)


def test_read_only_by_default_in_every_language(notebook_dir: Path) -> None:
    with running_kernel("sandbox-python", cwd=notebook_dir) as (_km, kc):
        assert (
            out(kc, "import os; print(os.getcwd()); print(open('data.csv').read(), end='')") == "/workspace\na,b\n1,2\n"
        )
        reply, outputs = run_cell(kc, "open('out.csv', 'w')")
        error = errors(outputs)[0]
        assert "Read-only file system" in error["evalue"]
        assert (
            "Sandbox.workspace = 'read-only'" in error["traceback"][-1]
            and "%sandbox download" in error["traceback"][-1]
        )
        assert "read-only at /workspace" in out(kc, "%sandbox status")
    with running_kernel("sandbox-node", cwd=notebook_dir) as (_km, kc):
        assert (
            out(kc, "console.log(process.cwd()); console.log(require('fs').readFileSync('data.csv', 'utf8').trim())")
            == "/workspace\na,b\n1,2\n"
        )
    with running_kernel("sandbox-bash", cwd=notebook_dir) as (_km, kc):
        assert out(kc, "pwd; head -1 data.csv; touch x 2>/dev/null || echo refused") == "/workspace\na,b\nrefused\n"
    assert sorted(p.name for p in notebook_dir.iterdir()) == ["analysis.ipynb", "data.csv"]


@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
def test_read_write_writes_back_after_each_cell_and_refuses_the_dangerous(
    notebook_dir: Path, tmp_path: Path, runtime: str
) -> None:
    argv = ["--Sandbox.workspace=read-write", f"--LocalSandbox.runtime={runtime}"]
    with running_kernel("sandbox-python", argv=argv, cwd=notebook_dir) as (_km, kc):
        assert (
            out(
                kc,
                "import os\nopen('out.csv', 'w').write('x,y\\n')\nos.makedirs('results', exist_ok=True)\n"
                "open('results/r.txt', 'w').write('r')\nprint(os.getuid(), os.getcwd())",
            )
            == "1000 /workspace\n"
        )
        assert (notebook_dir / "out.csv").read_text() == "x,y\n" and (notebook_dir / "results/r.txt").read_text() == "r"
        assert (notebook_dir / "out.csv").stat().st_uid == os.geteuid()  # the kernel's own uid
        # A file kept open across cells: what the cell wrote is there after it (no cache holds it back).
        out(kc, "log = open('log.txt', 'a'); log.write('one\\n'); log.flush()")
        assert (notebook_dir / "log.txt").read_text() == "one\n"
        out(kc, "log.write('two\\n'); log.flush(); open('data.csv', 'a').write('3,4\\n')")
        assert (notebook_dir / "log.txt").read_text() == "one\ntwo\n"
        assert (notebook_dir / "data.csv").read_text() == "a,b\n1,2\n3,4\n"
        reply, outputs = run_cell(
            kc,
            (
                "import os\n"
                f"os.symlink({str(tmp_path / 'secret')!r}, 'evil')\n"
                "os.symlink('analysis.ipynb', 'note-link')\n"
                "open('analysis.ipynb', 'w').write('{\"cells\": [\"planted\"]}')\n"
                "os.mkfifo('fifo')\n"
                "open('two\\nlines', 'w').write('x')\n"
                "os.makedirs('.git/hooks'); open('.git/hooks/pre-commit', 'w').write('evil')\n"
                "open('../escape', 'w')\n"
            ),
        )
        assert reply["status"] == "error"  # '..' is the sandbox's own directory: / is read-only
        said = text(outputs, "stderr")
        for expected in (
            "'evil': a symlink",
            "'note-link': a symlink",
            "'analysis.ipynb' was not copied: it is a notebook",
            "'fifo': not a regular file",
            "control character",
            # Under gVisor, as on Kubernetes, the agent's listing passes over hidden names (HOME's
            # .cache, .local there): they are never fetched, and not told about.
            *(["'.git' is hidden"] if runtime == "bubblewrap" else []),
        ):
            assert expected in said, said
        assert out(kc, "print('again')") == "again\n"  # nothing is repeated
        names = ["analysis.ipynb", "data.csv", "log.txt", "out.csv", "results"]
        assert sorted(p.name for p in notebook_dir.iterdir()) == names
        assert (notebook_dir / "analysis.ipynb").read_text() == '{"cells": []}'
        assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
def test_read_write_in_node_and_bash(notebook_dir: Path, runtime: str) -> None:
    argv = ["--Sandbox.workspace=read-write", f"--LocalSandbox.runtime={runtime}"]
    with running_kernel("sandbox-node", argv=argv, cwd=notebook_dir) as (_km, kc):
        code = "const fs = require('fs'); fs.writeFileSync('n.txt', fs.readFileSync('data.csv', 'utf8').length + '')"
        assert out(kc, code + "; console.log(process.cwd())") == "/workspace\n"
    assert (notebook_dir / "n.txt").read_text() == "8"
    with running_kernel("sandbox-bash", argv=argv, cwd=notebook_dir) as (_km, kc):
        assert out(kc, "mkdir -p out && wc -l < data.csv > out/lines && cat out/lines") == "2\n"
    assert (notebook_dir / "out" / "lines").read_text() == "2\n"


@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
def test_read_write_bounds_what_comes_back(notebook_dir: Path, runtime: str) -> None:
    argv = ["--Sandbox.workspace=read-write", "--Sandbox.workspace_limit=64Ki", "--Sandbox.workspace_files=20"]
    argv.append(f"--LocalSandbox.runtime={runtime}")
    with running_kernel("sandbox-python", argv=argv, cwd=notebook_dir) as (_km, kc):
        reply, outputs = run_cell(
            kc, "open('big.bin', 'wb').write(b'x' * 100000)\nfor i in range(30): open(f'f{i}', 'w').write('y')"
        )
        said = text(outputs, "stderr")
        assert "at most 64Ki in 20 files" in said or "more than 20 files" in said, said
        assert not (notebook_dir / "big.bin").exists()
        assert len([p for p in notebook_dir.iterdir() if p.name.startswith("f")]) <= 20


def test_hidden_and_the_home_directory(notebook_dir: Path) -> None:
    with running_kernel("sandbox-python", argv=["--Sandbox.workspace=hidden"], cwd=notebook_dir) as (_km, kc):
        assert (
            out(
                kc,
                "import os; print(os.getcwd(), [n for n in os.listdir('.') if n != '.ipython'], os.path.exists('/workspace/data.csv'))",
            )
            == "/home/sandbox [] False\n"
        )  # .ipython: IPython mode's own profile
    home = Path(os.path.expanduser("~"))
    with running_kernel("sandbox-python", cwd=home) as (_km, kc):
        reply, outputs = run_cell(kc, "import os; print(os.getcwd())")
        assert text(outputs) == "/home/sandbox\n"
        assert "is the kernel's home directory" in text(outputs, "stderr") and "not shown in the sandbox" in text(
            outputs, "stderr"
        )


def test_a_directory_the_sandbox_may_not_list_is_shown_as_a_read_only_copy(notebook_dir: Path) -> None:
    """A root kernel in a 0700 directory (pytest's own tmp_path, or a private project): the
    sandbox's unprivileged uid could not enter it, so it gets a copy, read-only all the same."""
    notebook_dir.chmod(0o700)
    (notebook_dir / "data.csv").chmod(0o600)
    with running_kernel("sandbox-python", cwd=notebook_dir) as (_km, kc):
        assert (
            out(kc, "import os; print(os.getcwd()); print(open('data.csv').read(), end='')") == "/workspace\na,b\n1,2\n"
        )
        reply, outputs = run_cell(kc, "open('out.csv', 'w')")
        assert "Read-only file system" in errors(outputs)[0]["evalue"]
        status = out(kc, "%sandbox status")
        assert ("a copy: the sandbox's uid may not list" in status) == (os.geteuid() == 0), status
    assert sorted(p.name for p in notebook_dir.iterdir()) == ["analysis.ipynb", "data.csv"]
