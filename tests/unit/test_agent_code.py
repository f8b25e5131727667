"""The agent file a local sandbox gets (local/agent_code.py): the bytecode of a valid cache, with
the agent's path inside as every file name; the source when the cache is missing or stale or the
sandbox runs another interpreter."""

from __future__ import annotations

import importlib.util
import marshal
import os
import py_compile
import subprocess
import sys
import types
from pathlib import Path

from sandbox_kernel.local.agent_code import for_sandbox

INSIDE = "/opt/sandbox-agent/agent.py"
SOURCE = "def f():\n    def g():\n        return __file__\n    return g\nprint(f()(), f.__code__.co_filename)\n"


def agent(tmp_path: Path, compiled: bool = True) -> Path:
    path = tmp_path / "agent.py"
    path.write_text(SOURCE)
    if compiled:
        py_compile.compile(str(path), doraise=True)
    return path


def file_names(code: types.CodeType) -> set[str]:
    names = {code.co_filename}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= file_names(const)
    return names


def test_a_valid_cache_becomes_bytecode_named_as_inside_the_sandbox_and_runs(tmp_path: Path) -> None:
    data = for_sandbox(agent(tmp_path), sys.executable, INSIDE)
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert file_names(marshal.loads(data[16:])) == {INSIDE}
    target = tmp_path / "inside.py"  # any name: Python runs it as bytecode by its magic number
    target.write_bytes(data)
    out = subprocess.run([sys.executable, str(target)], capture_output=True, text=True, check=True)
    assert out.stdout == f"{target} {INSIDE}\n"


def test_without_a_cache_or_with_a_stale_one_the_source_is_given(tmp_path: Path) -> None:
    assert for_sandbox(agent(tmp_path, compiled=False), sys.executable, INSIDE) == SOURCE.encode()
    path = agent(tmp_path)
    path.write_text(SOURCE + "# changed\n")
    os.utime(path, (1, 1))
    assert for_sandbox(path, sys.executable, INSIDE) == (SOURCE + "# changed\n").encode()


def test_another_interpreter_gets_the_source(tmp_path: Path) -> None:
    assert for_sandbox(agent(tmp_path), "/usr/bin/false", INSIDE) == SOURCE.encode()


def test_a_non_python_agent_is_given_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "agent.sh"
    path.write_text("echo hi\n")
    assert for_sandbox(path, sys.executable, INSIDE) == b"echo hi\n"
