"""Kubernetes-style resource quantities (``256Mi``, ``500m``, ``1``), parsed strictly.

Both backends take their limits in the notation people already know from pod specs, so the
same setting means the same thing on a laptop and in a cluster. Anything else (``256Mb``,
``-1Gi``, ``1.5.0``) is rejected with a message that says what is accepted.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_PATTERN = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<suffix>[A-Za-z]*)$")


class QuantityError(ValueError):
    """A quantity string is malformed; the message says what would be accepted."""


def parse_bytes(text: str) -> int:
    """Parse a memory or storage quantity such as ``256Mi`` or ``1G`` into bytes."""
    num, suffix = _split(text)
    if suffix == "":
        factor = 1
    elif suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    else:
        raise QuantityError(
            f"{text!r} is not a byte quantity: use a number with one of the suffixes "
            "Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000), e.g. 256Mi"
        )
    value = int(num * factor)
    return value


def parse_cpu(text: str) -> float:
    """Parse a CPU quantity such as ``500m`` or ``1.5`` into cores."""
    num, suffix = _split(text)
    if suffix == "":
        return float(num)
    if suffix == "m":
        return float(num / 1000)
    raise QuantityError(f"{text!r} is not a CPU quantity: use cores (e.g. 1, 0.5) or millicores (e.g. 500m)")


def format_bytes(value: int) -> str:
    """Render bytes the way Kubernetes users write them (``268435456`` → ``256Mi``)."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _BINARY[suffix]
        if value >= factor and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def _split(text: str) -> tuple[Decimal, str]:
    if not isinstance(text, str):
        text = str(text)
    match = _PATTERN.match(text.strip())
    if not match:
        raise QuantityError(f"{text!r} is not a quantity: expected a non-negative number with an optional suffix")
    try:
        num = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex already guarantees a number
        raise QuantityError(f"{text!r} is not a number") from exc
    return num, match["suffix"]
