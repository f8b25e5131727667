"""The ``sandbox-kernel`` command: install the kernelspecs, and study or clean up Kubernetes sandboxes."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Sequence, cast

from jupyter_client.kernelspec import KernelSpecManager

from .errors import ClusterNotConfigured, ClusterUnreachable, ConfigError, SandboxError
from .sessions import BACKENDS, DEFAULT_BACKEND
from .languages import LANGUAGES, Language

DESCRIPTION = "Install the Sandbox kernelspecs, and study or clean up Kubernetes sandboxes."
EPILOG = """\
examples:
  sandbox-kernel install --user                  kernels that run cells on the local sandbox
  sandbox-kernel install --user --backend kubernetes --name-suffix=-kubernetes
                                                 Kubernetes kernels, next to the local ones
  sandbox-kernel render --no-agent               the objects one kernel creates on Kubernetes
  sandbox-kernel render --seccomp-profile profiles/sandbox-kernel.json
                                                 ... with the project's Localhost seccomp profile
  sandbox-kernel list                            live Kubernetes sandboxes
  sandbox-kernel gc --dry-run                    what gc would delete, and why
  sandbox-kernel controller --SandboxController.pool=python=3
                                                 the sandbox controller (claims mode), a warm pool of 3

'sandbox-kernel COMMAND --help' tells more about each command."""

BACKEND_LABELS = {"local": "", "kubernetes": " · Kubernetes"}
"""What a kernelspec's display name says about where its cells run (the local sandbox is the default)."""

NO_FROZEN_MODULES = "-Xfrozen_modules=off"
"""Python flag in every kernelspec's argv: without it debugpy (imported by ipykernel) prints four
"Debugger warning: It seems that frozen modules are being used" lines at every kernel start."""


def kernelspec_source(name: str) -> Path:
    """The kernelspec directory shipped with the package (sources: ``kernelspecs/``)."""
    packaged = Path(str(resources.files("sandbox_kernel").joinpath("kernelspecs", name)))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "kernelspecs" / name  # a source checkout


def display_name(language: Language, backend: str) -> str:
    """``Sandbox (Python)`` on the local sandbox, ``Sandbox (Python) · Kubernetes`` on Kubernetes."""
    return language.display_name + BACKEND_LABELS.get(backend, f" · {backend}")


def kernelspec_json(source: dict, backend: str, python: str = "", image: str = "") -> dict:  # type: ignore[type-arg]
    """A shipped ``kernel.json`` made ready to install: this Python, the backend, its display name,
    and the Kubernetes image of its language when one is given (``install --image``)."""
    spec = json.loads(json.dumps(source))
    argv = [a for a in spec["argv"] if not a.startswith("--SandboxKernel.backend=") and a != NO_FROZEN_MODULES]
    argv[0] = python or sys.executable
    spec["argv"] = [argv[0], NO_FROZEN_MODULES, *argv[1:], f"--SandboxKernel.backend={backend}"]
    language = LANGUAGES[spec["metadata"]["sandbox_kernel"]["language"]]
    spec["display_name"] = display_name(language, backend)
    spec["metadata"]["sandbox_kernel"]["backend"] = backend
    if image:
        # This kernelspec's own image: a setting on its command line wins over the configuration
        # files and over SANDBOX_IMAGE_<LANGUAGE>.
        spec["argv"].append(f"--KubernetesSandbox.images={language.name}={image}")
        spec["display_name"] += f" · {image.rsplit('/', 1)[-1]}"
        spec["metadata"]["sandbox_kernel"]["image"] = image
    return cast("dict[str, object]", spec)


_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")


def parse_images(items: Sequence[str]) -> dict[str, str]:
    """``--image LANGUAGE=IMAGE`` items as {language: image}; a bad item is a ConfigError."""
    images: dict[str, str] = {}
    for item in items:
        name, sep, image = item.partition("=")
        if not sep or name not in LANGUAGES:
            raise ConfigError("--image", f"{item!r} is not LANGUAGE=IMAGE with a language of {', '.join(LANGUAGES)}")
        if not _IMAGE.fullmatch(image):
            raise ConfigError(
                "--image", f"{image!r} is not an image reference (e.g. registry.example/sandbox-python:1)"
            )
        images[name] = image
    return images


_SUFFIX = re.compile(r"[A-Za-z0-9._-]*")


