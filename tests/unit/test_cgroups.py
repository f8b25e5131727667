"""local/cgroups.py on fake cgroup trees under tmp_path: what setting up the parent groups writes."""

from __future__ import annotations

from pathlib import Path

from sandbox_kernel.local import cgroups


def test_setting_up_v2_creates_the_parent_and_enables_its_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cgroups.set_up_parent_groups(tmp_path) is None
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (tmp_path / cgroups.PARENT / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"


def test_setting_up_v1_creates_a_parent_per_controller(tmp_path: Path) -> None:
    for controller in cgroups.V1_CONTROLLERS:
        (tmp_path / controller).mkdir()
    assert cgroups.set_up_parent_groups(tmp_path) is None
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{cgroups.PARENT}")) == sorted(cgroups.V1_CONTROLLERS)


def test_without_controllers_it_says_why_and_writes_nothing(tmp_path: Path) -> None:
    reason = cgroups.set_up_parent_groups(tmp_path)
    assert reason == f"no memory, cpu and pids cgroup controllers are mounted under {tmp_path}"
    assert list(tmp_path.iterdir()) == []


def test_no_function_that_reads_like_a_question_writes_to_the_host() -> None:
    """The old name, ``unavailable_reason``, read like a question while it wrote to /sys/fs/cgroup."""
    assert not hasattr(cgroups, "unavailable_reason")
