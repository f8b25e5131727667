"""The user's environment in a local sandbox, read-only (issue 9, item 1), through jupyter_client.

This machine's kernel runs pyenv's Python under root's 0700 home, the case the issue names: the
sandbox's own uid cannot traverse /root, yet Sandbox (Python) must run that environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernels import errors, run_cell, running_kernel, text
from sandbox_kernel.local import environment

pytestmark = pytest.mark.usefixtures("local_kernelspecs")


def out(kc: Any, code: str) -> str:
    reply, outputs = run_cell(kc, code)
    assert reply["status"] == "ok", errors(outputs)
    return text(outputs)


def test_python_runs_the_kernel_s_environment_read_only_even_under_a_closed_home() -> None:
    import traitlets  # installed in the kernel's environment, not in the system's

    with running_kernel("sandbox-python") as (_km, kc):
        seen = out(
            kc,
            "import sys, os, traitlets\nprint(sys.prefix); print(traitlets.__file__); print(os.getuid())\n"
            "try:\n    open(os.path.join(sys.prefix, 'planted'), 'w')\nexcept OSError as e:\n    print('write', e.errno)\n",
        )
        assert seen.split("\n")[:4] == [os.path.realpath(sys.prefix), traitlets.__file__, "1000", "write 30"], (
            seen
        )  # EROFS
        if sys.prefix.startswith("/root/"):  # only the environment came along, not the home
            assert out(kc, "import os; print(os.listdir('/root'))").strip() == repr([sys.prefix.split("/")[2]])
        reply, outputs = run_cell(kc, "import surely_not_installed_pkg.sub")
        tb = errors(outputs)[0]["traceback"]
        assert errors(outputs)[0]["ename"] == "ModuleNotFoundError"
        assert "-m pip install surely_not_installed_pkg" in tb[-1] and os.path.realpath(sys.prefix) in tb[-1], tb


def test_a_venv_in_a_closed_directory_is_its_own_environment(tmp_path: Path) -> None:
    """A venv (with its base interpreter under /root) in pytest's 0700 tmp directory, below /tmp:
    its own packages import, the kernel's do not (no system site packages)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "envfiles_probe.py").write_text("WHERE = __file__\n")
    argv = [f"--LocalSandbox.python_environment={venv}"]
    with running_kernel("sandbox-python", argv=argv) as (_km, kc):
        seen = out(
            kc,
            "import sys, envfiles_probe\nprint(sys.prefix, envfiles_probe.WHERE)\n"
            "try:\n    import traitlets\nexcept ImportError:\n    print('no traitlets')\n",
        )
        assert seen.split() == [str(venv), str(site / "envfiles_probe.py"), "no", "traitlets"], seen
        assert out(kc, "import tempfile, os; print(os.access('/tmp', os.W_OK))").strip() == "True"  # /tmp stays its own


def test_system_environment_and_bash_path() -> None:
    with running_kernel("sandbox-python", argv=["--LocalSandbox.python_environment=system"]) as (_km, kc):
        assert out(kc, "import sys; print(sys.executable)").strip() == "/usr/bin/python3"
    with running_kernel("sandbox-bash") as (_km, kc):
        seen = out(kc, "echo $PATH; command -v python3").split("\n")
        bin_dir = environment.python_environment("kernel").bin_dir or "/usr/local/bin"  # the same PATH tools as Python
        assert seen[0].startswith(bin_dir + ":") and seen[1] == f"{bin_dir}/python3", seen


def test_node_finds_a_configured_node_modules_under_a_closed_home(tmp_path: Path) -> None:
    modules = tmp_path / "node_modules"
    (modules / "envfiles-probe").mkdir(parents=True)
    (modules / "envfiles-probe" / "index.js").write_text("module.exports = 'probe ok';\n")
    with running_kernel("sandbox-node", argv=[f"--LocalSandbox.node_modules={modules}"]) as (_km, kc):
        assert "probe ok" in out(kc, "console.log(require('envfiles-probe'))")
        reply, outputs = run_cell(kc, "require('fs').writeFileSync(process.env.NODE_PATH + '/x', 'y')")
        assert reply["status"] == "error" and "EROFS" in str(errors(outputs)), errors(outputs)


def test_read_only_paths_under_a_closed_home_are_readable_and_hidden_ones_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "table.csv").write_text("a,b\n1,2\n")
    os.chmod(tmp_path, 0o700)
    with running_kernel("sandbox-bash", argv=[f"--LocalSandbox.read_only_paths={data}"]) as (_km, kc):
        assert out(kc, f"cat {data}/table.csv; touch {data}/x 2>&1 || echo refused").split("\n")[:3] == [
            "a,b",
            "1,2",
            f"touch: cannot touch '{data}/x': Read-only file system",
        ]
    for bad, why in (("/home", "/home/sandbox"),):  # the other cases: tests/unit/test_local_environment.py
        with running_kernel("sandbox-bash", argv=[f"--LocalSandbox.read_only_paths={bad}"]) as (_km, kc):
            reply, outputs = run_cell(kc, "echo hi")
            assert reply["status"] == "error", outputs
            message = errors(outputs)[0]["evalue"]
            assert "LocalSandbox.read_only_paths" in message and why in message, message
