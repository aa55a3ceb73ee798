"""Shared fixtures: the shared-data resolver DESIGN describes, and small generated datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """``DOMAINFM_SHARED_DATA`` or ``../shared/data`` from the repository root.

    Under CI a missing folder is a failure; on a user's clone, tests that need it skip and say why.
    """
    root = Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data not found at {root} (set DOMAINFM_SHARED_DATA)")
        pytest.skip(f"shared data not found at {root}; set DOMAINFM_SHARED_DATA to run real-data tests")
    return root


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
