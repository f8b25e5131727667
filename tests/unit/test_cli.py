"""The ``sandbox-kernel`` command line: help text, kernelspecs it writes, render, cluster errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel import cli
from sandbox_kernel.kubernetes.commands import rendered_objects
from sandbox_kernel.languages import LANGUAGES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SANDBOX_IMAGE_PYTHON",
        "SANDBOX_IMAGE_NODE",
        "SANDBOX_IMAGE_BASH",
        "SANDBOX_MEMORY_LIMIT",
        "SANDBOX_CPU_LIMIT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv", [["--help"], ["install", "--help"], ["render", "--help"], ["list", "--help"]])
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sandbox-kernel" in out
    assert "``" not in out and ":func:" not in out and ":mod:" not in out, out


def test_every_shipped_kernelspec_turns_frozen_modules_off() -> None:
    """Else debugpy prints four "Debugger warning: ... frozen modules" lines at each kernel start."""
    for path in sorted((ROOT / "kernelspecs").glob("*/kernel.json")):
        argv = json.loads(path.read_text())["argv"]
        assert argv[:2] == ["python3", "-Xfrozen_modules=off"], (path, argv)


def _installed(prefix: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    kernels = prefix / "share" / "jupyter" / "kernels"
    return {d.name: json.loads((d / "kernel.json").read_text(encoding="utf-8")) for d in sorted(kernels.iterdir())}


def test_install_local_kernelspecs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["install", "--prefix", str(tmp_path)]) == 0
    specs = _installed(tmp_path)
    assert set(specs) == {"sandbox-python", "sandbox-node", "sandbox-bash"}
    python = specs["sandbox-python"]
    assert python["display_name"] == "Sandbox (Python)"
    assert python["argv"][1] == "-Xfrozen_modules=off"
    assert python["argv"][-1] == "--SandboxKernel.backend=local"
    assert python["metadata"]["sandbox_kernel"] == {"language": "python", "backend": "local"}
    assert "Installed Sandbox (Python) as sandbox-python (local backend)" in capsys.readouterr().out


def test_kubernetes_kernelspecs_say_so_and_can_sit_next_to_the_local_ones(tmp_path: Path) -> None:
    assert cli.main(["install", "--prefix", str(tmp_path)]) == 0
    assert cli.main(["install", "--prefix", str(tmp_path), "--backend", "kubernetes", "--name-suffix=-kubernetes"]) == 0
    specs = _installed(tmp_path)
    assert {name: spec["display_name"] for name, spec in specs.items()} == {
        "sandbox-bash": "Sandbox (Bash)",
        "sandbox-bash-kubernetes": "Sandbox (Bash) · Kubernetes",
        "sandbox-node": "Sandbox (Node.js)",
        "sandbox-node-kubernetes": "Sandbox (Node.js) · Kubernetes",
        "sandbox-python": "Sandbox (Python)",
        "sandbox-python-kubernetes": "Sandbox (Python) · Kubernetes",
    }
    argv = specs["sandbox-python-kubernetes"]["argv"]
    assert argv.count("-Xfrozen_modules=off") == 1
    assert [a for a in argv if a.startswith("--SandboxKernel.backend=")] == ["--SandboxKernel.backend=kubernetes"]
    assert "--SandboxKernel.language_name=python" in argv


def test_install_without_suffix_keeps_the_names(tmp_path: Path) -> None:
    """The in-cluster JupyterLab (images/jupyterlab) offers sandbox-python etc. on Kubernetes."""
    assert cli.main(["install", "--prefix", str(tmp_path), "--backend", "kubernetes"]) == 0
    specs = _installed(tmp_path)
    assert set(specs) == {"sandbox-python", "sandbox-node", "sandbox-bash"}
    assert specs["sandbox-node"]["display_name"] == "Sandbox (Node.js) · Kubernetes"


def test_install_image_gives_one_languages_kernelspec_its_own_image(tmp_path: Path) -> None:
    image = "localhost/sandbox-python-datascience:3.11"
    argv = [
        "install",
        "--prefix",
        str(tmp_path),
        "--backend",
        "kubernetes",
        "--name-suffix=-ds",
        f"--image=python={image}",
    ]
    assert cli.main(argv) == 0
    specs = _installed(tmp_path)
    python = specs["sandbox-python-ds"]
    assert python["display_name"] == "Sandbox (Python) · Kubernetes · sandbox-python-datascience:3.11"
    assert python["argv"][-1] == f"--KubernetesSandbox.images=python={image}"
    assert python["metadata"]["sandbox_kernel"]["image"] == image
    assert not any("images" in a for a in specs["sandbox-node-ds"]["argv"])
    # The kernel reads it as the setting (the same loader the early Kubernetes start uses).
    from sandbox_kernel.kubernetes.early import load_config
    from sandbox_kernel.kubernetes.settings import KubernetesSandbox

    settings = KubernetesSandbox(config=load_config(python["argv"][4:]))
    assert settings.image(LANGUAGES["python"]) == image


@pytest.mark.parametrize(
    "item, says",
    [
        ("python", "LANGUAGE=IMAGE"),
        ("ruby=x:1", "LANGUAGE=IMAGE"),
        ("python=bad image", "not an image reference"),
    ],
)
def test_a_bad_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str, says: str) -> None:
    assert cli.main(["install", "--prefix", str(tmp_path), "--backend", "kubernetes", "--image", item]) == 1
    err = capsys.readouterr().err
    assert "--image" in err and says in err
    assert cli.main(["install", "--prefix", str(tmp_path), "--image", "python=x:1"]) == 1
    assert "--backend kubernetes" in capsys.readouterr().err
    assert not (tmp_path / "share").exists()


def test_a_bad_name_suffix_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["install", "--prefix", str(tmp_path), "--name-suffix", "/../x"]) == 1
    assert "--name-suffix" in capsys.readouterr().err
    assert not (tmp_path / "share").exists()


def test_uninstall_removes_sandbox_kernelspecs_of_both_backends_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["install", "--prefix", str(tmp_path)]) == 0
    assert cli.main(["install", "--prefix", str(tmp_path), "--backend", "kubernetes", "--name-suffix=-k8s"]) == 0
    other = tmp_path / "share" / "jupyter" / "kernels" / "other"
    other.mkdir()
    (other / "kernel.json").write_text(json.dumps({"argv": ["python3"], "display_name": "Other", "language": "python"}))
    kernels = str(tmp_path / "share" / "jupyter" / "kernels")
    monkeypatch.setattr(cli, "KernelSpecManager", lambda: KernelSpecManager(kernel_dirs=[kernels]))
    assert cli.main(["uninstall"]) == 0
    assert sorted(p.name for p in Path(kernels).iterdir()) == ["other"]
    assert "Removed Sandbox (Python) · Kubernetes (sandbox-python-k8s)" in capsys.readouterr().out


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_render_no_agent_leaves_out_only_the_agent_source(language: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "--language", language, "--no-agent"]) == 0
    out = capsys.readouterr().out
    printed = list(yaml.safe_load_all(out))
    full = rendered_objects(language)
    agent = LANGUAGES[language].agent_file
    assert len(out.splitlines()) < 300, "the manifests alone should be short enough to read"
    assert len(printed) == len(full)
    for shown, real in zip(printed, full):
        if real["kind"] == "ConfigMap":
            reference = shown["data"][agent]
            assert reference.startswith(f"<left out by --no-agent: sandbox_kernel/agents/{agent}, ")
            assert f"{len(real['data'][agent].splitlines())} lines" in reference
            shown = {**shown, "data": real["data"]}
        assert shown == real


def test_render_shows_and_takes_the_seccomp_profile_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "--no-agent"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# KubernetesSandbox.seccomp_profile = '': the pod's seccompProfile is RuntimeDefault\n")
    assert list(yaml.safe_load_all(out))[-1]["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert cli.main(["render", "--no-agent", "--seccomp-profile", "profiles/sandbox-kernel.json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# KubernetesSandbox.seccomp_profile = 'profiles/sandbox-kernel.json'")
    assert list(yaml.safe_load_all(out))[-1]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/sandbox-kernel.json",
    }
    assert cli.main(["render", "--seccomp-profile", "/etc/passwd"]) == 2
    assert "Invalid setting KubernetesSandbox.seccomp_profile" in capsys.readouterr().err


def test_list_with_the_cluster_down_speaks_to_a_command_line_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "down.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "down",
                "clusters": [
                    {"name": "down", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "down", "user": {"token": "x"}}],
                "contexts": [{"name": "down", "context": {"cluster": "down", "user": "down"}}],
            }
        )
    )
    assert cli.main(["list", "--kubeconfig", str(kubeconfig)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "sandbox-kernel list: The Kubernetes API server at https://127.0.0.1:1 could not be reached"
    ), err
    assert "cell" not in err and "kernel keeps running" not in err, err
    assert "Max retries" not in err and "HTTPSConnectionPool" not in err, err
    assert "Is the cluster running?" in err and f"--kubeconfig {kubeconfig}" in err, err


def test_list_without_any_cluster_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KUBECONFIG", "SANDBOX_KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "pass --kubeconfig" in err and "c.KubernetesSandbox" not in err, err
