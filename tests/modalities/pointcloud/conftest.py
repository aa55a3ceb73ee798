"""Shared-data resolution for the point-cloud tests (DESIGN "Tests and the shared data")."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def shared_data(*parts: str) -> Path:
    """``$DOMAINFM_SHARED_DATA/<parts>`` (default ``<repo>/../shared/data``); skip, or fail under CI=true."""
    root = Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root.joinpath(*parts)
    if not path.exists():
        msg = f"shared data {path} not found (set DOMAINFM_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def modelnet10() -> Path:
    return shared_data("pointcloud", "modelnet10")


@pytest.fixture
def scans() -> Path:
    return shared_data("pointcloud", "scans")


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI machine has 2 cores shared by every test; keep torch to one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