def install(args: argparse.Namespace) -> int:
    suffix = getattr(args, "name_suffix", "") or ""
    if not _SUFFIX.fullmatch(suffix):
        raise ConfigError("--name-suffix", f"{suffix!r} may only hold letters, digits, '.', '_' and '-'")
    images = parse_images(getattr(args, "image", None) or [])
    if images and args.backend != "kubernetes":
        raise ConfigError("--image", "images are for the Kubernetes backend: add --backend kubernetes")
    manager = KernelSpecManager()
    for language in LANGUAGES.values():
        source = kernelspec_source(language.kernelspec)
        name = language.kernelspec + suffix
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            shutil.copytree(source, target)
            spec = kernelspec_json(
                json.loads((target / "kernel.json").read_text()), args.backend, image=images.get(language.name, "")
            )
            (target / "kernel.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            where = manager.install_kernel_spec(
                str(target), name, user=args.user, prefix=args.prefix or (sys.prefix if args.sys_prefix else None)
            )
        print(f"Installed {spec['display_name']} as {name} ({args.backend} backend) in {where}")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    """Remove every Sandbox kernelspec Jupyter finds (any name suffix, any backend)."""
    manager = KernelSpecManager()
    removed = 0
    for name, path in sorted(manager.find_kernel_specs().items()):
        try:
            spec = json.loads((Path(path) / "kernel.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if "sandbox_kernel" not in (spec.get("metadata") or {}):
            continue
        manager.remove_kernel_spec(name)
        removed += 1
        print(f"Removed {spec.get('display_name', name)} ({name}) from {path}")
    if not removed:
        print("No Sandbox kernelspecs are installed.")
    return 0


def settings_reference() -> str:
    """Every setting of every backend as a Markdown table (the README's reference is this)."""
    from .config import Sandbox
    from .kernel import SandboxKernel
    from .controller.settings import SandboxController
    from .kubernetes.settings import KubernetesSandbox
    from .egress.host import EgressProxy
    from .local.backend import LocalSandbox

    import os
    from unittest import mock

    lines = ["| setting | default | help |", "|---|---|---|"]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    for cls in (SandboxKernel, Sandbox, LocalSandbox, EgressProxy, KubernetesSandbox, SandboxController):
        traits = sorted(cls.class_traits(config=True).items())
        with mock.patch.dict(os.environ, clean_env, clear=True):
            # Defaults computed from the environment (read when first accessed) are shown as a
            # clean environment gives them.
            instance = None if cls is SandboxKernel else cls()
            defaults = {name: repr(getattr(instance, name)) for name, _ in traits} if instance else {}
            if cls is SandboxController:
                defaults["identity"] = "host name, pid, random suffix"  # differs per process
        for name, trait in traits:
            if cls is SandboxKernel and name not in ("backend", "language_name"):
                continue  # the rest are not settings a user makes (the session, its early start)
            default = defaults.get(name) or trait.default_value_repr()
            help_text = " ".join(trait.help.split()).replace("|", "\\|")
            lines.append(f"| `{cls.__name__}.{name}` | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"


def settings(args: argparse.Namespace) -> int:
    print(settings_reference(), end="")
    return 0


def render(args: argparse.Namespace) -> int:
    """``render``, with ``--no-agent`` replacing the agent's source by a one-line reference."""
    from .kubernetes import commands

    from .kubernetes.settings import KubernetesSandbox

    profile = getattr(args, "seccomp_profile", None)
    settings = KubernetesSandbox() if profile is None else KubernetesSandbox(seccomp_profile=profile)
    try:
        objects = commands.rendered_objects(args.language, args.kernel_id, settings=settings)
    except ConfigError as exc:
        print(f"sandbox-kernel render: {exc}", file=sys.stderr)
        return 2
    if args.no_agent:
        language = LANGUAGES[args.language]
        for obj in objects:
            if obj.get("kind") == "ConfigMap" and language.agent_file in (obj.get("data") or {}):
                source = obj["data"][language.agent_file]
                digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
                obj["data"][language.agent_file] = (
                    f"<left out by --no-agent: sandbox_kernel/agents/{language.agent_file}, "
                    f"{len(source.splitlines())} lines, sha256 {digest}>"
                )
    shown = settings.seccomp_profile
    sys.stdout.write(
        f"# KubernetesSandbox.seccomp_profile = {shown!r}: the pod's seccompProfile is "
        + (f"Localhost {shown} (installed on each node, see k8s/README.md)\n" if shown else "RuntimeDefault\n")
    )
    sys.stdout.write(commands.render_yaml(objects))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox-kernel",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "install",
        help="register the Sandbox (Python), (Node.js) and (Bash) kernelspecs",
        description="Register the Sandbox (Python), (Node.js) and (Bash) kernelspecs for Jupyter.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
    p.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help=f"where cells run (default: {DEFAULT_BACKEND})"
    )
    p.add_argument(
        "--name-suffix",
        metavar="SUFFIX",
        default="",
        help="append SUFFIX to the kernelspec names (e.g. -kubernetes: sandbox-python-kubernetes), "
        "so that kernels of both backends can be installed side by side",
    )
    p.add_argument(
        "--image",
        metavar="LANGUAGE=IMAGE",
        action="append",
        default=[],
        help="the container image of that language's kernelspec on Kubernetes (repeatable; e.g. "
        "python=localhost/sandbox-python-science:3.11 for numpy, pandas, matplotlib and IPython); "
        "wins over KubernetesSandbox.images and SANDBOX_IMAGE_<LANGUAGE>",
    )
    p.set_defaults(func=install)

    p = sub.add_parser(
        "uninstall",
        help="remove the Sandbox kernelspecs",
        description="Remove every Sandbox kernelspec Jupyter finds (both backends, any name suffix).",
    )
    p.set_defaults(func=uninstall)

    p = sub.add_parser("settings", help="print every setting with its default and help, as Markdown")
    p.set_defaults(func=settings)

    p = sub.add_parser(
        "render",
        help="print the Kubernetes manifests a kernel applies, as YAML",
        description="Print every object a kernel creates on Kubernetes, as YAML (kubectl apply -f takes it).",
    )
    p.add_argument("--language", choices=list(LANGUAGES), default="python")
    p.add_argument("--kernel-id", default="00000000-0000-0000-0000-000000000000", help="kernel id to render for")
    p.add_argument(
        "--seccomp-profile",
        metavar="PROFILE",
        default=None,
        help="KubernetesSandbox.seccomp_profile to render for: '' (the default) is RuntimeDefault, "
        "'profiles/sandbox-kernel.json' the project's Localhost profile",
    )
    p.add_argument(
        "--no-agent",
        action="store_true",
        help="leave the agent's source out of the ConfigMap (a one-line reference to the file instead)",
    )
    p.set_defaults(func=render)

    kubeconfig_help = "kubeconfig file (default: $SANDBOX_KUBECONFIG, $KUBECONFIG, ~/.kube/config or in-cluster)"
    p = sub.add_parser("list", help="show live Kubernetes sandboxes with age, owner and language")
    p.add_argument("--kubeconfig", help=kubeconfig_help)
    p.add_argument("--context", help="kubeconfig context")
    p.set_defaults(func=_k8s("list_sandboxes"))

    p = sub.add_parser("gc", help="delete sandbox namespaces whose kernel stopped renewing its heartbeat")
    p.add_argument("--kubeconfig", help=kubeconfig_help)
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(func=_k8s("gc"))

    p = sub.add_parser(
        "controller",
        help="run the sandbox controller (claims mode): makes the sandboxes SandboxClaims ask for",
        description="Run the sandbox controller: serve SandboxClaims (make, pool, delete sandbox namespaces), "
        "as the leader of the Lease SandboxController.lease_name. Settings as --SandboxController.pool="
        "python=3 (repeat for more languages) or --KubernetesSandbox.kubeconfig=FILE (see `sandbox-kernel settings`).",
    )
    p.set_defaults(func=_controller, settings=[])
    return parser


def _controller(args: argparse.Namespace) -> int:
    from .controller import leader

    return leader.run(list(args.settings))


def _k8s(name: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        from .kubernetes import commands

        return int(getattr(commands, name)(args))

    return run


def _kubeconfig_in_use(args: argparse.Namespace) -> str:
    """The kubeconfig a cluster command used, in the words of the command line."""
    if getattr(args, "kubeconfig", None):
        return f"--kubeconfig {args.kubeconfig}"
    for var in ("SANDBOX_KUBECONFIG", "KUBECONFIG"):
        if os.environ.get(var):
            return f"${var} ({os.environ[var]})"
    return "~/.kube/config"


def cli_message(exc: SandboxError, args: argparse.Namespace) -> str:
    """An error the kernel would show in a cell, reworded for the command line."""
    text = str(exc)
    if isinstance(exc, ClusterUnreachable):
        # The kernel's advice ("run the cell again") means nothing here; so does urllib3's detail.
        text = re.split(r"\s*The kernel keeps running;", text)[0].rstrip(". ")
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        text = re.sub(
            r" \((?:HTTPS?ConnectionPool|Max retries).*\)$", f" ({errno.group(1).strip()})" if errno else "", text
        )
        return (
            f"{text}.\nIs the cluster running? This used {_kubeconfig_in_use(args)}; pick another with "
            "--kubeconfig or --context, and check with `kubectl cluster-info`."
        )
    if isinstance(exc, ConfigError) and exc.setting == "KubernetesSandbox.kubeconfig":
        detail = text.replace("Invalid setting KubernetesSandbox.kubeconfig: ", "")
        return f"kubeconfig {detail} (given by {_kubeconfig_in_use(args)})"
    if isinstance(exc, ClusterNotConfigured):
        return (
            "No Kubernetes cluster is configured: pass --kubeconfig FILE (or set $KUBECONFIG or "
            "$SANDBOX_KUBECONFIG), or run this in a pod with a service account."
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "controller":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:  # the controller's --Class.trait=value settings (traitlets reads them)
        bad = [arg for arg in rest if not re.fullmatch(r"--[A-Za-z_]\w*\.[A-Za-z_]\w*=.*", arg, re.DOTALL)]
        if bad:
            parser.error(f"controller settings are --Class.trait=value, not {' '.join(bad)}")
        args.settings = rest
    try:
        return int(args.func(args))
    except SandboxError as exc:
        print(f"sandbox-kernel {args.command}: {cli_message(exc, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
