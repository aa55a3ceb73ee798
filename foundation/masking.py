"""Mask generators that see only ``coords`` and ``padding``, so one module serves every modality.

Every generator reduces to "give each token a score, hide the lowest-scoring ones": random scores
give random masking, distance to a few seeds gives blocks, one score per line or window gives
tubes and spans. :func:`select_lowest` then hides exactly ``floor(ratio * valid)`` tokens per
sample, never padding, and always leaves at least one visible token. All of it is batched and
runs on whatever device the batch is on, with an explicit generator so masks are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

INF = float("inf")
GPU_LENGTH_MULTIPLE = 16


def num_masked(padding: Tensor, ratio: float) -> Tensor:
    """Per-sample count to hide: a ratio of *that sample's* valid tokens, keeping one visible."""
    valid = (~padding).sum(1)
    return torch.minimum((valid.float() * ratio).floor().long(), (valid - 1).clamp(min=0))


def select_lowest(score: Tensor, padding: Tensor, count: Tensor) -> Tensor:
    """Mask [B, N]: True for the ``count[b]`` lowest scores of each sample's valid tokens."""
    score = score.masked_fill(padding, INF)
    rank = score.argsort(dim=1, stable=True).argsort(dim=1)
    return (rank < count.unsqueeze(1)) & ~padding


def _rand(shape, g: torch.Generator | None, device) -> Tensor:
    return torch.rand(shape, generator=g, device=device)


def random_scores(coords: Tensor, padding: Tensor, g=None, **_) -> Tensor:
    return _rand(padding.shape, g, padding.device)


def block_scores(coords: Tensor, padding: Tensor, g=None, blocks: int = 4, **_) -> Tensor:
    """Distance to the nearest of ``blocks`` random seed tokens: hiding the lowest gives blobs."""
    seed_score = _rand(padding.shape, g, padding.device).masked_fill(padding, INF)
    seeds = seed_score.topk(min(blocks, padding.shape[1]), dim=1, largest=False).indices  # [B, S]
    seed_xyz = torch.gather(coords, 1, seeds.unsqueeze(-1).expand(-1, -1, coords.shape[-1]))
    dist = torch.cdist(coords.float(), seed_xyz.float()).amin(-1)
    return dist + 1e-4 * _rand(padding.shape, g, padding.device)


def _group_scores(keys: Tensor, padding: Tensor, g) -> Tensor:
    """Tokens with equal ``keys`` rows share one random score (+ a tie-break smaller than a step)."""
    b, n, _ = keys.shape
    batch = torch.arange(b, device=keys.device, dtype=keys.dtype).view(b, 1, 1).expand(b, n, 1)
    _, inverse = torch.unique(torch.cat([batch, keys], -1).reshape(b * n, -1), dim=0, return_inverse=True)
    perm = torch.randperm(int(inverse.max()) + 1, generator=g, device="cpu" if g is None else g.device).to(keys.device)
    return perm[inverse].view(b, n).float() + 0.5 * _rand((b, n), g, padding.device)


def tube_scores(coords: Tensor, padding: Tensor, g=None, axis: int = 0, **_) -> Tensor:
    """Whole lines along ``axis`` share a score (e.g. all bands at one location)."""
    keep = [i for i in range(coords.shape[-1]) if i != axis]
    return _group_scores(coords[..., keep].round(decimals=4), padding, g)


def span_scores(coords: Tensor, padding: Tensor, g=None, axis: int = 0, span: int = 4, **_) -> Tensor:
    """Windows of ``span`` consecutive coordinates along ``axis`` share a score (time spans)."""
    offset = _rand((coords.shape[0], 1), g, coords.device) * span
    window = torch.floor((coords[..., axis] + offset) / span).unsqueeze(-1)
    return _group_scores(window, padding, g)


SCORES = {"random": random_scores, "block": block_scores, "tube": tube_scores, "span": span_scores}


