"""Block masking by hop distance: hide whole neighbourhoods, not scattered nodes.

The core's masks see ``coords`` only; for graphs the natural block is a ball in hop distance, which
lives in the ``attn_bias`` codes (code d < max_distance + 2 is a hop distance, larger codes are
direct typed edges, i.e. distance 1). The score follows the core's convention: the lowest scores
are hidden, so :func:`foundation.masking.select_lowest` turns these into a mask of any ratio.
"""
from __future__ import annotations

import torch
from torch import Tensor


def hops_from_codes(codes: Tensor, max_distance: int) -> Tensor:
    """Hop distances [.., N, N] from :func:`~modalities.graph.encodings.structure_codes` output."""
    codes = codes.long()
    return torch.where(codes >= max_distance + 2, torch.ones_like(codes), codes)


def hop_block_scores(codes: Tensor, padding: Tensor, max_distance: int, blocks: int = 2,
                     generator: torch.Generator | None = None) -> Tensor:
    """Hop distance to the nearest of ``blocks`` random seed nodes per graph (+ a tie-break below one hop)."""
    hops = hops_from_codes(codes, max_distance).float()
    noise = torch.rand(padding.shape, generator=generator, device=padding.device)
    seeds = noise.masked_fill(padding, float("inf")).topk(min(blocks, padding.shape[1]), dim=1, largest=False).indices
    dist = torch.gather(hops, 1, seeds.unsqueeze(-1).expand(-1, -1, hops.shape[-1])).amin(1)  # [B, N]
    return dist + 0.5 * torch.rand(padding.shape, generator=generator, device=padding.device)


def hop_block_mask(codes: Tensor, padding: Tensor, ratio: float, max_distance: int, blocks: int = 2,
                   generator: torch.Generator | None = None) -> Tensor:
    """Mask [B, N] hiding ``floor(ratio * valid)`` nodes per graph, grown as hop balls around seeds."""
    from foundation.masking import num_masked, select_lowest

    score = hop_block_scores(codes, padding, max_distance, blocks, generator)
    return select_lowest(score, padding, num_masked(padding, ratio))
