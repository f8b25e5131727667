"""JupyterLab in headless Chromium: pick "Sandbox (Python)" in the launcher and run a cell.

A real ``jupyter lab`` server offers the Sandbox kernelspecs (JUPYTER_PATH from the
``local_kernelspecs`` fixture); Debian's ``chromium`` is driven by npm ``playwright-core``
(``browser/lab_run_cell.js``), which needs no browser download. The screenshot is kept in
``artifacts/jupyterlab-sandbox-python.png`` for CI.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "browser" / "lab_run_cell.js"
SCREENSHOT = REPO / "artifacts" / "jupyterlab-sandbox-python.png"
# Installed by scripts/install-deps.sh (test extras); keep the two in step.
PLAYWRIGHT_VERSION = "1.65.1"
PLAYWRIGHT_DIR = Path(
    os.environ.get("SANDBOX_KERNEL_PLAYWRIGHT_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sandbox-kernel" / "playwright"
)
CGROUP_V1_PIDS = Path("/sys/fs/cgroup/pids/sandbox-kernel")
CGROUP_V2 = Path("/sys/fs/cgroup/sandbox-kernel")


def playwright_core() -> Path:
    """The playwright-core package, installed with npm if scripts/install-deps.sh has not yet."""
    package = PLAYWRIGHT_DIR / "node_modules" / "playwright-core"
    manifest = package / "package.json"
    if not manifest.exists() or json.loads(manifest.read_text())["version"] != PLAYWRIGHT_VERSION:
        subprocess.run(
            ["npm", "install", "--prefix", str(PLAYWRIGHT_DIR), "--no-audit", "--no-fund", "--silent",
             f"playwright-core@{PLAYWRIGHT_VERSION}"],
            check=True, timeout=600,
        )
    return package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def sandbox_kernels(server_pid: int) -> list[int]:
    kernels = []
    for pid in children(server_pid):
        try:
            if b"sandbox_kernel.kernelapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                kernels.append(pid)
        except FileNotFoundError:
            continue
    return kernels


def sandbox_groups(pid: int) -> list[Path]:
    parent = CGROUP_V1_PIDS if CGROUP_V1_PIDS.is_dir() else CGROUP_V2
    return sorted(parent.glob(f"k{pid}-*"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def lab(local_kernelspecs: Path, tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """A JupyterLab server on a free loopback port; yields (base URL, token, process)."""
    token = secrets.token_hex(16)
    port = free_port()
    root = tmp_path / "notebooks"
    root.mkdir()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),  # none of the user's settings
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
    }
    # No "get notified about Jupyter news?" toast over the screenshot (and no fetch attempt).
    notification = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false"}))
    log = (tmp_path / "lab.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
         "--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/api/kernelspecs?token={token}", timeout=5) as reply:
                    specs = json.load(reply)["kernelspecs"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "JupyterLab did not start within 90 s"
                time.sleep(0.5)
        assert {"sandbox-python", "sandbox-node", "sandbox-bash"} <= set(specs)
        yield url, token, server
    finally:
        if server.poll() is None:
            server.terminate()  # SIGTERM: Jupyter Server shuts its kernels down, then exits
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()


def test_sandbox_python_runs_a_cell_in_jupyterlab(lab: tuple[str, str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, token, server = lab
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run scripts/install-deps.sh test,lab"
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PLAYWRIGHT_CORE": str(playwright_core()),
        "CHROMIUM": chromium,
        "LAB_URL": url,
        "LAB_TOKEN": token,
        "USER_DATA_DIR": str(tmp_path / "chromium-profile"),
        "SCREENSHOT": str(SCREENSHOT),
        "KERNEL_DISPLAY_NAME": "Sandbox (Python)",
        "CODE": "print(6*7)",
        "EXPECT": "42",
    }
    run = subprocess.run(["node", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240)
    lines = run.stdout.strip().splitlines()
    assert lines, f"the browser script printed nothing; stderr:\n{run.stderr}"
    seen = json.loads(lines[-1])
    assert run.returncode == 0 and seen["ok"], f"{json.dumps(seen, indent=1)}\nstderr:\n{run.stderr}"

    assert "Sandbox (Python)" in seen["tiles"] and "Sandbox (Node.js)" in seen["tiles"]
    assert seen["typed"] == "print(6*7)"
    assert seen["output"].strip() == "42"
    assert seen["kernel"] == "Sandbox (Python)"
    assert seen["prompt"] == "[1]:"
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000

    # The cell really ran in a sandbox of the Sandbox kernel the notebook started.
    [kernel] = sandbox_kernels(server.pid)
    groups = sandbox_groups(kernel)
    assert len(groups) == 1
    pids = {int(p) for p in (groups[0] / "cgroup.procs").read_text().split()}
    assert pids

    # Stopping JupyterLab (SIGTERM) shuts the kernel down, and the kernel its sandbox.
    server.terminate()
    assert server.wait(60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (alive(kernel) or any(alive(p) for p in pids)):
        time.sleep(0.2)
    assert not alive(kernel) and not [p for p in pids if alive(p)]
    assert not sandbox_groups(kernel)
