"""``%sandbox selftest``'s verdicts (selftest.evaluate) on observations alone."""

from __future__ import annotations

import ast
import json

import pytest

from sandbox_kernel import selftest

SAFE = {
    "uid": "1000",
    "capeff": "0000000000000000",
    "nnp": "1",
    "seccomp": "2",
    "unshare_userns": "EPERM",
    "keyctl": "EPERM",
    "io_uring_setup": "EPERM",
    "userfaultfd": "EPERM",
    "bpf": "EPERM",
    "write_root": "refused",
    "write_usr": "refused",
    "write_home": "ok",
    "host_home": "hidden",
    "sa_token": "absent",
    "secret_env": "",
    "interfaces": "lo ",
    "ipv6": "",
    "gateway": "",
    "api_host": "",
    "memory_max": str(256 * 2**20),
    "pids_max": "128",
    "version": "Linux version 6.1.0 (debian)",
    "probes": {},
}


def verdicts(obs: dict, backend: str = "local", language: str = "python") -> dict[str, str]:
    return {row.check: row.verdict for row in selftest.evaluate(obs, 256 * 2**20, backend, language)}


def test_a_locked_down_sandbox_passes_every_check() -> None:
    result = verdicts(SAFE)
    assert set(result) == set(selftest.CHECKS)
    assert set(result.values()) == {"pass"}


@pytest.mark.parametrize(
    "change,check",
    [
        ({"uid": "0"}, "non-root user"),
        ({"capeff": "00000000a80425fb"}, "no capabilities"),
        ({"nnp": "0"}, "no new privileges"),
        ({"seccomp": "0"}, "seccomp filter"),
        ({"unshare_userns": "ok"}, "no user namespaces"),
        ({"keyctl": "ok"}, "no keyring"),
        ({"io_uring_setup": "EFAULT"}, "no io_uring"),
        ({"userfaultfd": "ok"}, "no userfaultfd"),
        ({"bpf": "EINVAL"}, "no bpf"),
        ({"write_root": "ok"}, "read-only system"),
        ({"write_home": "refused"}, "writable home"),
        ({"host_home": "visible"}, "no host home"),
        ({"sa_token": "present"}, "no service account token"),
        ({"secret_env": "AWS_SECRET_ACCESS_KEY "}, "no secrets in environment"),
        ({"interfaces": "lo eth0", "probes": {"10.0.0.1:10250": "open"}}, "network isolated"),
        ({"memory_max": str(2**30)}, "memory limit"),
        ({"memory_max": "max"}, "memory limit"),
        ({"pids_max": "max"}, "process limit"),
    ],
)
def test_each_weakness_fails_its_check(change: dict, check: str) -> None:
    result = verdicts({**SAFE, **change})
    assert result[check] == "FAIL"
    assert [c for c, v in result.items() if v == "FAIL"] == [check]


def test_interfaces_with_every_probe_refused_pass() -> None:
    obs = {**SAFE, "interfaces": "eth0 lo", "probes": {"10.244.0.1:10250": "refused", "10.96.0.1:443": "refused"}}
    assert verdicts(obs, "kubernetes")["network isolated"] == "pass"


def test_languages_without_syscall_probes_say_not_applicable() -> None:
    obs = {
        k: v for k, v in SAFE.items() if k not in ("unshare_userns", "keyctl", "io_uring_setup", "userfaultfd", "bpf")
    }
    result = verdicts(obs, language="bash")
    assert result["no keyring"] == "n/a" and result["no io_uring"] == "n/a"


def test_gvisor_is_recognised() -> None:
    rows = selftest.evaluate(
        {**SAFE, "version": "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"}, 2**28, "local", "python"
    )
    assert [r.detail for r in rows if r.check == "runtime"] == ["gVisor (its own kernel)"]


def test_observations_are_read_from_the_last_marked_line_only() -> None:
    out = 'noise\nSANDBOX-SELFTEST {"uid": "0"}\nSANDBOX-SELFTEST ' + json.dumps({"uid": "1000"}) + "\n"
    assert selftest.observations(out) == {"uid": "1000"}
    assert selftest.observations("SANDBOX-SELFTEST [1]") is None
    assert selftest.observations("SANDBOX-SELFTEST {bad") is None


def test_the_python_probe_is_valid_python() -> None:
    ast.parse(selftest.program("python"))
    with pytest.raises(ValueError):
        selftest.program("cobol")


def test_table_counts_failures() -> None:
    table = selftest.format_table(selftest.evaluate({**SAFE, "uid": "0"}, 2**28, "local", "python"))
    assert table.splitlines()[0].startswith("CHECK") and "1 failed" in table


def test_parse_table_reads_back_what_format_table_printed() -> None:
    rows = selftest.evaluate({**SAFE, "uid": "0"}, 2**28, "local", "python")
    assert selftest.parse_table("header\n" + selftest.format_table(rows)) == {r.check: r.verdict for r in rows}


def test_root_may_hold_only_the_way_to_an_environment_shown_on_purpose() -> None:
    env = ("/root/.pyenv/versions/3.11.7",)
    ok = selftest.evaluate({**SAFE, "host_home": ".pyenv "}, 256 * 2**20, "local", "python", env)
    assert {r.check: r.verdict for r in ok}["no host home"] == "pass"
    for seen in (".pyenv .ssh ", ".bashrc ", "visible"):
        rows = selftest.evaluate({**SAFE, "host_home": seen}, 256 * 2**20, "local", "python", env)
        assert {r.check: r.verdict for r in rows}["no host home"] == "FAIL", seen
    rows = selftest.evaluate({**SAFE, "host_home": ".pyenv "}, 256 * 2**20, "local", "python", ())
    assert {r.check: r.verdict for r in rows}["no host home"] == "FAIL"


def test_under_gvisor_its_own_kernel_s_namespaces_keyrings_and_unfiltered_calls_are_not_failures() -> None:
    """What a gVisor pod on Kubernetes shows (runsc without --oci-seccomp): calls served by gVisor's
    own kernel. The same observations from the host's kernel are failures (test above)."""
    gvisor = {
        **SAFE,
        "version": "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016",
        "seccomp": "0",
        "unshare_userns": "ok",
        "keyctl": "ok",
        "io_uring_setup": "ENOSYS",
        "userfaultfd": "ENOSYS",
        "memory_max": "9223372036854775807",
        "pids_max": "max",
    }
    result = verdicts(gvisor, "kubernetes")
    assert {c: v for c, v in result.items() if v != "pass"} == {
        "seccomp filter": "n/a",
        "no user namespaces": "n/a",
        "no keyring": "n/a",
        "memory limit": "n/a",
        "process limit": "n/a",
    }
    assert verdicts(gvisor, "local")["memory limit"] == "FAIL"  # the local runtime shows its limit inside gVisor
    for key in ("io_uring_setup", "userfaultfd", "bpf"):  # gVisor's kernel has no excuse for these
        assert (
            verdicts({**gvisor, key: "EFAULT"}, "kubernetes")[
                {"io_uring_setup": "no io_uring", "userfaultfd": "no userfaultfd", "bpf": "no bpf"}[key]
            ]
            == "FAIL"
        )
    assert (
        verdicts({**gvisor, "seccomp": "2", "unshare_userns": "EPERM", "keyctl": "EPERM"}, "kubernetes")[
            "seccomp filter"
        ]
        == "pass"
    )
