"""network_hint: which failed cells get the one-line 'no network by design' advice."""

from __future__ import annotations

import pytest

from sandbox_kernel.network_hint import network_hint


@pytest.mark.parametrize(
    ("ename", "evalue", "traceback", "stderr"),
    [
        ("gaierror", "[Errno -3] Temporary failure in name resolution", [], ""),
        ("URLError", "<urlopen error [Errno -2] Name or service not known>", [], ""),
        (
            "ConnectionError",
            "HTTPSConnectionPool(host='pypi.org', port=443): Max retries exceeded (NameResolutionError)",
            [],
            "",
        ),
        ("OSError", "[Errno 101] Network is unreachable", [], ""),
        ("ConnectionRefusedError", "[Errno 111] Connection refused", [], ""),
        ("Error", "getaddrinfo ENOTFOUND example.com", [], ""),
        ("Error", "getaddrinfo EAI_AGAIN example.com", [], ""),
        (
            "TypeError",
            "fetch failed",
            ["TypeError: fetch failed", "  [cause]: Error: connect ENETUNREACH 1.1.1.1:443"],
            "",
        ),
        ("BashError", "exit status 6", [], "curl: (6) Could not resolve host: example.com\n"),
        (
            "BashError",
            "exit status 1",
            [],
            "WARNING: Retrying ... Failed to establish a new connection: [Errno -3] Temporary failure in name resolution\n",
        ),
    ],
)
def test_a_refused_network_access_gets_the_hint(ename: str, evalue: str, traceback: list[str], stderr: str) -> None:
    hint = network_hint(ename, evalue, traceback, stderr, "local")
    assert hint is not None and hint.startswith("[sandbox] This sandbox has no network access by design")
    assert "\n" not in hint and "c.Sandbox.allow_hosts" in hint
    assert "NetworkPolicy" in (network_hint(ename, evalue, traceback, stderr, "kubernetes") or "")


@pytest.mark.parametrize(
    ("ename", "evalue", "traceback", "stderr"),
    [
        ("ZeroDivisionError", "division by zero", ["ZeroDivisionError: division by zero"], ""),
        ("KeyError", "'resolution'", [], "some unrelated warning\n"),
        # The kernel's own errors carry their own advice (an API server refusing the kernel is
        # not the sandbox's network).
        (
            "ClusterUnreachable",
            "The Kubernetes API server at https://10.0.0.1 could not be reached (Connection refused)",
            [],
            "",
        ),
        ("CellTimeout", "The cell was stopped after 30 s", [], ""),
    ],
)
def test_other_errors_get_none(ename: str, evalue: str, traceback: list[str], stderr: str) -> None:
    assert network_hint(ename, evalue, traceback, stderr, "local") is None


def test_only_the_end_of_a_huge_output_is_searched() -> None:
    flood = "Temporary failure in name resolution" + "x" * 100_000
    assert network_hint("BashError", "exit status 1", [], flood, "local") is None
    assert (
        network_hint("BashError", "exit status 1", ["noise"] * 50 + [flood[:100]] + ["noise"] * 30, "", "local") is None
    )
