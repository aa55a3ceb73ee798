"""Classical global shape descriptors: the simple baseline a learned point-cloud encoder has to beat.

Before learned encoders, object recognition on ModelNet-style data used global histograms of shape
functions (Osada et al.'s D2, A3 and D3 distributions; PCL's ESF descriptor combines them) and coarse
occupancy grids, with a linear classifier. They need no pretraining and no labels beyond the probe's,
so they answer "is the encoder better than what a point-cloud engineer would compute by hand?"
(DESIGN: the strongest simple classical baseline of the field is part of every comparison).

Each family is a separate block, so a probe can choose between them by inner cross-validation on the
training labels, as it chooses the pooling of a learned encoder's tokens. Histograms are normalised to
sum 1 and square-rooted (the Hellinger map), which lets a linear classifier compare distributions the
way a Bhattacharyya kernel would.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

D3_MAX = math.sqrt(3 * math.sqrt(3) / 4)  # sqrt of the largest triangle area inside the unit sphere


def _hist(values: Tensor, bins: int, hi: float) -> Tensor:
    h = torch.histc(values.float().clamp(0, hi), bins=bins, min=0.0, max=hi)
    return (h / h.sum().clamp_min(1)).sqrt()


def shape_distributions(xyz: Tensor, bins: int = 32, triplets: int = 8192, seed: int = 0) -> dict[str, Tensor]:
    """D2 over all point pairs (so it does not depend on point order), A3 and D3 over ``triplets``
    random triplets drawn with a fixed seed, and the distance of points from the centroid."""
    d = torch.cdist(xyz, xyz)
    iu = torch.triu_indices(len(xyz), len(xyz), 1)
    g = torch.Generator().manual_seed(seed)
    a, b, c = (xyz[torch.randint(len(xyz), (triplets,), generator=g)] for _ in range(3))
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-9)
    area = 0.5 * torch.linalg.cross(u, v).norm(dim=-1)
    radial = (xyz - xyz.mean(0)).norm(dim=-1)
    return {"d2": _hist(d[iu[0], iu[1]], bins, 2.0),
            "a3": _hist(torch.arccos(cos.clamp(-1, 1)), bins, math.pi),
            "d3": _hist(area.sqrt(), bins, D3_MAX),
            "radial": _hist(radial, bins, 1.0)}


def occupancy(xyz: Tensor, grid: int = 8) -> Tensor:
    """Fraction of points in each cell of a ``grid``^3 lattice over [-1, 1]^3 (square-rooted). It keeps
    where the mass is, which the distance histograms discard; on aligned datasets (ModelNet is upright
    and mostly canonically oriented) that is a strong cue."""
    cell = ((xyz.clamp(-1, 1 - 1e-6) + 1) / 2 * grid).long()
    flat = (cell[:, 0] * grid + cell[:, 1]) * grid + cell[:, 2]
    h = torch.bincount(flat, minlength=grid ** 3).float()
    return (h / h.sum()).sqrt()


def moments(xyz: Tensor) -> Tensor:
    """Eigenvalues of the covariance (sorted), per-axis standard deviations and extents."""
    centred = xyz - xyz.mean(0)
    eig = torch.linalg.eigvalsh(centred.T @ centred / len(xyz))
    return torch.cat([eig.flip(0), centred.std(0), xyz.amax(0) - xyz.amin(0)])


def classical_features(clouds: list[Tensor], grid: int = 8, bins: int = 32) -> dict[str, np.ndarray]:
    """Descriptor blocks for clouds already centred and scaled to the unit sphere (the adapter's
    preprocessing): ``histograms`` (D2, A3, D3, radial, moments), ``occupancy`` and ``all`` (both)."""
    hists, occs = [], []
    for xyz in clouds:
        xyz = xyz.double()
        sd = shape_distributions(xyz, bins)
        hists.append(torch.cat([sd["d2"], sd["a3"], sd["d3"], sd["radial"], moments(xyz)]).float())
        occs.append(occupancy(xyz, grid).float())
    h, o = torch.stack(hists).numpy(), torch.stack(occs).numpy()
    return {"histograms": h, "occupancy": o, "all": np.concatenate([h, o], 1)}
