"""Small graphs the graph tests share (a module, not conftest, so imports are unambiguous)."""
from __future__ import annotations

import torch

from tests.shared_data import shared_data  # noqa: F401 - re-exported for the graph tests


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
