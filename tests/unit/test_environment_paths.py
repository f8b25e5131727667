"""Which host paths a local sandbox sees (sandbox_kernel/local/environment.py), without a sandbox."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sandbox_kernel.errors import ConfigError
from sandbox_kernel.local import bwrap, environment


def test_the_kernel_s_environment_is_its_prefix_and_base() -> None:
    env = environment.python_environment("kernel")
    prefix = os.path.realpath(sys.prefix)
    assert env.prefix == prefix and env.python.startswith(prefix + "/bin/")
    if not prefix.startswith("/usr"):
        assert prefix in env.mounts and env.bin_dir == os.path.dirname(env.python)
    assert not any(m == "/usr" or m.startswith("/usr/") for m in env.mounts)  # the system is there anyway
    assert environment.python_environment("system").python == "/usr/bin/python3"


def test_a_venv_brings_its_base_interpreter_s_prefix(tmp_path: Path) -> None:
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3.11").write_text("")
    (venv / "bin" / "python3").symlink_to(base / "bin" / "python3.11")
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\ninclude-system-site-packages = false\n")
    env = environment.python_environment(str(venv))
    assert env.python == f"{venv}/bin/python3" and set(env.mounts) == {str(venv), str(base)}
    with pytest.raises(ConfigError, match="no bin/python3"):
        environment.python_environment(str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="neither"):
        environment.python_environment("relative/venv")


def test_an_environment_may_not_show_a_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home" / "alice"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "python3").write_text("")
    monkeypatch.setenv("HOME", str(home))
    for prefix in (home, tmp_path / "home"):  # the home itself, or a directory holding it
        (prefix / "bin").mkdir(exist_ok=True)
        (prefix / "bin" / "python3").write_text("")
        with pytest.raises(ConfigError, match="home directory"):
            environment.python_environment(str(prefix))


@pytest.mark.parametrize(
    "path, point",
    [
        ("/tmp", "/tmp"),
        ("/proc/self", "/proc"),
        ("/dev/shm", "/dev"),
        ("/home", "/home/sandbox"),
        ("/home/sandbox/x", "/home/sandbox"),
        ("/workspace", "/workspace"),
        ("/", "/proc"),
        ("/etc", "/etc/passwd"),
        ("/opt", "/opt/sandbox-agent"),
    ],
)
def test_paths_the_sandbox_s_own_mounts_would_hide_are_refused(path: str, point: str) -> None:
    with pytest.raises(ConfigError) as info:
        environment.check_not_hidden("LocalSandbox.read_only_paths", path, bwrap.RESERVED)
    assert point in str(info.value) and "LocalSandbox.read_only_paths" in str(info.value)


def test_paths_below_tmp_and_elsewhere_are_allowed() -> None:
    for path in ("/tmp/venv", "/srv/data", "/root/.pyenv/versions/3.11.7", "/etc/ssl"):
        environment.check_not_hidden("LocalSandbox.read_only_paths", path, bwrap.RESERVED)
    with pytest.raises(ConfigError, match="absolute"):
        environment.check_not_hidden("LocalSandbox.read_only_paths", "data", bwrap.RESERVED)


def test_a_staged_plan_binds_views_made_in_a_private_mount_namespace(tmp_path: Path) -> None:
    data = tmp_path / "it's data"
    data.mkdir()
    single = tmp_path / "one.txt"
    single.write_text("x")
    plan = environment.MountPlan([str(data), str(single), str(data)], staged=True)
    assert [m.source for m in plan.mounts] == [f"{environment.VIEW_ROOT}/0", f"{environment.VIEW_ROOT}/1"]
    assert plan.bwrap_options() == [
        "--ro-bind",
        f"{environment.VIEW_ROOT}/0",
        str(data),
        "--ro-bind",
        f"{environment.VIEW_ROOT}/1",
        str(single),
    ]
    script = plan.script()
    assert script.startswith("mount -t tmpfs") and "mkdir /run/sandbox-kernel/view/0" in script
    assert ": > /run/sandbox-kernel/view/1" in script and "'" + str(data).replace("'", "'\"'\"'") + "'" in script
    assert script.count("remount,bind,ro,nosuid,nodev") == 2 and script.count("|| exit 125") == 7
    assert plan.wrapper()[:2] == ["unshare", "--mount"]
    direct = environment.MountPlan([str(data)], staged=False)
    assert (
        direct.script() == ""
        and direct.wrapper() == []
        and direct.bwrap_options() == ["--ro-bind", str(data), str(data)]
    )


def test_import_hint_names_the_interpreter_and_the_package() -> None:
    env = environment.python_environment("kernel")
    hint = environment.import_hint(env, env.python, "No module named 'pandas.core'")
    assert f"{env.python} -m pip install pandas" in hint and env.prefix in hint
