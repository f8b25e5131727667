"""The community's jupyter_kernel_test suite for each Sandbox kernelspec on the Kubernetes backend.

Each class starts one real kernel (kernelspecs in a temporary JUPYTER_PATH) whose sandbox is a
namespace and pod on the test cluster, created by the k8s/rbac service account. The samples
(tests/conformance_samples.py) are the ones the local backend passes. Fails when the cluster is missing.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path
from typing import Any

import jupyter_kernel_test
import pytest

from conformance_samples import BashSamples, NodeSamples, PythonSamples
from fixtures_kubernetes import images_from_cache, kernel_environment

pytestmark = pytest.mark.cluster


class _OnKubernetes(jupyter_kernel_test.KernelTests):
    """Points the kernel at the cluster, as the service account, for the duration of the class."""

    _saved: dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        admin = os.environ.get("SANDBOX_KUBECONFIG", "")
        if not admin or not Path(admin).is_file():
            raise AssertionError(
                "SANDBOX_KUBECONFIG must name the admin kubeconfig of the test cluster (tests/cluster/up prints it)"
            )
        env = kernel_environment(admin, images_from_cache(), Path(tempfile.mkdtemp(prefix="sandbox-k8s-conformance-")))
        env["JUPYTER_PATH"] = env["JUPYTER_PATH"] + os.pathsep + os.environ.get("JUPYTER_PATH", "")
        cls._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            super().setUpClass()
        finally:
            # Only the kernel process needed these; the admin-side fixtures must see the originals.
            for key, value in cls._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class SandboxPythonOnKubernetes(PythonSamples, _OnKubernetes):
    pass


class SandboxNodeOnKubernetes(NodeSamples, _OnKubernetes):
    pass


class SandboxBashOnKubernetes(BashSamples, _OnKubernetes):
    pass


del _OnKubernetes  # the base class has no kernel_name: not a test case of its own

if __name__ == "__main__":
    unittest.main()
