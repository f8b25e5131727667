"""``bash scripts/start.sh``, the README's first command, as a newcomer runs it.

Each test runs the script with ``env -i`` (the stock PATH, a HOME of its own), as on a fresh
machine. Arguments are checked before anything is installed; the full run, on Debian's or
Ubuntu's own ``/usr/bin/python3`` where PEP 668 forbids ``pip install`` into the system, makes
its virtual environment, registers the kernels there and serves JupyterLab from a notebook
folder outside the checkout, with the study notebooks copied in.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "start.sh"
STOCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def fresh_env(home: Path) -> dict[str, str]:
    """What a new user's login shell has: the stock PATH and a HOME; pip's mirror settings kept."""
    env = {"PATH": STOCK_PATH, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb"}
    for name, value in os.environ.items():  # an index mirror or proxy of the CI machine
        if name.startswith("PIP_") or name.lower() in ("http_proxy", "https_proxy", "no_proxy"):
            env[name] = value
    # Reuse the machine's pip download cache (a fresh HOME would download everything again).
    env.setdefault("PIP_CACHE_DIR", os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"))
    return env


def run(home: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in fresh_env(home).items()), "bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_prints_usage_and_installs_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bash scripts/start.sh [lab|kubernetes|console] [--port N]"), result.stdout
    for option in ("--port N", "--notebooks DIR", "--venv DIR", "console", "kubernetes", "tests/cluster/up"):
        assert option in result.stdout
    assert result.stderr == ""
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == [], "--help must not create a virtual environment or folders"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "99999"], "--port must be a number from 1 to 65535, not '99999'"),
        (["--port", "abc"], "--port must be a number"),
        (["--port"], "--port needs a value"),
        (["console", "--port", "9000"], "--port is for lab, not console"),
        (["kubernetes", "--port", "abc"], "--port must be a number"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
        (["--kubeconfig", "/etc/hostname"], "--kubeconfig is for kubernetes, not lab"),
        (
            ["kubernetes", "--kubeconfig", "/nonexistent/admin.kubeconfig"],
            "--kubeconfig /nonexistent/admin.kubeconfig is not a file",
        ),
        (["kubernetes", "--kubeconfig"], "--kubeconfig needs a value"),
    ],
)
def test_bad_arguments_are_refused_before_installing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "==>" not in result.stdout, "nothing may be installed"
    assert list(tmp_path.iterdir()) == []


def test_a_busy_port_is_refused_before_installing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(tmp_path, "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} is in use" in result.stderr and "--port N" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _externally_managed(python: str) -> bool:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return bool(out) and (Path(out) / "EXTERNALLY-MANAGED").is_file()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, list[str], Path]]:
    """``bash scripts/start.sh --port N`` running in the background; its output lines so far."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = fresh_env(home)
    proc = subprocess.Popen(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", str(SCRIPT), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
        start_new_session=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield proc, port, lines, home
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # JupyterLab (the script exec'ed it) and its kernels
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(5)


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not Path("/usr/bin/python3").exists() or not _externally_managed("/usr/bin/python3"),
    reason="needs a Debian/Ubuntu system Python under PEP 668 (/usr/bin/python3, EXTERNALLY-MANAGED)",
)
def test_fresh_start_on_the_pep668_system_python(lab: tuple[subprocess.Popen[str], int, list[str], Path]) -> None:
    proc, port, lines, home = lab
    assert (
        subprocess.run(
            ["env", "-i", f"PATH={STOCK_PATH}", "sh", "-c", "command -v python3"], capture_output=True, text=True
        ).stdout.strip()
        == "/usr/bin/python3"
    )
    deadline = time.monotonic() + 840
    url = None
    while time.monotonic() < deadline and url is None:
        assert proc.poll() is None, "start.sh ended early:\n" + "\n".join(lines[-60:])
        url = next(
            (
                m.group(0)
                for line in lines
                for m in [re.search(r"http://127\.0\.0\.1:\d+/lab\?token=\w+", line)]
                if m and "==>" not in line and line.startswith("    ")
            ),
            None,
        )
        time.sleep(1)
    text = "\n".join(lines)
    assert url, "JupyterLab never became ready:\n" + "\n".join(lines[-60:])
    assert f":{port}/" in url
    venv = home / ".local" / "share" / "sandbox-kernel" / "venv"
    # Its own virtual environment on the system Python, with progress shown while installing.
    assert f"==> creating the virtual environment {venv}" in text, text
    assert (venv / "pyvenv.cfg").is_file()
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text()
    assert "Collecting jupyterlab" in text and "externally-managed-environment" not in text, text
    assert "Debugger warning" not in text

    token = url.rsplit("token=", 1)[1]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/kernelspecs", headers={"Authorization": f"token {token}"}
    )
    specs = json.load(urllib.request.urlopen(request, timeout=30))
    assert specs["default"] == "sandbox-python"
    sandbox = {name: spec["spec"] for name, spec in specs["kernelspecs"].items() if name.startswith("sandbox-")}
    assert {name: spec["display_name"] for name, spec in sandbox.items()} == {
        "sandbox-python": "Sandbox (Python)",
        "sandbox-node": "Sandbox (Node.js)",
        "sandbox-bash": "Sandbox (Bash)",
    }
    for spec in sandbox.values():
        assert spec["argv"][0] == str(venv / "bin" / "python3"), spec["argv"]
        assert "--SandboxKernel.backend=local" in spec["argv"]

    # JupyterLab serves the user's folder, not the checkout; the study notebooks are there.
    notebooks = home / "sandbox-notebooks"
    assert f"Serving notebooks from local directory: {notebooks}" in text, text
    study = sorted(p.name for p in (notebooks / "cka-study").iterdir())
    assert study == sorted([p.name for p in (REPO / "notebooks").glob("*.ipynb")] + ["README.md"])
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/contents", headers={"Authorization": f"token {token}"}
    )
    assert [item["name"] for item in json.load(urllib.request.urlopen(request, timeout=30))["content"]] == ["cka-study"]
