"""The community's jupyter_kernel_test suite, for each Sandbox kernelspec on the local backend.

The samples (tests/conformance_samples.py) are the same ones the Kubernetes backend passes.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path

import jupyter_kernel_test

from conformance_samples import BashSamples, NodeSamples, PythonSamples
from kernels import write_kernelspecs

_JUPYTER = write_kernelspecs(
    Path(tempfile.mkdtemp(prefix="sandbox-conformance-")),
    backend=os.environ.get("SANDBOX_CONFORMANCE_BACKEND", "local"),
)
os.environ["JUPYTER_PATH"] = str(_JUPYTER) + os.pathsep + os.environ.get("JUPYTER_PATH", "")


class SandboxPythonTests(PythonSamples, jupyter_kernel_test.KernelTests):
    pass


class SandboxNodeTests(NodeSamples, jupyter_kernel_test.KernelTests):
    pass


class SandboxBashTests(BashSamples, jupyter_kernel_test.KernelTests):
    pass


if __name__ == "__main__":
    unittest.main()
