"""Shared-data resolution and small raster writers for the earth tests (DESIGN.md "Tests and the shared data")."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def shared_data(relative: str) -> Path:
    """``$DOMAINFM_SHARED_DATA/relative`` (default ``<repo>/../shared/data``): fail under CI, skip elsewhere."""
    root = Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / relative
    if not path.exists():
        msg = f"shared data {path} not found (set DOMAINFM_SHARED_DATA to the folder holding earth/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def eurosat() -> Path:
    return shared_data("earth/eurosat_ms")


@pytest.fixture(scope="session")
def bigearthnet() -> Path:
    return shared_data("earth/bigearthnet_s1_s2")


@pytest.fixture(scope="session")
def sen1floods11() -> Path:
    return shared_data("earth/sen1floods11")


@pytest.fixture(scope="session")
def landsat() -> Path:
    return shared_data("earth/landsat_RGB.byte.tif")
