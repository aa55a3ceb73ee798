"""The one resolver of the shared real data (DESIGN.md, "Tests and the shared data").

``DOMAINFM_SHARED_DATA`` or ``<repo>/../shared/data``. A missing folder fails the test under CI
(``CI=true``); on a user's clone the test skips and says why.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """``shared_root()/parts``, or fail (CI) / skip (elsewhere) with the path it looked for."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        msg = f"shared data {path} not found (set DOMAINFM_SHARED_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
