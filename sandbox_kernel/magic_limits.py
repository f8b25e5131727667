"""``%%sandbox --timeout/--memory/--cpu``: the per-cell limits a magic cell may ask for.

A cell may only ask for limits *stricter* than the configured ``Sandbox.*`` ones; a stricter
memory or CPU limit needs a one-off sandbox, whose configuration :func:`one_off_config` builds.
Pure: no sandbox is touched here.
"""

from __future__ import annotations

from dataclasses import dataclass

from traitlets.config import Config

from .config import Sandbox
from .errors import ConfigError
from .quantity import QuantityError, parse_bytes, parse_cpu


@dataclass(frozen=True)
class CellLimits:
    """What a ``%%sandbox`` line asked for; ``None`` = as configured."""

    timeout: float | None = None
    memory: str | None = None
    cpu: str | None = None


def check_cell_limits(asked: CellLimits, configured: Sandbox) -> CellLimits:
    """Keep only the limits stricter than ``configured``; raise ConfigError for looser ones.

    Equal limits are dropped, so ``--memory 256Mi`` under a 256Mi configuration runs in the
    ordinary session.
    """
    limits = configured.limits()
    timeout = memory = cpu = None
    if asked.timeout is not None:
        stricter = limits.timeout == 0 or (asked.timeout != 0 and asked.timeout < limits.timeout)
        if asked.timeout != limits.timeout and not stricter:
            raise ConfigError(
                "--timeout",
                f"{asked.timeout:g} s is looser than the configured Sandbox.timeout "
                f"({limits.timeout:g} s); a cell may only ask for stricter limits",
            )
        timeout = asked.timeout if stricter else None
    if asked.memory is not None:
        try:
            wanted = parse_bytes(asked.memory)
        except QuantityError as exc:
            raise ConfigError("--memory", str(exc)) from None
        if wanted < 16 * 2**20:
            raise ConfigError("--memory", f"{asked.memory} is too small; use at least 16Mi")
        if wanted > limits.memory_bytes:
            raise ConfigError(
                "--memory",
                f"{asked.memory} is looser than the configured Sandbox.memory_limit ({limits.memory}); "
                "a cell may only ask for stricter limits",
            )
        memory = asked.memory if wanted < limits.memory_bytes else None
    if asked.cpu is not None:
        try:
            wanted_cpu = parse_cpu(asked.cpu)
        except QuantityError as exc:
            raise ConfigError("--cpu", str(exc)) from None
        if wanted_cpu <= 0:
            raise ConfigError("--cpu", "must be more than 0")
        if wanted_cpu > limits.cpu_cores:
            raise ConfigError(
                "--cpu",
                f"{asked.cpu} is looser than the configured Sandbox.cpu_limit ({limits.cpu}); "
                "a cell may only ask for stricter limits",
            )
        cpu = asked.cpu if wanted_cpu < limits.cpu_cores else None
    return CellLimits(timeout, memory, cpu)


def one_off_config(base: Config, strict: CellLimits) -> Config:
    """``base`` with the stricter memory/CPU/time limits of one cell (requests capped to them)."""
    config = Config()
    config.merge(base)
    configured = Sandbox(config=base)
    if strict.memory is not None:
        config.Sandbox.memory_limit = strict.memory
        if parse_bytes(configured.memory_request) > parse_bytes(strict.memory):
            config.Sandbox.memory_request = strict.memory
    if strict.cpu is not None:
        config.Sandbox.cpu_limit = strict.cpu
        if parse_cpu(configured.cpu_request) > parse_cpu(strict.cpu):
            config.Sandbox.cpu_request = strict.cpu
    if strict.timeout is not None:
        config.Sandbox.timeout = strict.timeout
    return config
