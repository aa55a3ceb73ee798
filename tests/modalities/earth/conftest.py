"""Shared-data resolution and small raster writers for the earth tests (DESIGN.md "Tests and the shared data")."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import shared_data


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
