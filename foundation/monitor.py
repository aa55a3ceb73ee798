"""Label-free signals of representation collapse, logged during training."""
from __future__ import annotations

import torch
from torch import Tensor


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values."""
    s = torch.linalg.svdvals(embeddings.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def collapse_signals(encoder: torch.nn.Module, batch) -> dict[str, float]:
    was = encoder.training
    encoder.eval()
    z = encoder.pooled(batch)["mean"]
    encoder.train(was)
    zn = torch.nn.functional.normalize(z.float(), dim=-1)
    return {"embedding_std": float(zn.std(0).mean()), "rankme": rankme(z)}
