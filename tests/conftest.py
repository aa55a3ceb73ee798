"""Shared fixtures (the shared-data resolver itself is tests/shared_data.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def texture_data(tmp_path_factory) -> Path:
    from modalities.grid.adapter import GridAdapter

    root = tmp_path_factory.mktemp("textures")
    GridAdapter().synthetic(root, 600, seed=0)
    return root
