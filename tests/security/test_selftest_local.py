"""``%sandbox selftest`` in real local sandboxes of all three languages: every check passes or
does not apply, and the probe leaves nothing in the user's namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
from kernels import run_cell, running_kernel, text

from sandbox_kernel import selftest

SETUP = {"sandbox-python": "x = 41", "sandbox-node": "let x = 41", "sandbox-bash": "x=41"}
AFTER = {
    # IPython mode's own history names (_, _i, _i3, _ih, _oh, _dh, ...) are no trace of the probe.
    "sandbox-python": "print(x + 1, sorted(n for n in dir() if n.startswith('_') and not n.startswith('__')"
    " and not __import__('re').fullmatch(r'_(i+|i?\\d+|[iod]h)?', n)))",
    "sandbox-node": "console.log(x + 1)",
    "sandbox-bash": "echo $((x + 1)) ${obs:-}",
}


@pytest.mark.parametrize("kernel", sorted(SETUP))
def test_selftest_passes_in_a_local_sandbox(local_kernelspecs: Path, kernel: str) -> None:
    with running_kernel(kernel) as (_km, kc):
        run_cell(kc, SETUP[kernel])
        reply, outputs = run_cell(kc, "%sandbox selftest")
        assert reply["status"] == "ok", outputs
        table = text(outputs)
        assert set(selftest.parse_table(table)) == set(selftest.CHECKS), table
        failed = [line for line in table.splitlines() if "  FAIL  " in line]
        assert not failed, table
        assert "0 failed" in table
        if kernel == "sandbox-python":
            assert "n/a" not in table.split("memory limit")[0], table  # every system call was probed
        _reply, outputs = run_cell(kc, AFTER[kernel])
        assert text(outputs).split()[0] == "42"
        if kernel == "sandbox-python":
            assert text(outputs).strip() == "42 []", text(outputs)
