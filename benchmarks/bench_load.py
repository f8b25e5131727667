#!/usr/bin/env python
"""Load: many local Sandbox kernels started at once, side by side with as many ipykernel kernels.

    python benchmarks/bench_load.py [--kernels 20] [--rounds 2] [--json benchmarks/results/load.json]

Each round runs these batches one after the other (the order rotates between rounds, so that
drift on the machine hits them alike):

- ``python3``: ``--kernels`` ipykernel ``python3`` kernels (the baseline),
- ``sandbox-python``: ``--kernels`` local Sandbox kernels for Python,
- ``sandbox-mix``: ``--kernels`` local Sandbox kernels, a third each Python, Node.js and Bash.

In a batch every kernel gets a thread of its own; all threads wait at a barrier and then, at
once, call ``KernelManager.start_kernel()``, wait for IOPub (ipykernel 7's ``iopub_welcome``)
and run one trivial cell (``1``; ``echo 1`` for Bash). The batch's *all-ready* time is from the
barrier until the last kernel's first output; each kernel's *first result* is measured from
the barrier as well (so it includes waiting for the CPU behind the other 19). Once all have
answered (or failed), all are shut down at once (``shutdown_kernel(now=False)``, threads again),
and a shutdown is *clean* when the kernel process exited by itself, with status 0, after the
``shutdown_request`` (``KernelManager`` did not have to send SIGTERM or SIGKILL). The benchmark
gives the kernels ``--shutdown-wait`` 30 s (SIGTERM after 15 s) rather than jupyter_client's
default 5 s (SIGTERM after 2.5 s): twenty interpreters exiting at once on two busy cores can take
longer than 2.5 s, and the question here is whether each exits by itself. A kernel still
running 6 s into its shutdown has its threads' stacks recorded (``py-spy dump``, when
installed) in the JSON and the log.

After every batch it checks that nothing is left behind:

- no kernel process, and none of the processes that were descendants of a kernel while it ran
  (``sh``/``setpriv``/``bwrap``/the agent), compared by pid *and* start time,
- no process in, and no directory of, a cgroup ``/sys/fs/cgroup/*/sandbox-kernel/k<pid>-*`` (or
  ``/sys/fs/cgroup/sandbox-kernel/k<pid>-*`` on cgroup v2) of any of the batch's kernel pids,
- nothing in the private directory given to the kernels as ``TMPDIR`` and
  ``JUPYTER_RUNTIME_DIR`` (connection files, temp files), and no new entry in ``/tmp`` or
  ``/dev/shm`` owned by a uid other than the benchmark's own (sandbox uids). New entries owned by
  root in ``/tmp`` are listed but not counted (the machine is shared).

The exit status is non-zero when anything leaked, a kernel did not answer its cell, or a
shutdown was not clean. Needs what the local backend needs (root for cgroups, bubblewrap,
``node`` and ``bash``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

import zmq
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kernels import write_kernelspecs  # noqa: E402

FIRST = {"python3": "1", "sandbox-python": "1", "sandbox-node": "1", "sandbox-bash": "echo 1"}
KERNEL_LOG: Any = subprocess.DEVNULL
DUMP_AFTER = 6.0  # seconds into a shutdown after which a still-running kernel's stacks are dumped


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def batch_names(batch: str, n: int) -> list[str]:
    if batch == "sandbox-mix":
        languages = ["sandbox-python", "sandbox-node", "sandbox-bash"]
        return [languages[i % 3] for i in range(n)]
    return [batch] * n


# -- processes, cgroups, files ---------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a live process, None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; its parent has not reaped it yet
        return None
    return int(fields[1]), int(fields[19])


def descendants(roots: set[int]) -> dict[int, int]:
    """{pid: start time} of every live descendant of ``roots``."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                children.setdefault(st[0], []).append((int(entry), st[1]))
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for child, start in children.get(todo.pop(), []):
            if child not in found:
                found[child] = start
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def kernel_cgroups(pid: int) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return sorted(set(root.glob(f"*/sandbox-kernel/k{pid}-*")) | set(root.glob(f"sandbox-kernel/k{pid}-*")))


def cgroup_procs(path: Path) -> list[int]:
    pids = []
    for name in ("cgroup.procs", "tasks"):
        try:
            pids += [int(x) for x in (path / name).read_text().split()]
        except OSError:
            pass
    return sorted(set(pids))


def dir_entries(path: Path) -> dict[str, int]:
    """{name: owner uid} of the entries of a directory."""
    out = {}
    try:
        for entry in os.scandir(path):
            try:
                out[entry.name] = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                pass
    except OSError:
        pass
    return out


# -- one kernel --------------------------------------------------------------------------------


