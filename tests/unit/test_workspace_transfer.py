"""The kernel's side of file_read / file_write (workspace/transfer.py) against an agent that lies:
the seam is the agent's replies, as a real agent's supervisor would send them."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, Callable

import pytest

from sandbox_kernel.config import Sandbox
from sandbox_kernel.errors import WorkspaceError
from sandbox_kernel.protocol import Message
from sandbox_kernel.workspace.transfer import CHUNK, Transfer


class Agent:
    """Answers each request with ``answer(request)``; keeps the requests."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []

    async def send_file_request(self, body: dict[str, Any]) -> "asyncio.Future[Any]":
        self.requests.append(body)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(Message({"type": "file_reply", **self.answer(body)}))
        return future


def download(tmp_path: Path, agent: Agent, name: str = "out.bin", limit: str = "4Mi") -> str:
    limits = Sandbox(workspace_limit=limit).limits()
    return asyncio.run(Transfer(agent, str(tmp_path), limits).download([name]))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_more_bytes_than_announced_are_never_written(tmp_path: Path) -> None:
    agent = Agent(lambda r: {"size": 10, "data": b64(b"x" * 100_000)})
    download(tmp_path, agent)
    assert (tmp_path / "out.bin").read_bytes() == b"x" * 10


def test_a_size_over_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    agent = Agent(lambda r: {"size": 2**40, "data": ""})
    with pytest.raises(WorkspaceError, match="more than 4.0 MiB"):
        download(tmp_path, agent)
    assert list(tmp_path.iterdir()) == [] and len(agent.requests) == 1


def test_a_file_that_shrinks_keeps_what_came_and_a_bad_chunk_leaves_nothing(tmp_path: Path) -> None:
    agent = Agent(lambda r: {"size": 3 * CHUNK, "data": b64(b"y" * CHUNK) if r["offset"] == 0 else ""})
    download(tmp_path, agent)
    assert (tmp_path / "out.bin").stat().st_size == CHUNK
    agent = Agent(
        lambda r: {"size": 2 * CHUNK, "data": b64(b"z" * CHUNK) if r["offset"] == 0 else "abc"}
    )  # bad padding
    with pytest.raises(WorkspaceError, match="not base64"):
        download(tmp_path, agent, "other.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no half file, no temporary


def test_the_agent_s_error_is_the_message(tmp_path: Path) -> None:
    agent = Agent(lambda r: {"error": "Permission denied"})
    with pytest.raises(WorkspaceError, match="'x' could not be read in the sandbox: Permission denied"):
        download(tmp_path, agent, "x")


def test_upload_pipelines_chunks_in_order(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    (tmp_path / "in.bin").write_bytes(data)
    got = bytearray()

    def answer(r: dict[str, Any]) -> dict[str, Any]:
        assert r["offset"] == len(got)
        assert isinstance(r["data"], bytes)  # raw: the session frames it (a `bin` frame, or base64)
        got.extend(r["data"])
        return {"size": len(got)}

    agent = Agent(answer)
    line = asyncio.run(Transfer(agent, str(tmp_path), Sandbox().limits()).upload(["in.bin"]))
    assert bytes(got) == data and line.startswith("uploaded 1 file (1.5 MiB)")
    assert [r["offset"] for r in agent.requests] == [i * CHUNK for i in range(4)]
