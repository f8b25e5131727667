"""The community's jupyter_kernel_test suite for each Sandbox kernelspec on the Kubernetes backend.

Each class starts one real kernel (kernelspecs in a temporary JUPYTER_PATH) whose sandbox is a
namespace and pod on the test cluster, created by the k8s/rbac service account. The samples
are the ones the local backend passes; features a language lacks are removed with ``= None``
and the reason beside them, never skipped at run time. Fails when the cluster is missing.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path
from typing import Any

import jupyter_kernel_test
import pytest

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


class SandboxPythonOnKubernetes(_OnKubernetes):
    kernel_name = "sandbox-python"
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}, {"text": "str.isdig", "matches": {"str.isdigit"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2", "for i in range(3):"]
    invalid_code_samples = ["import = 7q"]
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"}]
    code_display_data = [
        {"code": "class H:\n    def _repr_html_(self): return '<b>x</b>'\ndisplay(H())", "mime": "text/html"},
        {"code": "display(42)", "mime": "text/plain"},
    ]
    code_inspect_sample = "zip"
    test_pager = None  # no pager payloads: help text comes through inspect
    test_history = None  # the sandbox keeps no IPython history database
    test_clear_output = None  # no clear_output helper in the agent


class SandboxNodeOnKubernetes(_OnKubernetes):
    kernel_name = "sandbox-node"
    language_name = "javascript"
    file_extension = ".js"
    code_hello_world = "console.log('hello, world')"
    code_stderr = "console.error('test')"
    completion_samples = [{"text": "Mat", "matches": {"Math"}}]
    complete_code_samples = ["1", "let a = 1", "function f(x) { return x * 2 }"]
    incomplete_code_samples = ["function f(x) {", "[1, 2", "`abc"]
    invalid_code_samples = ["let = = 1"]
    code_generate_error = "throw new Error('boom')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "'a' + 'b'", "result": "'ab'"}]
    code_display_data = [{"code": "display({'text/html': '<b>x</b>'})", "mime": "text/html"}]
    code_inspect_sample = "Math"
    test_pager = None  # no pager payloads
    test_history = None  # no history database
    test_clear_output = None  # no clear_output helper


class SandboxBashOnKubernetes(_OnKubernetes):
    kernel_name = "sandbox-bash"
    language_name = "bash"
    file_extension = ".sh"
    code_hello_world = "echo 'hello, world'"
    code_stderr = "echo test >&2"
    completion_samples = [{"text": "ech", "matches": {"echo"}}]
    complete_code_samples = ["echo hi", "if true; then echo yes; fi"]
    incomplete_code_samples = ["if true; then", "echo 'abc", "for i in 1 2; do"]
    code_generate_error = "false"
    code_inspect_sample = "echo"
    test_execute_result = None  # shell commands print; they have no value to display
    test_display_data = None  # no rich display in bash
    test_pager = None
    test_history = None
    test_clear_output = None


del _OnKubernetes  # the base class has no kernel_name: not a test case of its own

if __name__ == "__main__":
    unittest.main()