def sample_mask(coords: Tensor, padding: Tensor, kind: str = "random", ratio: float = 0.75, generator: torch.Generator | None = None,
                scores=None, **kwargs) -> Tensor:
    """MAE-style mask [B, N], True = hidden from the encoder.

    ``scores(kind, coords, padding, generator, **kwargs)`` supplies kinds the core does not know
    (an adapter's ``mask_scores``); the count, padding and one-visible rules stay the core's.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if kind in SCORES:
        score = SCORES[kind](coords, padding, generator, **kwargs)
    elif scores is not None:
        score = scores(kind, coords, padding, generator, **kwargs)
    else:
        raise ValueError(f"unknown masking kind {kind!r}; choose one of {sorted(SCORES)} (multiblock is JEPA's)")
    return select_lowest(score, padding, num_masked(padding, ratio))


@dataclass
class Visible:
    index: Tensor  # [B, M] token indices kept, visible tokens first in their original order
    padding: Tensor  # [B, M] True past each sample's visible count
    has_padding: bool = True  # False when every sample keeps M tokens (the trunk then needs no mask)


def visible_tokens(hidden: Tensor, padding: Tensor) -> Visible:
    """Indices of the tokens the encoder sees, padded to the largest visible count of the batch.

    On a GPU the count is rounded up to a multiple of ``GPU_LENGTH_MULTIPLE`` (more padding, never
    more real tokens): kernels are tuned and cached per shape, and variable masks would otherwise
    present a new length nearly every step. On the CPU padding only costs time, so none is added."""
    drop = (hidden | padding).to(torch.int8)
    order = drop.argsort(dim=1, stable=True)
    count = (drop == 0).sum(1)
    most, least = torch.stack([count.max(), count.min()]).tolist()  # one host sync for both
    m = max(most, 1)
    if hidden.is_cuda:
        m = min(hidden.shape[1], -(-m // GPU_LENGTH_MULTIPLE) * GPU_LENGTH_MULTIPLE)
    return Visible(order[:, :m], torch.arange(m, device=hidden.device).unsqueeze(0) >= count.unsqueeze(1), m > least)


@dataclass
class MultiBlock:
    context_hidden: Tensor  # [B, N] True = not in the context
    targets: Tensor  # [B, K, N] True = in target block k


def multiblock_mask(
    coords: Tensor,
    padding: Tensor,
    targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    context_scale: tuple[float, float] = (0.85, 1.0),
    aspect: tuple[float, float] = (0.75, 1.5),
    generator: torch.Generator | None = None,
) -> MultiBlock:
    """I-JEPA masks: ``targets`` blocks (nearest tokens to a seed under a random aspect ratio),
    and a large context block with every target token removed. Each target block holds at least
    one token and the context keeps at least one token (shrinking the targets if it must)."""
    b, n, c = coords.shape
    dev, g = coords.device, generator
    valid = (~padding).sum(1)

    def blocks(k: int, scale: tuple[float, float]) -> Tensor:
        size = (valid.unsqueeze(1) * (scale[0] + (scale[1] - scale[0]) * _rand((b, k), g, dev))).round().long()
        size = torch.minimum(size.clamp(min=1), valid.unsqueeze(1))
        stretch = torch.exp(torch.log(torch.tensor(aspect, device=dev)).diff() * _rand((b, k, c), g, dev) + torch.log(torch.tensor(aspect[0], device=dev)))
        seed_score = _rand((b, k, n), g, dev).masked_fill(padding.unsqueeze(1), INF)
        seeds = seed_score.argmin(-1)  # [B, K]
        seed_xyz = torch.gather(coords, 1, seeds.unsqueeze(-1).expand(-1, -1, c))  # [B, K, C]
        dist = ((coords.unsqueeze(1) - seed_xyz.unsqueeze(2)) * stretch.unsqueeze(2)).norm(dim=-1)  # [B, K, N]
        dist = dist + 1e-4 * _rand((b, k, n), g, dev)
        pad = padding.unsqueeze(1).expand(b, k, n).reshape(b * k, n)
        return select_lowest(dist.reshape(b * k, n), pad, size.reshape(b * k)).view(b, k, n)

    tgt = blocks(targets, target_scale)
    context = blocks(1, context_scale)[:, 0] & ~tgt.any(1)
    empty = context.sum(1) == 0
    if empty.any():  # tiny samples: give the context one valid token and take it out of the targets
        first = (padding.float() + _rand((b, n), g, dev) * 0.5).argmin(1)
        free = torch.zeros_like(context).scatter_(1, first.unsqueeze(1), True) & empty.unsqueeze(1)
        context = context | free
        tgt = tgt & ~free.unsqueeze(1)
    return MultiBlock(~context | padding, tgt)
