"""Positional modules: coordinates -> embeddings, at whatever width a trunk needs.

Adapters name a kind; the core builds one per width (encoder, MAE decoder, JEPA predictor).
"""
from __future__ import annotations

from torch import Tensor, nn

from foundation.grid import sincos_embedding


class SinCosPositions(nn.Module):
    """Fixed N-d sin-cos of grid coordinates; ``scale`` stretches coordinates given in small units."""

    def __init__(self, coord_dims: int, width: int, scale: float = 1.0) -> None:
        super().__init__()
        self.coord_dims, self.width, self.scale = coord_dims, width, scale

    def forward(self, coords: Tensor) -> Tensor:
        return sincos_embedding(coords * self.scale, self.width)


class MLPPositions(nn.Module):
    """Learned MLP of continuous coordinates (xyz centres of point groups), as Point-MAE does."""

    def __init__(self, coord_dims: int, width: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(coord_dims, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, coords: Tensor) -> Tensor:
        return self.net(coords.to(self.net[0].weight.dtype))


class LinearPositions(nn.Module):
    """A learned projection of precomputed positional encodings (graph Laplacian / random-walk)."""

    def __init__(self, coord_dims: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(coord_dims, width)

    def forward(self, coords: Tensor) -> Tensor:
        return self.proj(coords.to(self.proj.weight.dtype))


POSITION_KINDS = {"sincos": SinCosPositions, "mlp": MLPPositions, "linear": LinearPositions}


def make_positions(kind: str, coord_dims: int, width: int, **kwargs) -> nn.Module:
    if kind not in POSITION_KINDS:
        raise ValueError(f"unknown position kind {kind!r}; choose one of {sorted(POSITION_KINDS)}")
    return POSITION_KINDS[kind](coord_dims, width, **kwargs)
