"""Contrastive pretraining over masked views (SimCLR's NT-Xent, views made by the core's masks).

Each sample is encoded twice, each time seeing only the tokens a fresh mask leaves visible (block
masks hide contiguous regions, so the views are two different parts of the same sample, like
crops); the pooled, projected views of one sample must pick each other out among the other
samples of the batch. The loss acts on the pooled embedding, so the pooled features a probe uses
are what it shapes (MAE and JEPA shape token features and leave pooling to chance).

Each view also passes through the adapter's ``view_augment`` (identity by default; point clouds
rotate and scale each view independently), so the two views differ by more than which tokens they
see: without it a network can match views by instance-specific cues both share (a shape's exact
scale, identical token positions) instead of learning what the object is. Negatives are the other samples of
the local batch (no cross-process gathering: under DDP each process contrasts its own batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.masking import visible_tokens
from foundation.model import Encoder
from foundation.tokens import PatchBatch
from foundation.trunk import masked_max_mean


class Contrast(nn.Module):
    def __init__(self, encoder: Encoder, masking: dict, proj_dim: int = 128, temperature: float = 0.1) -> None:
        super().__init__()
        self.encoder, self.adapter, self.masking = encoder, encoder.adapter, dict(masking)
        self.temperature = float(temperature)
        w = encoder.width
        self.projector = nn.Sequential(nn.Linear(2 * w, w), nn.LayerNorm(w), nn.GELU(), nn.Linear(w, proj_dim))

    def embed_view(self, batch: PatchBatch, generator: torch.Generator | None) -> Tensor:
        """One masked view of every sample: encode the visible tokens, pool [max, mean], project, normalise."""
        batch = self.adapter.view_augment(batch, generator)
        hidden = self.adapter.sample_mask(batch, self.masking, generator)
        enc = self.encoder(batch, keep=visible_tokens(hidden, batch.padding))
        pooled = masked_max_mean(enc.tokens, enc.padding)
        return F.normalize(self.projector(pooled).float(), dim=-1)

    def forward(self, batch: PatchBatch, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        b = batch.padding.shape[0]
        if b < 2:
            raise ValueError("contrastive pretraining needs at least 2 samples per batch (the others are the negatives)")
        z = torch.cat([self.embed_view(batch, generator), self.embed_view(batch, generator)])  # [2B, d]
        sim = (z @ z.T) / self.temperature
        sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=sim.device), float("-inf"))
        positive = torch.arange(2 * b, device=sim.device).roll(b)  # row i pairs with i + B (mod 2B)
        loss = F.cross_entropy(sim, positive)
        with torch.no_grad():
            top1 = (sim.argmax(1) == positive).float().mean()
        return loss, {"view_match": float(top1)}

    def export_encoder(self) -> Encoder:
        return self.encoder
