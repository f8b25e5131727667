"""Where a setting's value comes from (sessions.py's docstring and the README say the same):
the backend: environment > command line > config file > 'local'; every other setting: command
line > config file > environment > default. Checked through the kernel application's own
configuration loading (SandboxKernelApp: its command line and sandbox_kernel_config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.kernelapp import SandboxKernelApp, _may_be_kubernetes
from sandbox_kernel.sessions import BACKEND_ENV, DEFAULT_BACKEND, chosen_backend, sandbox_settings


def app_config(argv: list[str]) -> Any:
    app = SandboxKernelApp()
    app.parse_command_line(argv)
    app.load_config_file()
    return app.config


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Jupyter config directory, the only one with a sandbox_kernel_config.py."""
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(tmp_path))
    for name in ("SANDBOX_TIMEOUT", "SANDBOX_MEMORY_LIMIT", BACKEND_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write_config_file(config_dir: Path, backend: str, timeout: float) -> None:
    (config_dir / "sandbox_kernel_config.py").write_text(
        f"c.SandboxKernel.backend = {backend!r}\nc.Sandbox.timeout = {timeout!r}\n"
    )


def test_nothing_set_gives_the_defaults(config_dir: Path) -> None:
    config = app_config([])
    assert chosen_backend(config.SandboxKernel.get("backend")) == DEFAULT_BACKEND == "local"
    assert sandbox_settings(config).timeout == 30.0


def test_a_setting_comes_from_the_command_line_then_the_config_file_then_the_environment(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_TIMEOUT", "9")
    assert sandbox_settings(app_config([])).timeout == 9.0  # environment over the default
    write_config_file(config_dir, "local", 7)
    assert sandbox_settings(app_config([])).timeout == 7.0  # config file over the environment
    assert sandbox_settings(app_config(["--Sandbox.timeout=5"])).timeout == 5.0  # command line over both


def test_the_backend_comes_from_the_environment_then_the_command_line_then_the_config_file(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config_file(config_dir, "kubernetes", 7)
    assert chosen_backend(app_config([]).SandboxKernel.get("backend")) == "kubernetes"
    on_command_line = app_config(["--SandboxKernel.backend=local"]).SandboxKernel.get("backend")
    assert chosen_backend(on_command_line) == "local"
    # An installed kernelspec always names its backend on the command line: the environment wins.
    monkeypatch.setenv(BACKEND_ENV, "kubernetes")
    assert chosen_backend(on_command_line) == "kubernetes"


def test_the_kubernetes_head_start_is_skipped_only_when_the_backend_is_known_to_be_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kernelapp.py begins kubernetes/early.py unless the environment or the command line (which
    win over config files) already name another backend."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert _may_be_kubernetes([])  # a config file may say kubernetes
    assert not _may_be_kubernetes(["-f", "c.json", "--SandboxKernel.backend=local"])
    assert _may_be_kubernetes(["--SandboxKernel.backend=kubernetes"])
    monkeypatch.setenv(BACKEND_ENV, "kubernetes")
    assert _may_be_kubernetes(["--SandboxKernel.backend=local"])
    monkeypatch.setenv(BACKEND_ENV, "local")
    assert not _may_be_kubernetes(["--SandboxKernel.backend=kubernetes"])
