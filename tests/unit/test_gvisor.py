"""The gVisor runtime's OCI bundle and checks (sandbox_kernel/local/gvisor.py), without runsc."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.local import backend, gvisor


def make_spec() -> dict:
    return gvisor.spec(
        ["python3", "/opt/sandbox-agent/python_agent.py"],
        {"PATH": backend.SANDBOX_PATH, "HOME": backend.SANDBOX_HOME},
        home=backend.SANDBOX_HOME,
        agent_dir=backend.AGENT_DIR,
        system_dirs=backend.SYSTEM_DIRS,
        read_only_paths=[("/run/sandbox-kernel/view/0", "/srv/data")],
        files={"/etc/passwd": "/b/passwd"},
        limits=Sandbox().limits(),
    )


def test_spec_is_read_only_unprivileged_and_without_network_namespace_escape() -> None:
    spec = make_spec()
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    process = spec["process"]
    assert process["user"]["uid"] == 1000 and process["noNewPrivileges"] is True
    assert all(not caps for caps in process["capabilities"].values())
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert binds and all("ro" in m["options"] for m in binds)
    assert {m["destination"] for m in binds} >= {"/usr", "/etc", "/srv/data", "/etc/passwd"}
    assert {m["source"] for m in binds if m["destination"] == "/srv/data"} == {"/run/sandbox-kernel/view/0"}  # staged
    tmpfs = {m["destination"]: m["options"] for m in spec["mounts"] if m["type"] == "tmpfs"}
    scratch = Sandbox().limits().scratch_bytes
    assert f"size={scratch}" in tmpfs[backend.SANDBOX_HOME] and f"size={scratch}" in tmpfs["/tmp"]
    assert {"type": "network"} in spec["linux"]["namespaces"]


def test_seccomp_profile_is_the_project_s_table_less_clone3() -> None:
    names = {n for entry in make_spec()["linux"]["seccomp"]["syscalls"] for n in entry["names"]}
    assert "clone3" not in names  # runsc would answer EPERM, and glibc's threads need ENOSYS
    assert {"keyctl", "io_uring_setup", "unshare", "mount", "ptrace", "bpf", "clone", "ioctl"} <= names


def test_bundle_files_and_command(tmp_path: Path) -> None:
    bundle = gvisor.GVisorBundle("k1-1", tmp_path)
    bundle.create(
        agent_name="python_agent.py",
        agent=b"print(1)",
        args=["python3"],
        env={"PATH": "/usr/bin"},
        home=backend.SANDBOX_HOME,
        agent_dir=backend.AGENT_DIR,
        system_dirs=backend.SYSTEM_DIRS,
        read_only_paths=[],
        passwd=backend.PASSWD,
        group=backend.GROUP,
        limits=Sandbox().limits(),
        owner=None,
    )
    rootfs = bundle.bundle / "rootfs"
    assert (rootfs / "opt/sandbox-agent/python_agent.py").read_bytes() == b"print(1)"
    assert (rootfs / "home/sandbox").is_dir() and (rootfs / "usr").is_dir()
    for path in backend.SYSTEM_DIRS:
        if os.path.islink(path):
            assert os.readlink(rootfs / path.lstrip("/")) == os.readlink(path)
    config = json.loads((bundle.bundle / "config.json").read_text())
    assert config["process"]["args"] == ["python3"]
    argv = bundle.command("runsc", "systrap", rootless=True)
    assert argv[:3] == ["setpriv", "--pdeathsig", "KILL"]  # dies with the kernel
    assert {
        "--rootless",
        "--network=none",
        "--ignore-cgroups",
        "--overlay2=none",
        "--oci-seccomp",
        "--platform=systrap",
    } <= set(argv)
    assert argv[-3:] == ["run", f"--bundle={bundle.bundle}", "k1-1"]
    bundle.destroy()
    assert not bundle.dir.exists()


def test_stale_bundles_of_dead_kernels_are_swept(tmp_path: Path) -> None:
    (tmp_path / f"k{os.getpid()}-1").mkdir()
    (tmp_path / "k999999999-1").mkdir()
    assert gvisor.sweep_stale(tmp_path) == ["k999999999-1"]
    assert (tmp_path / f"k{os.getpid()}-1").is_dir()


def test_old_or_missing_runsc_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "not installed" in (gvisor.unavailable_reason(str(tmp_path / "nope")) or "")
    old = tmp_path / "runsc"
    old.write_text("#!/bin/sh\necho 'runsc version 0.0~20221219.0'\n")
    old.chmod(0o755)
    assert "too old" in (gvisor.unavailable_reason(str(old)) or "")
