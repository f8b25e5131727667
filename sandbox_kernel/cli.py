"""``sandbox-kernel``: install the kernelspecs, and study or clean up Kubernetes sandboxes."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Sequence

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from .errors import SandboxError
from .kernel import BACKENDS
from .languages import LANGUAGES


def kernelspec_source(name: str) -> Path:
    """The kernelspec directory shipped with the package (sources: ``kernelspecs/``)."""
    packaged = Path(str(resources.files("sandbox_kernel").joinpath("kernelspecs", name)))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "kernelspecs" / name  # a source checkout


def install(args: argparse.Namespace) -> int:
    manager = KernelSpecManager()
    for language in LANGUAGES.values():
        source = kernelspec_source(language.kernelspec)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / language.kernelspec
            shutil.copytree(source, target)
            spec = json.loads((target / "kernel.json").read_text())
            spec["argv"][0] = sys.executable
            spec["argv"] = [a for a in spec["argv"] if not a.startswith("--SandboxKernel.backend=")]
            spec["argv"].append(f"--SandboxKernel.backend={args.backend}")
            spec["metadata"]["sandbox_kernel"]["backend"] = args.backend
            (target / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
            where = manager.install_kernel_spec(
                str(target), language.kernelspec, user=args.user, prefix=args.prefix or (sys.prefix if args.sys_prefix else None)
            )
        print(f"Installed {language.display_name} ({args.backend} backend) in {where}")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    manager = KernelSpecManager()
    for language in LANGUAGES.values():
        try:
            path = manager.get_kernel_spec(language.kernelspec).resource_dir
        except NoSuchKernel:
            continue
        manager.remove_kernel_spec(language.kernelspec)
        print(f"Removed {language.display_name} from {path}")
    return 0


def settings_reference() -> str:
    """Every setting of every backend as a Markdown table (the README's reference is this)."""
    from .config import Sandbox
    from .kernel import SandboxKernel
    from .kubernetes.backend import KubernetesSandbox
    from .local.backend import LocalSandbox

    import os
    from unittest import mock

    lines = ["| setting | default | help |", "|---|---|---|"]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    for cls in (SandboxKernel, Sandbox, LocalSandbox, KubernetesSandbox):
        traits = sorted(cls.class_traits(config=True).items())
        with mock.patch.dict(os.environ, clean_env, clear=True):
            # Defaults computed from the environment (read when first accessed) are shown as a
            # clean environment gives them.
            instance = None if cls is SandboxKernel else cls()
            defaults = {name: repr(getattr(instance, name)) for name, _ in traits} if instance else {}
        for name, trait in traits:
            if cls is SandboxKernel and name not in ("backend", "language_name"):
                continue  # ipykernel's own settings are documented by ipykernel
            default = defaults.get(name) or trait.default_value_repr()
            if cls is SandboxKernel and name == "backend":
                default = "'local'"
            help_text = " ".join(trait.help.split()).replace("|", "\\|")
            lines.append(f"| `{cls.__name__}.{name}` | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"


def settings(args: argparse.Namespace) -> int:
    print(settings_reference(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-kernel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("install", help="register the Sandbox (Python), (Node.js) and (Bash) kernelspecs")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
    p.add_argument("--backend", choices=BACKENDS, default="local", help="where cells run (default: local)")
    p.set_defaults(func=install)

    p = sub.add_parser("uninstall", help="remove the Sandbox kernelspecs")
    p.set_defaults(func=uninstall)

    p = sub.add_parser("settings", help="print every setting with its default and help, as Markdown")
    p.set_defaults(func=settings)

    p = sub.add_parser("render", help="print the Kubernetes manifests a kernel applies, as YAML")
    p.add_argument("--language", choices=list(LANGUAGES), default="python")
    p.add_argument("--kernel-id", default="00000000-0000-0000-0000-000000000000", help="kernel id to render for")
    p.set_defaults(func=_k8s("render"))

    p = sub.add_parser("list", help="show live Kubernetes sandboxes with age, owner and language")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
    p.add_argument("--context", help="kubeconfig context")
    p.set_defaults(func=_k8s("list_sandboxes"))

    p = sub.add_parser("gc", help="delete sandbox namespaces whose kernel stopped renewing its heartbeat")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(func=_k8s("gc"))
    return parser


def _k8s(name: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        from .kubernetes import commands

        return int(getattr(commands, name)(args))

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SandboxError as exc:
        print(f"sandbox-kernel: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
