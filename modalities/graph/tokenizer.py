"""The node tokenizer and GraphMAE's reconstruction loss.

A node token is an MLP of that node's features only (token-local, as the contract asks); all
structure enters in the trunk through positions and the attention-bias codes.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class NodeTokenizer(nn.Module):
    """``[B, M, F] -> [B, M, width]``: Linear-GELU-Linear of each node's (standardised) features."""

    def __init__(self, feature_dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, patches: Tensor, meta: dict | None = None) -> Tensor:
        return self.net(patches.to(self.net[0].weight.dtype))


def scaled_cosine_error(pred: Tensor, targets: Tensor, target_valid: Tensor, mask: Tensor, alpha: float = 2.0) -> Tensor:
    """GraphMAE's SCE, mean over masked nodes of ``(1 - cos(pred, target)) ** alpha``.

    Cosine ignores feature scale (one-hot atom types and standardised attributes weigh alike), and
    ``alpha > 1`` down-weights nodes already reconstructed well (Hou et al. 2022). Only valid target
    values count; nodes whose valid target is all zero have no direction and are left out.
    """
    valid = target_valid.to(pred.dtype)
    p, t = pred.float() * valid, targets.float() * valid
    has_target = t.norm(dim=-1) > 0
    weight = (mask & has_target).float()
    cos = F.cosine_similarity(p, t, dim=-1, eps=1e-8)
    err = (1.0 - cos).clamp(min=0).pow(alpha)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)
