"""Settings validation: every bad value is a ConfigError that names the setting."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from sandbox_kernel.config import Sandbox, check_timeout
from sandbox_kernel.errors import ConfigError
from sandbox_kernel.sessions import make_session
from sandbox_kernel.quantity import QuantityError, format_bytes, parse_bytes, parse_cpu


@pytest.mark.parametrize(
    "text,expected",
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("64", 64), ("0.5Gi", 2**29), ("100k", 100_000)],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text,expected", [("500m", 0.5), ("1", 1.0), ("1.5", 1.5), ("10m", 0.01)])
def test_parse_cpu(text: str, expected: float) -> None:
    assert parse_cpu(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["256Mb", "-1Gi", "", "1.5.0", "Mi", "12 Mi", "0x10"])
def test_malformed_byte_quantities(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["500M", "1Gi", "-1", "half"])
def test_malformed_cpu_quantities(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_cpu(text)


def test_format_bytes_round_trips() -> None:
    assert format_bytes(256 * 2**20) == "256Mi"
    assert format_bytes(2**30) == "1Gi"
    assert format_bytes(1000) == "1000"


def test_defaults_are_the_original_design() -> None:
    limits = Sandbox().limits()
    assert (limits.memory, limits.cpu, limits.memory_request, limits.cpu_request) == ("256Mi", "500m", "64Mi", "100m")
    assert limits.timeout == 30
    assert limits.memory_bytes == 256 * 2**20
    assert "memory 256Mi" in limits.summary()


@pytest.mark.parametrize(
    "setting,value,needle",
    [
        ("memory_limit", "256Mb", "Sandbox.memory_limit"),
        ("memory_limit", "-256Mi", "Sandbox.memory_limit"),
        ("memory_limit", "1Ki", "too small"),
        ("cpu_limit", "0", "Sandbox.cpu_limit"),
        ("cpu_limit", "lots", "Sandbox.cpu_limit"),
        ("memory_request", "1Gi", "above memory_limit"),
        ("output_limit", "4MB", "Sandbox.output_limit"),
        ("scratch_size", "big", "Sandbox.scratch_size"),
        ("timeout", -1.0, "Sandbox.timeout"),
        ("pids_limit", 2, "Sandbox.pids_limit"),
    ],
)
def test_bad_settings_name_the_setting(setting: str, value: object, needle: str) -> None:
    config = Config()
    config.Sandbox[setting] = value
    with pytest.raises(ConfigError) as info:
        Sandbox(config=config).limits()
    assert needle in str(info.value)
    assert info.value.setting.startswith("Sandbox.")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_MEMORY_LIMIT", "512Mi")
    monkeypatch.setenv("SANDBOX_TIMEOUT", "5")
    limits = Sandbox().limits()
    assert limits.memory == "512Mi" and limits.timeout == 5


def test_unknown_backend_and_language() -> None:
    with pytest.raises(ConfigError, match="SandboxKernel.backend.*unknown backend 'docker'"):
        make_session("docker", "python")
    with pytest.raises(ConfigError, match="SandboxKernel.language.*unknown language 'cobol'"):
        make_session("local", "cobol")


def test_timeout_magic_argument() -> None:
    assert check_timeout("2.5") == 2.5
    with pytest.raises(ConfigError, match="%timeout"):
        check_timeout("soon")
    with pytest.raises(ConfigError, match="%timeout"):
        check_timeout("-3")
