"""N-d grid toolkit shared by every adapter whose data lives on a regular grid.

Medical volumes (3-d), EO rasters (2-d) and spectrograms (2-d time x frequency) all reduce to
"C channels on a d-dimensional grid". Patchifying, the per-patch normalised MAE targets and the
grid coordinates are the same code for all of them, so they live here, once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class GridPatches:
    patches: Tensor  # [N, C * prod(patch)] values, invalid entries zeroed
    valid: Tensor  # [N, C * prod(patch)] bool, False for invalid values and the grid's edge padding
    coords: Tensor  # [N, d] patch index along each grid axis (float)
    grid_shape: tuple[int, ...]  # patches per axis

    @property
    def token_padding(self) -> Tensor:
        """A token whose every value is invalid carries no information: it becomes padding."""
        return ~self.valid.any(dim=1)


def patchify(x: Tensor, patch: tuple[int, ...] | list[int], valid: Tensor | None = None) -> GridPatches:
    """Cut ``x`` [C, *S] into non-overlapping patches; the edge is padded up to a whole patch.

    ``valid`` ([C, *S] or [*S], bool) marks real values; NaN/inf are always invalid. Values are laid
    out channel-major inside a patch, (C, p_1, ..., p_d), the same order ``unpatchify`` expects.
    """
    patch = tuple(int(p) for p in patch)
    d = len(patch)
    if x.dim() != d + 1:
        raise ValueError(f"expected a [C, {d} spatial axes] array for patch size {patch}, got shape {tuple(x.shape)}")
    c, spatial = x.shape[0], x.shape[1:]
    ok = torch.isfinite(x)
    if valid is not None:
        ok = ok & (valid if valid.dim() == d + 1 else valid.unsqueeze(0).expand_as(x)).bool()
    pad = []
    for size, p in zip(reversed(spatial), reversed(patch)):
        pad += [0, (-size) % p]
    x = F.pad(torch.where(ok, x, torch.zeros((), dtype=x.dtype)), pad)
    ok = F.pad(ok, pad, value=False)
    grid = tuple(s // p for s, p in zip(x.shape[1:], patch))
    # [C, g1, p1, g2, p2, ...] -> [g1, g2, ..., C, p1, p2, ...]
    split = [c] + [v for g, p in zip(grid, patch) for v in (g, p)]
    order = [1 + 2 * i for i in range(d)] + [0] + [2 + 2 * i for i in range(d)]
    n, k = math.prod(grid), c * math.prod(patch)
    patches = x.reshape(split).permute(order).reshape(n, k)
    valid_p = ok.reshape(split).permute(order).reshape(n, k)
    coords = torch.stack(torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij"), -1).reshape(n, d)
    return GridPatches(patches, valid_p, coords, grid)


def unpatchify(patches: Tensor, grid_shape: tuple[int, ...], patch: tuple[int, ...], channels: int) -> Tensor:
    """Inverse of :func:`patchify` (edge padding included): [N, C*prod(p)] -> [C, *(g*p)]."""
    d = len(patch)
    x = patches.reshape(*grid_shape, channels, *patch)
    order = [d] + [v for i in range(d) for v in (i, d + 1 + i)]
    return x.permute(order).reshape(channels, *[g * p for g, p in zip(grid_shape, patch)])


def normalized_targets(patches: Tensor, valid: Tensor, channels: int = 1, eps: float = 1e-6) -> Tensor:
    """Per-patch (and, with ``channels`` > 1, per-channel) standardised values, from valid values only.

    This is MAE's ``norm_pix_loss`` target, made safe for partly invalid patches: statistics never
    include nodata or NaN, so a half-clouded patch is normalised by its clear half.
    """
    n, k = patches.shape
    v = patches.reshape(n, channels, k // channels)
    m = valid.reshape(n, channels, k // channels).float()
    count = m.sum(-1, keepdim=True).clamp(min=1)
    mean = (v * m).sum(-1, keepdim=True) / count
    var = (((v - mean) ** 2) * m).sum(-1, keepdim=True) / count
    out = (v - mean) / (var + eps).sqrt()
    return (out * m).reshape(n, k)


def masked_mse(pred: Tensor, targets: Tensor, target_valid: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked tokens' valid values only (the default MAE loss).

    What does not count is zeroed (so a NaN there stays out), and the sum of squares keeps a single
    tensor the size of ``pred`` (the zeroed difference) for the backward pass: on a 3-d MAE step the
    plain formula's float weight, squares and chain-rule temporaries were the step's peak memory."""
    w = target_valid & mask.unsqueeze(-1)
    return _MaskedSquaredError.apply(pred.float(), targets.float(), w) / w.sum().clamp(min=1)


class _MaskedSquaredError(torch.autograd.Function):
    """sum((pred - targets)^2 where w), gradient 2 (pred - targets) where w."""

    @staticmethod
    def forward(ctx, pred: Tensor, targets: Tensor, w: Tensor) -> Tensor:
        with torch.autocast(pred.device.type, enabled=False):
            d = (pred - targets).masked_fill_(~w, 0.0)
            ctx.save_for_backward(d)
            flat = d.reshape(-1)
            return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (d,) = ctx.saved_tensors
        return d * (2 * grad), None, None


def sincos_embedding(coords: Tensor, width: int, temperature: float = 10000.0) -> Tensor:
    """N-d sine-cosine embedding of real-valued coordinates [..., C] -> [..., width].

    The width is split evenly over the C axes (each gets an even share; leftovers are zero), so
    positions exist for any grid size without re-instantiating the model.
    """
    c = coords.shape[-1]
    per_axis = (width // c) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"width {width} too small for {c}-d sin-cos positions")
    freqs = temperature ** (-torch.arange(per_axis // 2, device=coords.device, dtype=torch.float32) / (per_axis // 2))
    angles = coords.float().unsqueeze(-1) * freqs  # [..., C, per_axis/2]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [..., C*per_axis]
    if emb.shape[-1] < width:
        emb = F.pad(emb, (0, width - emb.shape[-1]))
    return emb


def patch_conv_stem(channels: int, features: tuple[int, ...] | list[int], patch: tuple[int, ...] | list[int]
                    ) -> tuple[list[torch.nn.Module], int]:
    """3^d convolutions + GELU run inside one patch, stride 2 along every axis still >= 4 cells long.

    A linear patch embedding sees a patch as one flat vector; a small strided stem first builds
    local texture features (edges, blobs) and halves the cells it keeps, so the final linear layer
    stays small. Returns the layers (callers wrap them, e.g. after their own first mixing layer)
    and the flattened size of the stem's output for that layer.
    """
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[len(patch)]
    layers: list[torch.nn.Module] = []
    c, size = channels, [int(s) for s in patch]
    for f in features:
        stride = tuple(2 if s >= 4 else 1 for s in size)
        layers += [conv(c, f, 3, stride=stride, padding=1), torch.nn.GELU()]
        size, c = [(s - 1) // st + 1 for s, st in zip(size, stride)], f
    return layers, c * math.prod(size)
