"""Small graphs the graph tests share (a module, not conftest, so imports are unambiguous)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]


def shared_data(relative: str) -> Path:
    """``$DOMAINFM_SHARED_DATA/relative`` (default ``<repo>/../shared/data``): fail under CI, skip elsewhere."""
    root = Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / relative
    if not path.exists():
        msg = f"shared data {path} not found (set DOMAINFM_SHARED_DATA to the folder holding graphs/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def path_graph(n: int) -> torch.Tensor:
    a = torch.arange(n - 1)
    return torch.stack([a, a + 1])


def cycle_graph(n: int) -> torch.Tensor:
    a = torch.arange(n)
    return torch.stack([a, (a + 1) % n])


def random_graph(n: int, p: float, seed: int) -> torch.Tensor:
    """An Erdos-Renyi edge_index (both directions); asymmetric enough to have distinct Laplacian eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, n, generator=g) < p).triu(1)
    ei = a.nonzero().t()
    return torch.cat([ei, ei.flip(0)], 1)
