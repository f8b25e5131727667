"""Keep the user's real kernelspecs out of the way (the helpers in ``tests/`` are importable
through ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels import write_kernelspecs


@pytest.fixture(scope="session")
def local_kernelspecs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sandbox kernelspecs on the local backend, found first through JUPYTER_PATH."""
    import os

    root = write_kernelspecs(tmp_path_factory.mktemp("jupyter"), backend="local")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root) + (os.pathsep + old if old else "")
    yield root
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "disruptive: restarts part of the test cluster (the API server); runs after every other test, "
        "because the cluster's controllers take a while to catch up afterwards",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)  # stable: order kept otherwise
