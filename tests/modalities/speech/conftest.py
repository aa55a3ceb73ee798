"""Shared-data resolution for the speech tests (DESIGN.md "Tests and the shared data")."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import shared_data


@pytest.fixture(scope="session")
def fsdd() -> Path:
    return shared_data("fsdd/recordings")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from modalities.speech.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("speech_synth")
    write_synthetic(out, 120, seed=0, sample_rate=8000, n_speakers=4)
    return out
