"""Shared-data resolution for the point-cloud tests (DESIGN "Tests and the shared data")."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import shared_data


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