class Kernel:
    def __init__(self, name: str, context: zmq.Context, shutdown_wait: float) -> None:
        self.name = name
        self.km = KernelManager(kernel_name=name, context=context)
        # KernelManager sends SIGTERM after half of this, SIGKILL after all of it.
        self.km.shutdown_wait_time = shutdown_wait
        self.kc: Any = None
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.popen: Any = None
        self.first: float | None = None  # first output, perf_counter
        self.iopub: float | None = None
        self.launched: float | None = None  # start_kernel() returned
        self.error: str | None = None
        self.shutdown_seconds: float | None = None
        self.shutdown_status = ""
        self.returncode: int | None = None
        self.hang_dump: str | None = None

    def start_and_answer(self, barrier: threading.Barrier, timeout: float) -> None:
        barrier.wait()
        deadline = time.monotonic() + timeout
        try:
            self.km.start_kernel(stdout=KERNEL_LOG, stderr=KERNEL_LOG)
            self.launched = time.perf_counter()
            self.popen = getattr(self.km.provisioner, "process", None)
            self.pid = self.popen.pid if self.popen is not None else None
            if self.pid:
                st = proc_stat(self.pid)
                self.pid_start = st[1] if st else None
            self.kc = self.km.client()
            self.kc.start_channels()
            # IOPub first: a cell sent before the SUB socket is connected would lose its output.
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no IOPub message within {timeout} s")
                try:
                    msg = self.kc.iopub_channel.get_msg(timeout=min(left, 0.5))
                except Empty:
                    if not self.km.is_alive():
                        raise RuntimeError("the kernel died while starting") from None
                    continue
                if msg["msg_type"] in ("iopub_welcome", "status"):
                    self.iopub = time.perf_counter()
                    break
            msg_id = self.kc.execute(FIRST[self.name])
            idle = False
            while not idle:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no idle within {timeout} s of the start")
                try:
                    msg = self.kc.iopub_channel.get_msg(timeout=left)
                except Empty:
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind in ("stream", "execute_result") and self.first is None:
                    self.first = time.perf_counter()
                elif kind == "error":
                    raise RuntimeError(
                        f"the cell failed: {msg['content'].get('ename')}: {msg['content'].get('evalue')}"
                    )
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no execute_reply")
                reply = self.kc.get_shell_msg(timeout=left)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if reply["content"].get("status") != "ok" or self.first is None:
                raise RuntimeError(f"reply {reply['content'].get('status')}, first output {self.first}")
        except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
            self.error = f"{type(exc).__name__}: {exc}"

    def shutdown(self, barrier: threading.Barrier, kill: bool = False) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        if kill and self.pid:  # --kill-one: what a crashed kernel leaves behind (tests the checks)
            os.kill(self.pid, signal.SIGKILL)
        # A kernel still running DUMP_AFTER s after the shutdown_request: record its threads' stacks.
        timer = threading.Timer(DUMP_AFTER, self._dump_if_running)
        timer.daemon = True
        timer.start()
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=False)
            status = getattr(self.km, "_shutdown_status", None)
            self.shutdown_status = getattr(status, "name", str(status))
        except Exception as exc:  # noqa: BLE001
            self.shutdown_status = f"failed: {type(exc).__name__}: {exc}"
        timer.cancel()
        self.shutdown_seconds = time.perf_counter() - t0
        if self.popen is not None:
            self.returncode = self.popen.poll()

    def _dump_if_running(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        spy = shutil.which("py-spy")
        if spy is None:
            self.hang_dump = (
                f"still running {DUMP_AFTER:g} s after the shutdown_request (install py-spy for its stacks)"
            )
            return
        try:
            out = subprocess.run(
                [spy, "dump", "--pid", str(self.pid)], capture_output=True, text=True, timeout=30, check=False
            )
            self.hang_dump = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.hang_dump = f"py-spy failed: {exc}"

    @property
    def clean(self) -> bool:
        # ShutdownRequest: the kernel exited after the shutdown_request; SigtermRequest or
        # SigkillRequest: KernelManager had to send a signal.
        return self.shutdown_status in ("ShutdownRequest", "Unset") and self.returncode == 0


# -- one batch -----------------------------------------------------------------------------------


def run_batch(
    batch: str,
    n: int,
    context: zmq.Context,
    private: Path,
    timeout: float,
    shutdown_wait: float,
    kill_one: bool = False,
) -> dict[str, Any]:
    names = batch_names(batch, n)
    kernels = [Kernel(name, context, shutdown_wait) for name in names]
    me = os.getuid()
    tmp_before = {d: dir_entries(Path(d)) for d in ("/tmp", "/dev/shm")}
    load = os.getloadavg()[0]

    barrier = threading.Barrier(n + 1)
    threads = [threading.Thread(target=k.start_and_answer, args=(barrier, timeout), daemon=True) for k in kernels]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout + 30)
    all_ready = time.perf_counter() - t0
    # While every kernel is up: the processes each one started (its sandbox).
    pids = {k.pid for k in kernels if k.pid}
    tree = descendants(pids)
    sandbox_processes = len(tree)
    cgroups_seen = sum(len(kernel_cgroups(p)) for p in pids)

    barrier = threading.Barrier(n + 1)
    threads = [
        threading.Thread(target=k.shutdown, args=(barrier, kill_one and i == 0), daemon=True)
        for i, k in enumerate(kernels)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    t1 = time.perf_counter()
    for t in threads:
        t.join(120)
    all_down = time.perf_counter() - t1

    # -- what is left ----------------------------------------------------------------------
    leaks: list[str] = []
    time.sleep(0.5)  # let the last cgroup removals and reaping finish
    for k in kernels:
        if k.pid and k.pid_start is not None:
            st = proc_stat(k.pid)
            if st and st[1] == k.pid_start:
                leaks.append(f"kernel process {k.pid} ({k.name}) still running: {cmdline(k.pid)}")
    for pid, start in sorted(tree.items()):
        st = proc_stat(pid)
        if st and st[1] == start:
            leaks.append(f"process {pid} (was a kernel's descendant) still running: {cmdline(pid)}")
    for pid in sorted(pids):
        for group in kernel_cgroups(pid):
            inside = cgroup_procs(group)
            leaks.append(f"cgroup {group} left" + (f" with processes {inside}" if inside else " (empty)"))
    for sub in ("tmp", "runtime"):
        for path in sorted((private / sub).rglob("*")):
            leaks.append(f"left in the kernels' private {'TMPDIR' if sub == 'tmp' else 'JUPYTER_RUNTIME_DIR'}: {path}")
    unattributed = []
    for d, before in tmp_before.items():
        for name, uid in dir_entries(Path(d)).items():
            if name in before:
                continue
            if uid != me:
                leaks.append(f"new entry {d}/{name} owned by uid {uid}")
            else:
                unattributed.append(f"{d}/{name}")

    ready = [k for k in kernels if k.first is not None and k.error is None]
    firsts = sorted(k.first - t0 for k in ready)
    result = {
        "batch": batch,
        "kernels": names,
        "loadavg_before": load,
        "all_ready_s": max(firsts) if firsts else all_ready,  # to the last first result
        "answered": len(ready),
        "first_result_s": firsts,
        "first_result": {"p50": pct(firsts, 50), "p95": pct(firsts, 95), "max": max(firsts) if firsts else None},
        "launch_s": sorted(k.launched - t0 for k in kernels if k.launched),
        "iopub_s": sorted(k.iopub - t0 for k in kernels if k.iopub),
        "errors": [f"{k.name}: {k.error}" for k in kernels if k.error],
        "sandbox_processes_seen": sandbox_processes,
        "cgroups_seen": cgroups_seen,
        "all_down_s": all_down,
        "shutdown_s": sorted(k.shutdown_seconds for k in kernels if k.shutdown_seconds is not None),
        "shutdown_wait_time": shutdown_wait,
        "clean_shutdowns": sum(k.clean for k in kernels),
        "unclean": [
            f"{k.name} pid {k.pid}: {k.shutdown_status}, exit status {k.returncode}" for k in kernels if not k.clean
        ],
        "hung": {f"{k.name} pid {k.pid}": k.hang_dump for k in kernels if k.hang_dump},
        "leaks": leaks,
        "new_tmp_entries_own_uid": unattributed,
    }
    log(
        f"  {batch}: {len(ready)}/{n} answered, all ready {all_ready:.2f} s, first result p50 "
        f"{result['first_result']['p50']:.2f} / p95 {result['first_result']['p95']:.2f} / max "
        f"{(result['first_result']['max'] or float('nan')):.2f} s; {sandbox_processes} sandbox processes, "
        f"{cgroups_seen} cgroups; all down {all_down:.2f} s, {result['clean_shutdowns']}/{n} clean; "
        f"{len(leaks)} leaks (load {load:.1f})"
    )
    for line in result["errors"] + result["unclean"] + leaks:
        log("    " + line)
    for who, dump in result["hung"].items():
        log(
            f"    {who} was still running {DUMP_AFTER:g} s into its shutdown:\n"
            + "\n".join("      " + x for x in dump.splitlines())
        )
    return result


# -- report --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    versions = {}
    for module in ("ipykernel", "jupyter_client", "zmq"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            pass
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def table(batches: list[dict[str, Any]], n: int) -> str:
    rows = [
        (
            f"| {n} kernels at once | all ready, median (each run) (s) | first result p50 / p95 / max, median of runs (s) "
            "| answered | all shut down, median (s) | one kernel's shutdown p50 / max (s) | clean shutdowns "
            "| sandbox processes / cgroups while up | leaks |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def median_of(runs: list[dict[str, Any]], key: str) -> float:
        values = [b["first_result"][key] for b in runs if b["first_result"][key] is not None]
        return statistics.median(values) if values else float("nan")

    for name in dict.fromkeys(b["batch"] for b in batches):
        runs = [b for b in batches if b["batch"] == name]
        # a run where not every kernel answered shows its time to the last answer, starred
        each = ", ".join(f"{b['all_ready_s']:.1f}" + ("" if b["answered"] == n else "*") for b in runs)
        shutdowns = [x for b in runs for x in b["shutdown_s"]]
        rows.append(
            f"| {name} | {statistics.median(b['all_ready_s'] for b in runs):.1f} ({each}) "
            f"| {median_of(runs, 'p50'):.1f} / {median_of(runs, 'p95'):.1f} / {median_of(runs, 'max'):.1f} "
            f"| {sum(b['answered'] for b in runs)}/{n * len(runs)} | {statistics.median(b['all_down_s'] for b in runs):.1f} "
            f"| {pct(shutdowns, 50):.1f} / {max(shutdowns):.1f} "
            f"| {sum(b['clean_shutdowns'] for b in runs)}/{n * len(runs)} "
            f"| {statistics.median(b['sandbox_processes_seen'] for b in runs):.0f} / {statistics.median(b['cgroups_seen'] for b in runs):.0f} "
            f"| {sum(len(b['leaks']) for b in runs)} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=20, help="kernels per batch (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all batches (default 2)")
    parser.add_argument(
        "--batches",
        default="python3,sandbox-python,sandbox-mix",
        help="comma-separated subset of python3, sandbox-python, sandbox-mix",
    )
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds a kernel has to answer its cell (default 120)"
    )
    parser.add_argument(
        "--shutdown-wait",
        type=float,
        default=30,
        help="KernelManager.shutdown_wait_time: SIGTERM after half of it, SIGKILL after all (default 30; jupyter_client's default is 5)",
    )
    parser.add_argument(
        "--kill-one",
        action="store_true",
        help="SIGKILL the first kernel of each batch instead of shutting it down: shows that the leak checks see what a crashed kernel leaves (its cgroups, until the next kernel sweeps them)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kernel-log", type=Path, help="append the kernels' stdout/stderr here (default: discarded)")
    args = parser.parse_args()
    batch_list = [b for b in args.batches.split(",") if b]
    for b in batch_list:
        if b not in ("python3", "sandbox-python", "sandbox-mix"):
            parser.error(f"unknown batch {b!r}")

    global KERNEL_LOG
    if args.kernel_log:
        KERNEL_LOG = open(args.kernel_log, "ab")  # noqa: SIM115 - open for the whole run
    context = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, 5)
    started = time.time()
    load_before = os.getloadavg()
    batches: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        private = Path(tmp)
        root = write_kernelspecs(private / "spec", backend="local")
        os.environ["JUPYTER_PATH"] = str(root) + (
            os.pathsep + os.environ["JUPYTER_PATH"] if os.environ.get("JUPYTER_PATH") else ""
        )
        # Everything the kernels write to temp or runtime directories lands here, where it is ours.
        for sub in ("tmp", "runtime"):
            (private / sub).mkdir()
        os.environ["TMPDIR"] = str(private / "tmp")
        os.environ["JUPYTER_RUNTIME_DIR"] = str(private / "runtime")
        for r in range(args.rounds):
            order = batch_list[r % len(batch_list) :] + batch_list[: r % len(batch_list)]
            for batch in order:
                log(f"[round {r + 1}/{args.rounds}] {args.kernels} x {batch}")
                batches.append(
                    run_batch(batch, args.kernels, context, private, args.timeout, args.shutdown_wait, args.kill_one)
                )
    load_after = os.getloadavg()

    failed = [b for b in batches if b["leaks"] or b["answered"] < args.kernels or b["clean_shutdowns"] < args.kernels]
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "loadavg": {"before": load_before, "after": load_after},
        "batches": batches,
        "ok": not failed,
    }
    print(table(batches, args.kernels))
    print()
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (1 min); {out['seconds']:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")
    if failed:
        log(f"FAILED: {len(failed)} batch(es) with leaks, unanswered kernels or unclean shutdowns")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
