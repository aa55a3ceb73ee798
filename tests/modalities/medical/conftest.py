"""Shared-data resolution for the medical tests (DESIGN: env DOMAINFM_SHARED_DATA, default ../shared/data;
missing data fails under CI=true and skips with a reason elsewhere)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests.shared_data import shared_root
from tests.shared_data import shared_data as require


def shared_data() -> Path:
    return shared_root()


@pytest.fixture
def dicom_series() -> Path:
    return require("medical/dicom_mr_series")


@pytest.fixture
def nifti_dir() -> Path:
    return require("medical/nifti")


@pytest.fixture(autouse=True)
def _quiet():
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    yield


@pytest.fixture
def small_cfg():
    """A factory of small adapter configs (8^3 patches, 32^3 crops, in-memory cache)."""
    from modalities.medical.adapter import MedicalAdapter

    def make(**over) -> dict:
        cfg = {"patch": [8, 8, 8], "roi": [32, 32, 32], "sw_roi": [32, 32, 32], "cache": "memory", "crops_per_volume": 2}
        cfg.update(over)
        return MedicalAdapter(cfg).config

    return make
