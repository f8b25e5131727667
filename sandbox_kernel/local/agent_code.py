"""What the sandbox gets as its agent file: the Python agent as bytecode when it can.

The Python agent is ~2,700 lines; compiling it takes ~40 ms of CPU at every sandbox start, on the
path to the first cell. When the sandbox runs this very interpreter (``python_environment =
'kernel'``, the default) and the package's bytecode cache holds a valid compilation of the agent
(``pip install`` writes it), the sandbox gets that bytecode instead: Python runs a file that
starts with its own magic number as compiled code, whatever the file's name. The cache is
checked as the import system checks it (source size and modification time, or its hash) and its
file names are rewritten to the agent's path inside the sandbox, so no host path is shown there.
In every other case (another interpreter, no or a stale cache) the sandbox gets the source.
"""

from __future__ import annotations

import importlib.util
import logging
import marshal
import os
import sys
import types
from pathlib import Path

log = logging.getLogger("sandbox_kernel")

_HEADER = 16  # magic, flags, then mtime and size (or the source hash): PEP 552


def for_sandbox(source_path: Path, interpreter: str, inside: str) -> bytes:
    """The bytes of the agent file for a sandbox that runs ``interpreter`` on it at ``inside``."""
    source = source_path.read_bytes()
    if source_path.suffix != ".py" or os.path.realpath(interpreter) != os.path.realpath(sys.executable):
        return source
    try:
        code = _cached(source_path, source)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        log.debug("the agent's bytecode cache is not usable (%s); the sandbox compiles the source", exc)
        code = None
    if code is None:
        return source
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(_renamed(code, inside))


def _cached(source_path: Path, source: bytes) -> types.CodeType | None:
    """The code in the bytecode cache of ``source_path`` if it is a compilation of ``source``."""
    try:
        data = Path(importlib.util.cache_from_source(str(source_path), optimization="")).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(data[4:8], "little")
    if flags & 0b1:  # hash-based
        if data[8:16] != importlib.util.source_hash(source):
            return None
    else:
        st = source_path.stat()
        if (
            int.from_bytes(data[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
            or int.from_bytes(data[12:16], "little") != len(source) & 0xFFFFFFFF
        ):
            return None
    code = marshal.loads(data[_HEADER:])
    return code if isinstance(code, types.CodeType) else None


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
