"""The notebook's files: what the workspace costs (issue 9, item 2; target: a 50 MiB workspace
copied into a Kubernetes sandbox at >= 20 MiB/s).

    python benchmarks/bench_workspace.py [--kubeconfig K] [--rounds 3] [--skip-local] [--skip-kubernetes]

Kubernetes, side by side in one run, on one pod per round:

- **copy in at start**: a kernel session started in a directory of 50 MiB (one 40 MiB file and
  100 files of 100 KiB), read-only mode: the copy through the agent protocol, timed by the
  session itself (its ``workspace: copied …`` event), and the whole start next to a start in
  ``hidden`` mode (nothing copied);
- **upload / download**: ``%sandbox upload`` / ``download`` of the 40 MiB file (Transfer, as the
  magic runs it);
- **baseline**: the same 40 MiB through ``kubectl exec -i POD -- sh -c 'cat > FILE'`` (the API
  server's own streaming, as ``kubectl cp`` uses it) into the same pod.

Local: start → first result of a session in each mode (hidden, read-only bind, read-only copy
of a 0700 directory, read-write copy) with the same 50 MiB directory, and a trivial cell's time
with the read-write write-back (which walks the copy after every cell) next to read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from sandbox_kernel.config import Sandbox  # noqa: E402
from sandbox_kernel.languages import LANGUAGES  # noqa: E402
from sandbox_kernel.session import ExecuteResult, SandboxSession  # noqa: E402
from sandbox_kernel.workspace.transfer import Transfer  # noqa: E402

MiB = 1 << 20
BIG = 40 * MiB


def make_workspace(root: Path) -> Path:
    d = root / "notebook"
    (d / "data").mkdir(parents=True)
    (d / "data" / "big.bin").write_bytes(os.urandom(BIG))
    for i in range(100):
        (d / "data" / f"part-{i:03}.bin").write_bytes(os.urandom(100 * 1024))
    (d / "analysis.ipynb").write_text('{"cells": []}')
    return d


def total_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


async def first_result(session: SandboxSession) -> float:
    t0 = time.perf_counter()
    await session.start()
    elapsed = None
    async for event in session.execute("1"):  # to its end: a cell left half-read stays running
        if isinstance(event, ExecuteResult) and elapsed is None:
            elapsed = time.perf_counter() - t0
    assert elapsed is not None, "no result"
    return elapsed


async def cell_time(session: SandboxSession) -> float:
    t0 = time.perf_counter()
    async for _ in session.execute("1"):
        pass
    return time.perf_counter() - t0


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- Kubernetes ------------------------------------------------------------------------------


def k8s_session(kubeconfig: str, image: str, workspace: str) -> Any:
    from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
    from sandbox_kernel.kubernetes.settings import KubernetesSandbox

    settings = KubernetesSandbox(kubeconfig=kubeconfig, images={"python": image})
    limits = Sandbox(workspace=workspace, scratch_size="96Mi", memory_limit="256Mi", timeout=300).limits()
    return KubernetesSandboxSession(LANGUAGES["python"], limits, settings, kernel_id=f"bench-ws-{uuid.uuid4().hex[:8]}")


def copy_seconds(session: Any) -> float:
    for _, text in session._events:
        if text.startswith("workspace: copied"):
            return float(text.rsplit(" in ", 1)[1].split()[0])
    raise RuntimeError(f"no workspace event in {session._events}")


async def bench_kubernetes(kubeconfig: str, admin: str, image: str, ws: Path, rounds: int) -> dict[str, Any]:
    from fixtures_kubernetes import find_kubectl

    kubectl = find_kubectl()
    size = total_bytes(ws)
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "start_hidden_s",
            "start_read_only_s",
            "copy_in_s",
            "copy_in_mib_s",
            "upload_mib_s",
            "upload_base64_mib_s",
            "upload_cpu_s",
            "upload_base64_cpu_s",
            "download_mib_s",
            "kubectl_exec_mib_s",
        )
    }
    for i in range(rounds):
        print(f"kubernetes round {i + 1}/{rounds}…", file=sys.stderr)
        hidden, copied = k8s_session(kubeconfig, image, "hidden"), k8s_session(kubeconfig, image, "read-only")
        try:
            out["start_hidden_s"].append(await first_result(hidden))
            out["start_read_only_s"].append(await first_result(copied))
            seconds = copy_seconds(copied)
            out["copy_in_s"].append(seconds)
            out["copy_in_mib_s"].append(size / MiB / seconds)
            # Baseline: the API server's own exec stream into the same pod (what kubectl cp rides on).
            t0 = time.perf_counter()
            with open(ws / "data" / "big.bin", "rb") as f:
                subprocess.run(
                    [
                        kubectl,
                        "--kubeconfig",
                        admin,
                        "exec",
                        "-i",
                        "-n",
                        hidden.namespace,
                        hidden.pod_name,
                        "--",
                        "sh",
                        "-c",
                        "cat > /home/sandbox/raw.bin",
                    ],
                    stdin=f,
                    check=True,
                )
            out["kubectl_exec_mib_s"].append(BIG / MiB / (time.perf_counter() - t0))
            async for _ in hidden.execute("import os; os.remove('raw.bin')"):
                pass
            # `bin` frames, then the same upload as before them: base64 in `msg` frames (what
            # Bash's agent gets); with the kernel's CPU seconds for each (this process).
            binary = hidden._binary_files
            for key, raw in (("upload", binary), ("upload_base64", False)):
                hidden._binary_files = raw
                t0, c0 = time.perf_counter(), time.process_time()
                await Transfer(hidden, str(ws), hidden.limits).upload(["data/big.bin"])
                out[f"{key}_mib_s"].append(BIG / MiB / (time.perf_counter() - t0))
                out[f"{key}_cpu_s"].append(time.process_time() - c0)
            hidden._binary_files = binary
            back = Path(tempfile.mkdtemp(prefix="bench-ws-back-"))
            t0 = time.perf_counter()
            await Transfer(hidden, str(back), hidden.limits).download(["data/big.bin"])
            out["download_mib_s"].append(BIG / MiB / (time.perf_counter() - t0))
            assert (back / "data" / "big.bin").read_bytes() == (ws / "data" / "big.bin").read_bytes()
        finally:
            await hidden.close()
            await copied.close()
    return {"workspace_bytes": size, **{k: {"median": med(v), "all": v} for k, v in out.items()}}


# -- local -----------------------------------------------------------------------------------


def local_session(workspace: str) -> Any:
    from sandbox_kernel.local.backend import LocalSandboxSession

    return LocalSandboxSession(LANGUAGES["python"], Sandbox(workspace=workspace, timeout=300).limits())


async def bench_local(ws: Path, rounds: int, cells: int) -> dict[str, Any]:
    private = ws.parent / "private"
    os.rename(ws, private)
    private.chmod(0o700)
    modes = {
        "hidden": (ws, "hidden"),
        "read-only": (ws, "read-only"),
        "read-only copy (0700)": (private, "read-only"),
        "read-write": (ws, "read-write"),
    }
    out: dict[str, Any] = {name: {"start_s": [], "cell_ms": []} for name in modes}
    os.rename(private, ws)
    for i in range(rounds):
        print(f"local round {i + 1}/{rounds}…", file=sys.stderr)
        for name, (where, mode) in modes.items():
            if where == private:
                os.rename(ws, private)
            os.chdir(where)
            session = local_session(mode)
            try:
                out[name]["start_s"].append(await first_result(session))
                for _ in range(cells):
                    out[name]["cell_ms"].append(1000 * await cell_time(session))
            finally:
                await session.close()
                os.chdir(REPO)
                if where == private:
                    os.rename(private, ws)
    return {name: {k: {"median": med(v), "all": v} for k, v in d.items()} for name, d in out.items()}


def table(results: dict[str, Any]) -> str:
    lines = []
    k = results.get("kubernetes")
    if k:
        lines += [
            "| Kubernetes (median of rounds) | value |",
            "|---|---|",
            f"| workspace | {k['workspace_bytes'] / MiB:.1f} MiB in 101 files + a notebook |",
        ]
        for key, label, unit in (
            ("copy_in_mib_s", "copy in at start", "MiB/s"),
            ("copy_in_s", "copy in at start", "s"),
            ("start_hidden_s", "start → first result, hidden (nothing copied)", "s"),
            ("start_read_only_s", "start → first result, read-only (copied)", "s"),
            ("upload_mib_s", "%sandbox upload of 40 MiB", "MiB/s"),
            ("upload_base64_mib_s", "the same upload, base64 in msg frames (before `bin` frames)", "MiB/s"),
            ("upload_cpu_s", "the kernel's CPU for the upload, `bin` frames", "s"),
            ("upload_base64_cpu_s", "the kernel's CPU for the upload, base64", "s"),
            ("download_mib_s", "%sandbox download of 40 MiB", "MiB/s"),
            ("kubectl_exec_mib_s", "baseline: kubectl exec -i … cat > file, 40 MiB", "MiB/s"),
        ):
            lines.append(f"| {label} | {k[key]['median']:.2f} {unit} |")
    loc = results.get("local")
    if loc:
        lines += [
            "",
            "| local mode (50 MiB directory) | start → first result (median) | trivial cell p50 |",
            "|---|---|---|",
        ]
        for name, d in loc.items():
            lines.append(f"| {name} | {d['start_s']['median']:.3f} s | {d['cell_ms']['median']:.2f} ms |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("SANDBOX_KUBECONFIG", ""),
        help="the sandbox identity's (or admin) kubeconfig",
    )
    parser.add_argument("--admin-kubeconfig", default="", help="for the kubectl exec baseline (default: --kubeconfig)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", type=int, default=50, help="trivial cells per local session")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-kubernetes", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "workspace.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-workspace-") as tmp:
        ws = make_workspace(Path(tmp))
        ws.chmod(0o755)
        Path(tmp).chmod(0o755)
        if not args.skip_kubernetes:
            if not args.kubeconfig:
                parser.error("set SANDBOX_KUBECONFIG or --kubeconfig (or --skip-kubernetes)")
            from fixtures_kubernetes import images_from_cache

            image = images_from_cache().get("SANDBOX_IMAGE_PYTHON") or LANGUAGES["python"].default_image
            os.chdir(ws)  # a kernel copies its working directory: the notebook's
            results["kubernetes"] = asyncio.run(
                bench_kubernetes(args.kubeconfig, args.admin_kubeconfig or args.kubeconfig, image, ws, args.rounds)
            )
            os.chdir(REPO)
        if not args.skip_local:
            results["local"] = asyncio.run(bench_local(ws, args.rounds, args.cells))
    print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
