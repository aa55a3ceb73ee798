"""Shared-data resolution for the speech tests (DESIGN.md "Tests and the shared data")."""
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
        msg = f"shared data {path} not found (set DOMAINFM_SHARED_DATA to the folder holding fsdd/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def fsdd() -> Path:
    return shared_data("fsdd/recordings")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from modalities.speech.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("speech_synth")
    write_synthetic(out, 120, seed=0, sample_rate=8000, n_speakers=4)
    return out
