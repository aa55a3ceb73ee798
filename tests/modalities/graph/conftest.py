"""Shared-data resolution and small graph fixtures for the graph tests (DESIGN.md "Tests and the shared data")."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tu_cache(tmp_path_factory) -> Path:
    """A writable cache for TUDataset's processed/ folder (the shared data is read-only)."""
    return tmp_path_factory.mktemp("tu_cache")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
