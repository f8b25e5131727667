"""``bash scripts/start.sh kubernetes``, the README's second command, end to end on the real cluster.

Run as a newcomer runs it (``env -i``, the stock PATH, a HOME of its own, a new virtual
environment), it must find the project's cluster (``tests/cluster/up``: already running here),
apply ``k8s/rbac/``, write the service account's kubeconfig into that HOME, register the
"· Kubernetes" kernels next to the local ones and serve JupyterLab on ``cka-study/``. A cell of
notebook 01 then runs through that JupyterLab in a pod, as the service account, and on the local
kernel stops with NeedsKubernetes. Then the same with ``--kubeconfig`` (an existing cluster: the
same one, named by its admin kubeconfig), reusing the environment.

The cluster's cache is passed explicitly (SANDBOX_CLUSTER_CACHE): ``up`` looks for it under
HOME, and with a HOME of its own would not find the running cluster and start it afresh.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import websocket
from kubernetes import client

from fixtures_kubernetes import KERNEL_ID_LABEL, REPO, SA_USER, wait_until
from jupyterlab import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

SCRIPT = REPO / "scripts" / "start.sh"
STOCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CACHE = Path(os.environ.get("SANDBOX_CLUSTER_CACHE") or Path.home() / ".cache/sandbox-kernel/cluster")
BACKEND_CELL = "".join(
    json.loads((REPO / "notebooks" / "01-resourcequota-and-limitrange.ipynb").read_text())["cells"][1]["source"]
)


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": STOCK_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SANDBOX_CLUSTER_CACHE": str(CACHE),
    }
    for name, value in os.environ.items():  # the CI machine's pip mirror or proxy, and the cluster's state dir
        if (
            name.startswith("PIP_")
            or name.lower() in ("http_proxy", "https_proxy", "no_proxy")
            or name == "SANDBOX_CLUSTER_STATE"
        ):
            env[name] = value
    env.setdefault("PIP_CACHE_DIR", os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"))
    return {**env, **extra}


class Started:
    """``start.sh`` running in its own session; its output so far."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd="/",
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def url(self, timeout: float) -> str:
        """The URL it prints once JupyterLab is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                m
                for line in self.lines
                if (m := re.search(r"(http://127\.0\.0\.1:\d+/lab/tree/cka-study\?token=\w+)", line))
            ]
            if found and any("JupyterLab is ready" in line for line in self.lines):
                return found[-1].group(1)
            assert self.proc.poll() is None, "start.sh ended:\n" + "\n".join(self.lines[-60:])
            time.sleep(1)
        raise AssertionError("no URL within the time:\n" + "\n".join(self.lines[-60:]))

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # JupyterLab (the script exec'ed it) and its kernels
            self.proc.wait(90)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(5)


def api(url: str, path: str, method: str = "GET", body: Any = None) -> Any:
    base, token = url.split("/lab/")[0], url.rsplit("token=", 1)[1]
    request = urllib.request.Request(
        f"{base}{path}?token={token}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        data = reply.read()
    return json.loads(data) if data else None


def run_in_lab(url: str, kernel: str, cells: list[str]) -> tuple[list[str], str]:
    """Open notebook 01 on ``kernel`` in that JupyterLab, run ``cells``; their outputs, and the kernel id."""
    session = api(
        url,
        "/api/sessions",
        "POST",
        {
            "path": "cka-study/01-resourcequota-and-limitrange.ipynb",
            "type": "notebook",
            "name": "",
            "kernel": {"name": kernel},
        },
    )
    kernel_id = session["kernel"]["id"]
    base, token = url.split("/lab/")[0], url.rsplit("token=", 1)[1]
    ws = websocket.create_connection(
        f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels?token={token}", timeout=300
    )
    outputs = []
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "msg_type": "execute_request",
                            "username": "test",
                            "session": uuid.uuid4().hex,
                            "version": "5.3",
                            "date": "",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "channel": "shell",
                        "buffers": [],
                        "content": {
                            "code": code,
                            "silent": False,
                            "store_history": True,
                            "user_expressions": {},
                            "allow_stdin": False,
                            "stop_on_error": False,
                        },
                    }
                )
            )
            text = ""
            while True:
                message = json.loads(ws.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if message["msg_type"] == "stream":
                    text += message["content"]["text"]
                elif message["msg_type"] == "error":
                    text += f"{message['content']['ename']}: {message['content']['evalue']}\n"
                elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                    break  # after every output of the request (its execute_reply may come first: another channel)
            outputs.append(text)
    finally:
        ws.close()
        api(url, f"/api/sessions/{session['id']}", "DELETE")
    return outputs, kernel_id


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    assert any(CACHE.glob("bin/k8s-*/kubectl")), f"no cluster cache at {CACHE}: set SANDBOX_CLUSTER_CACHE"
    home = tmp_path / "home"
    home.mkdir()
    yield home


def check_lab(url: str, home: Path, core_v1: client.CoreV1Api) -> None:
    specs = api(url, "/api/kernelspecs")["kernelspecs"]
    names = {name: spec["spec"]["display_name"] for name, spec in specs.items()}
    assert (
        names["sandbox-python"] == "Sandbox (Python)"
        and names["sandbox-python-kubernetes"] == "Sandbox (Python) · Kubernetes"
    ), names
    study = sorted(item["name"] for item in api(url, "/api/contents/cka-study")["content"])
    assert study == sorted([p.name for p in (REPO / "notebooks").glob("*.ipynb")] + ["README.md"])
    kubeconfig = home / ".config" / "sandbox-kernel" / "cluster-sandbox-kernel.kubeconfig"
    assert kubeconfig.is_file() and oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
    (backend, whoami), kernel_id = run_in_lab(url, "sandbox-python-kubernetes", [BACKEND_CELL, "%sandbox whoami"])
    assert re.fullmatch(r"Kubernetes backend: this cell ran in a pod of namespace sandbox-[0-9a-f]{8}\n", backend), (
        backend
    )
    assert re.search(rf"^username\s+{SA_USER}$", whoami, re.M), whoami  # the least-privilege identity, not the admin
    # Closing the notebook's session shut the kernel down: its namespace goes.
    wait_until(
        lambda: not core_v1.list_namespace(label_selector=f"{KERNEL_ID_LABEL}={kernel_id}").items,
        90,
        what="the Kubernetes kernel's namespace to be gone",
    )
    [local], _ = run_in_lab(url, "sandbox-python", [BACKEND_CELL])
    assert local.startswith("NeedsKubernetes: this kernel runs its cells on the LOCAL sandbox"), local


def test_start_kubernetes_on_the_projects_cluster_then_an_existing_one(
    home: Path, core_v1: client.CoreV1Api, kubeconfig: str, sandbox_images: dict[str, str]
) -> None:
    venv, notebooks = home / "venv", home / "notebooks"
    began = time.monotonic()
    started = Started(
        ["kubernetes", "--port", str(free_port()), "--venv", str(venv), "--notebooks", str(notebooks)], fresh_env(home)
    )
    try:
        url = started.url(1200)
        took = time.monotonic() - began
        text = "\n".join(started.lines)
        assert "cluster already running and Ready" in text, text  # found, not rebuilt
        assert "==> kubectl apply -k k8s/rbac/" in text and "==> registering the Sandbox kernels (Kubernetes" in text, (
            text
        )
        check_lab(url, home, core_v1)
        print(f"start.sh kubernetes with a new virtual environment: {took:.0f} s to the URL")
    finally:
        started.stop()

    # An existing cluster: the same one, by its admin kubeconfig; the environment is reused.
    images = {k: v for k, v in sandbox_images.items() if k.startswith("SANDBOX_IMAGE_")}  # no registry here
    began = time.monotonic()
    started = Started(
        [
            "kubernetes",
            "--kubeconfig",
            kubeconfig,
            "--port",
            str(free_port()),
            "--venv",
            str(venv),
            "--notebooks",
            str(notebooks),
        ],
        fresh_env(home, **images),
    )
    try:
        url = started.url(600)
        took = time.monotonic() - began
        text = "\n".join(started.lines)
        assert f"==> using the existing cluster of {kubeconfig}" in text and "tests/cluster/up" not in text, text
        check_lab(url, home, core_v1)
        print(f"start.sh kubernetes --kubeconfig, environment reused: {took:.0f} s to the URL")
    finally:
        started.stop()
