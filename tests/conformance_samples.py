"""What each Sandbox kernelspec is checked with by the jupyter_kernel_test conformance suite.

Shared by the local (tests/integration) and Kubernetes (tests/e2e) conformance tests: the same
samples must pass whatever the backend. Features a language does not have are removed with
``= None`` and the reason beside them, never skipped at run time.
"""

from __future__ import annotations

from typing import Any


class PythonSamples:
    kernel_name = "sandbox-python"
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: list[dict[str, Any]] = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "str.isdig", "matches": {"str.isdigit"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2", "for i in range(3):"]
    invalid_code_samples = ["import = 7q"]
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "class H:\n    def _repr_html_(self): return '<b>x</b>'\ndisplay(H())", "mime": "text/html"},
        {"code": "display(42)", "mime": "text/plain"},
    ]
    code_inspect_sample = "zip"
    test_pager = None  # no pager payloads: help text comes through inspect
    test_history = None  # the sandbox keeps no IPython history database
    test_clear_output = None  # no clear_output helper in the agent


class NodeSamples:
    kernel_name = "sandbox-node"
    language_name = "javascript"
    file_extension = ".js"
    code_hello_world = "console.log('hello, world')"
    code_stderr = "console.error('test')"
    completion_samples: list[dict[str, Any]] = [{"text": "Mat", "matches": {"Math"}}]
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


class BashSamples:
    kernel_name = "sandbox-bash"
    language_name = "bash"
    file_extension = ".sh"
    code_hello_world = "echo 'hello, world'"
    code_stderr = "echo test >&2"
    completion_samples: list[dict[str, Any]] = [{"text": "ech", "matches": {"echo"}}]
    complete_code_samples = ["echo hi", "if true; then echo yes; fi"]
    incomplete_code_samples = ["if true; then", "echo 'abc", "for i in 1 2; do"]
    code_generate_error = "false"
    code_inspect_sample = "echo"
    test_execute_result = None  # shell commands print; they have no value to display
    test_display_data = None  # no rich display in bash
    test_pager = None
    test_history = None
    test_clear_output = None
