"""A real JupyterLab server and headless Chromium (npm playwright-core driving Debian's
chromium, no browser download), shared by the browser tests."""

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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Installed by scripts/install-deps.sh (test extras); keep the two in step.
PLAYWRIGHT_VERSION = "1.65.1"
PLAYWRIGHT_DIR = Path(
    os.environ.get("SANDBOX_KERNEL_PLAYWRIGHT_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sandbox-kernel" / "playwright"
)


def playwright_core() -> Path:
    """The playwright-core package, installed with npm if scripts/install-deps.sh has not yet."""
    package = PLAYWRIGHT_DIR / "node_modules" / "playwright-core"
    manifest = package / "package.json"
    if not manifest.exists() or json.loads(manifest.read_text())["version"] != PLAYWRIGHT_VERSION:
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(PLAYWRIGHT_DIR),
                "--no-audit",
                "--no-fund",
                "--silent",
                f"playwright-core@{PLAYWRIGHT_VERSION}",
            ],
            check=True,
            timeout=600,
        )
    return package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """A JupyterLab server on a free loopback port serving ``tmp_path/notebooks``, with its config
    in ``tmp_path/config`` (kernels read ``sandbox_kernel_config.py`` there); yields (base URL,
    token, process). The Sandbox kernelspecs must be on JUPYTER_PATH (``local_kernelspecs``)."""
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
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip",
            "127.0.0.1",
            f"--port={port}",
            "--allow-root",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(tmp_path),
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


def run_browser_script(
    script: Path, url: str, token: str, profile: Path, screenshot: Path, timeout: float = 300, **settings: str
) -> dict:
    """Run one of the ``browser/*.js`` Playwright scripts against the JupyterLab at ``url`` in
    Debian's headless Chromium; return the JSON object it prints last (it must say ``ok``)."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run scripts/install-deps.sh test,lab"
    screenshot.parent.mkdir(exist_ok=True)
    screenshot.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PLAYWRIGHT_CORE": str(playwright_core()),
        "CHROMIUM": chromium,
        "LAB_URL": url,
        "LAB_TOKEN": token,
        "USER_DATA_DIR": str(profile),
        "SCREENSHOT": str(screenshot),
        **settings,
    }
    run = subprocess.run(["node", str(script)], env=env, capture_output=True, text=True, timeout=timeout)
    lines = run.stdout.strip().splitlines()
    assert lines, f"the browser script printed nothing; stderr:\n{run.stderr}"
    seen = json.loads(lines[-1])
    assert run.returncode == 0 and seen["ok"], f"{json.dumps(seen, indent=1)}\nstderr:\n{run.stderr}"
    return seen
