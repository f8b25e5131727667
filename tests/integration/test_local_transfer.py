"""``%sandbox upload`` / ``%sandbox download`` on the local backend, in every language, through
jupyter_client (the agent protocol's file_write / file_read), and the download direction attacked."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from kernels import errors, run_cell, running_kernel, text

pytestmark = pytest.mark.usefixtures("local_kernelspecs")

CREATE = {
    "sandbox-python": "open('made.txt', 'w').write('from the sandbox'); open('/tmp/own', 'w').write('own'); import os; os.mkfifo('fifo'); os.symlink('/tmp/own', 'link')",
    "sandbox-node": "const fs = require('fs'); fs.writeFileSync('made.txt', 'from the sandbox'); fs.writeFileSync('/tmp/own', 'own'); fs.symlinkSync('/tmp/own', 'link'); require('child_process').execSync('mkfifo fifo')",
    "sandbox-bash": "printf 'from the sandbox' > made.txt; printf own > /tmp/own; mkfifo fifo; ln -s /tmp/own link",
}


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "data.csv").write_text("a,b\n1,2\n")
    (d / "big.bin").write_bytes(os.urandom(3 * 2**20 + 123))
    (d / "analysis.ipynb").write_text('{"cells": []}')
    (d / "sub").mkdir()
    (d / "sub" / "inner.txt").write_text("inner")
    (d / ".env").write_text("TOKEN=secret")
    (tmp_path / "secret").write_text("SECRET")
    (d / "planted.txt").symlink_to(tmp_path / "secret")
    return d


def cell(kc: Any, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``, keeping every output message (update_display_data too)."""
    seen: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("stream", "display_data", "update_display_data", "error"):
            seen.append({"type": msg["msg_type"], "t": time.monotonic(), **msg["content"]})

    return kc.execute_interactive(code, timeout=120, output_hook=hook)["content"], seen


def refused(kc: Any, code: str) -> str:
    reply, outputs = run_cell(kc, code)
    assert reply["status"] == "error", outputs
    return errors(outputs)[0]["evalue"]


@pytest.mark.parametrize("kernel", list(CREATE))
def test_upload_and_download_in_every_language(kernel: str, notebook_dir: Path) -> None:
    big = (notebook_dir / "big.bin").read_bytes()
    with running_kernel(kernel, argv=["--Sandbox.workspace=hidden"], cwd=notebook_dir) as (_km, kc):
        reply, outputs = cell(kc, "%sandbox upload data.csv big.bin sub")
        assert reply["status"] == "ok", outputs
        assert "uploaded 3 files (3.0 MiB) to the sandbox's working directory" in text(outputs)
        progress = [o for o in outputs if o["type"] in ("display_data", "update_display_data")]
        assert progress and progress[0]["type"] == "display_data" and progress[-1]["type"] == "update_display_data"
        assert {o["transient"]["display_id"] for o in progress} == {progress[0]["transient"]["display_id"]}
        assert "big.bin: 3.0 MiB of 3.0 MiB (100%" in progress[-1]["data"]["text/plain"]
        reply, outputs = run_cell(kc, CREATE[kernel])
        assert reply["status"] == "ok", outputs
        reply, outputs = run_cell(kc, "%sandbox download made.txt big.bin sub/inner.txt")
        assert reply["status"] == "ok" and "downloaded 3 files" in text(outputs), outputs
        assert (notebook_dir / "made.txt").read_text() == "from the sandbox"
        assert (notebook_dir / "made.txt").stat().st_uid == os.geteuid()
        assert refused(kc, "%sandbox download fifo") == "'fifo' could not be read in the sandbox: not a regular file."
        # A symlink inside the sandbox reaches only the sandbox's own files; the host gets a file.
        assert run_cell(kc, "%sandbox download link")[0]["status"] == "ok"
        assert (notebook_dir / "link").read_text() == "own" and not (notebook_dir / "link").is_symlink()
        assert (notebook_dir / "big.bin").read_bytes() == big


def test_download_refuses_what_would_hurt_the_host(notebook_dir: Path, tmp_path: Path) -> None:
    argv = ["--Sandbox.workspace=hidden", "--Sandbox.workspace_limit=1Mi"]
    with running_kernel("sandbox-python", argv=argv, cwd=notebook_dir) as (_km, kc):
        run_cell(
            kc,
            "open('analysis.ipynb', 'w').write('{\"evil\": 1}'); open('planted.txt', 'w').write('x')\n"
            "open('.bashrc', 'w').write('evil'); open('huge', 'wb').write(b'x' * 2**21)\n"
            "import os; os.makedirs('a/b', exist_ok=True); open('a/b/c.txt', 'w').write('c')",
        )
        assert "not moved: '../escape' goes up with '..'" in refused(kc, "%sandbox download ../escape")
        assert "it is a notebook" in refused(kc, "%sandbox download analysis.ipynb")
        assert "is hidden" in refused(kc, "%sandbox download .bashrc")
        assert "a symlink of that name is in the notebook's directory" in refused(kc, "%sandbox download planted.txt")
        assert "more than 1.0 MiB" in refused(kc, "%sandbox download huge")
        assert "control character" in refused(kc, "%sandbox download 'two\tlines'")  # a magic is one line: a tab
        # An absolute name in the sandbox is saved under its last name; nothing leaves the directory.
        run_cell(kc, "open('/tmp/abs.txt', 'w').write('abs')")
        assert run_cell(kc, "%sandbox download /tmp/abs.txt a/b/c.txt")[0]["status"] == "ok"
        assert (notebook_dir / "abs.txt").read_text() == "abs" and (notebook_dir / "a/b/c.txt").read_text() == "c"
    assert (notebook_dir / "analysis.ipynb").read_text() == '{"cells": []}' and (
        tmp_path / "secret"
    ).read_text() == "SECRET"
    assert (
        not (notebook_dir / "huge").exists()
        and not (notebook_dir / ".bashrc").exists()
        and not (tmp_path / "escape").exists()
    )


def test_upload_refuses_hidden_files_symlinks_and_outside_names(notebook_dir: Path) -> None:
    with running_kernel("sandbox-python", argv=["--Sandbox.workspace=hidden"], cwd=notebook_dir) as (_km, kc):
        assert "'.env' is hidden" in refused(kc, "%sandbox upload .env")
        assert "it is a symlink" in refused(kc, "%sandbox upload planted.txt")
        assert "absolute path" in refused(kc, "%sandbox upload /etc/passwd")
        assert "goes up with '..'" in refused(kc, "%sandbox upload ../secret")
        reply, outputs = run_cell(kc, "%sandbox upload .")
        assert "names the directory itself" in errors(outputs)[0]["evalue"]
    with running_kernel("sandbox-python", cwd=notebook_dir) as (_km, kc):  # read-only: already there
        assert "the file is already there" in refused(kc, "%sandbox upload data.csv")
