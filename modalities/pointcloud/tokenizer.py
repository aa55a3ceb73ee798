"""Mini-PointNet patch embedding (Point-MAE / Point-BERT), made strictly token-local.

Point-MAE uses BatchNorm inside the group encoder; batch statistics mix tokens (and samples), which
breaks the contract's rule that a token's embedding depends only on its own patch. LayerNorm over
each point's channels keeps the same shape of network without that leak.
"""
from __future__ import annotations

from torch import Tensor, nn


class MiniPointNet(nn.Module):
    """patches [B, M, K*C] (K points, C channels each, relative to the group centre) -> [B, M, width].

    Shared per-point MLP, max-pool to a group feature, concatenate it back to every point, a second
    per-point MLP, max-pool again: permutation-invariant within the group. The linear layer on
    [group feature, point feature] is split in two so the group half runs once per group, not once
    per point (same function, about a third less compute on CPU).
    """

    def __init__(self, group_size: int, channels: int, width: int, hidden: int = 128) -> None:
        super().__init__()
        self.k, self.c = group_size, channels
        self.first = nn.Sequential(nn.Linear(channels, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        self.from_group = nn.Linear(2 * hidden, 4 * hidden)
        self.from_point = nn.Linear(2 * hidden, 4 * hidden, bias=False)
        self.second = nn.Sequential(nn.LayerNorm(4 * hidden), nn.GELU(), nn.Linear(4 * hidden, width))

    def forward(self, patches: Tensor, meta: dict | None = None) -> Tensor:
        b, m, _ = patches.shape
        x = patches.reshape(b, m, self.k, self.c).to(self.first[0].weight.dtype)
        f = self.first(x)  # [B, M, K, 2h]
        g = f.max(dim=2, keepdim=True).values  # [B, M, 1, 2h]
        f = self.second(self.from_group(g) + self.from_point(f))
        return f.max(dim=2).values
