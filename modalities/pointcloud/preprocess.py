"""Per-cloud preprocessing: blocks of LiDAR tiles, point budget, normalisation and augmentation.

All functions are plain torch on one cloud and draw randomness only from the generator they are
given, so a training view depends only on (seed, epoch, index) (see ``modalities.base.sample_seed``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from modalities.pointcloud.ops import farthest_point_sample

AXES = {"x": 0, "y": 1, "z": 2}
COLOUR_NAMES = {"r", "g", "b", "red", "green", "blue", "nir"}
NORMAL_NAMES = ("nx", "ny", "nz")


def block_origins(xyz: np.ndarray, size: float, stride: float, up_axis: str, min_points: int) -> list[tuple[float, float]]:
    """Lower corners of square blocks (in the two horizontal axes) holding at least ``min_points`` points."""
    h = [i for i in range(3) if i != AXES[up_axis]]
    lo, hi = xyz[:, h].min(0), xyz[:, h].max(0)
    out = []
    for x0 in np.arange(lo[0], max(hi[0] - size, lo[0]) + stride * 0.999, stride):
        for y0 in np.arange(lo[1], max(hi[1] - size, lo[1]) + stride * 0.999, stride):
            inside = block_mask(xyz, (x0, y0), size, up_axis)
            if inside.sum() >= min_points:
                out.append((float(x0), float(y0)))
    return out


def block_mask(xyz: np.ndarray, origin: tuple[float, float], size: float, up_axis: str) -> np.ndarray:
    h = [i for i in range(3) if i != AXES[up_axis]]
    p = xyz[:, h]
    return (p[:, 0] >= origin[0]) & (p[:, 0] < origin[0] + size) & (p[:, 1] >= origin[1]) & (p[:, 1] < origin[1] + size)


def scale_features(feats: np.ndarray, names: list[str]) -> np.ndarray:
    """Bring channels to about unit range: colours by their bit depth, others by their 99th percentile.

    Per-cloud percentile scaling keeps intensity comparable between sensors that report 0-1, 0-255
    or 16-bit values; normals are already unit vectors.
    """
    out = feats.astype(np.float32).copy()
    for j, name in enumerate(names):
        col = out[:, j]
        if name in COLOUR_NAMES:
            top = np.abs(col).max() if len(col) else 0
            out[:, j] = col / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)
        elif name not in NORMAL_NAMES:
            s = np.percentile(np.abs(col), 99) if len(col) else 0
            out[:, j] = col / s if s > 0 else col
    return out


def subsample(xyz: Tensor, n: int, method: str, rng: torch.Generator | None) -> Tensor:
    """Indices of ``n`` points: FPS (random start when ``rng`` is given) or uniform random.

    A cloud with fewer than ``n`` points is topped up with repeated points (drawn at random, or
    cyclically for the deterministic view), so every sample has the same budget.
    """
    m = xyz.shape[0]
    if m < n:
        extra = torch.randint(m, (n - m,), generator=rng) if rng is not None else torch.arange(n - m) % m
        return torch.cat([torch.arange(m), extra])
    if m == n:
        return torch.arange(m)
    if method == "random":
        if rng is None:  # deterministic: evenly spaced through the file order
            return torch.linspace(0, m - 1, n).round().long()
        return torch.randperm(m, generator=rng)[:n]
    if method == "fps":
        start = torch.randint(m, (1,), generator=rng) if rng is not None else None
        return farthest_point_sample(xyz.unsqueeze(0), n, start=start)[0]
    raise ValueError(f"unknown sampling {method!r}: use fps or random")


def normalize(xyz: Tensor, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """Centre on the centroid and scale into the unit sphere (``sphere``), or only centre (``centre``).

    Returns the normalised points, the centre and the scale so predictions can be mapped back.
    """
    centre = xyz.mean(0)
    x = xyz - centre
    if mode == "sphere":
        scale = x.norm(dim=1).max().clamp(min=1e-9)
    elif mode in ("centre", "center"):
        scale = torch.ones(())
    elif mode == "none":
        return xyz, torch.zeros(3), torch.ones(())
    else:
        raise ValueError(f"unknown normalize {mode!r}: use sphere, centre or none")
    return x / scale, centre, scale


def up_axis_rotation(angles: Tensor, up_axis: str) -> Tensor:
    """[..., 3, 3] rotations by ``angles`` (radians) about the up axis, x' = R x, in the angles' dtype
    and device: one cloud in a DataLoader worker or a whole batch of views on the GPU."""
    i, j = [k for k in range(3) if k != AXES[up_axis]]
    r = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(*angles.shape, 1, 1)
    c, s = angles.cos(), angles.sin()
    r[..., i, i], r[..., i, j], r[..., j, i], r[..., j, j] = c, -s, s, c
    return r


def augment(xyz: Tensor, normals: Tensor | None, cfg: dict, rng: torch.Generator, up_axis: str) -> tuple[Tensor, Tensor | None]:
    """Rotation about the up axis, anisotropic scaling and jitter (dropout happens before subsampling)."""
    if cfg.get("rotate", False):
        a = torch.tensor(float(torch.rand((), generator=rng)) * 2 * math.pi, dtype=torch.float64)
        r = up_axis_rotation(a, up_axis).to(xyz.dtype)
        xyz = xyz @ r.T
        if normals is not None:
            normals = normals @ r.T
    lo, hi = cfg.get("scale", (1.0, 1.0))
    if (lo, hi) != (1.0, 1.0):
        s = lo + (hi - lo) * torch.rand(3, generator=rng)
        xyz = xyz * s
        if normals is not None:
            normals = torch.nn.functional.normalize(normals / s, dim=1)
    sigma = float(cfg.get("jitter", 0.0))
    if sigma > 0:
        xyz = xyz + (torch.randn(xyz.shape, generator=rng) * sigma).clamp(-5 * sigma, 5 * sigma)
    return xyz, normals


def dropout_keep(n: int, max_ratio: float, rng: torch.Generator) -> Tensor:
    """Indices kept after dropping a random fraction (up to ``max_ratio``) of the points."""
    if max_ratio <= 0 or n < 2:
        return torch.arange(n)
    ratio = float(torch.rand((), generator=rng)) * max_ratio
    keep = torch.rand(n, generator=rng) >= ratio
    if keep.sum() < 1:
        keep[0] = True
    return keep.nonzero().squeeze(1)
