"""JEPA over any adapter's tokens (I-JEPA style): a context encoder sees the context block; an EMA
target encoder sees everything; a predictor, given context embeddings plus mask tokens at the
target positions, predicts the teacher's layer-normed embeddings of each target block.

``target_layers`` / ``target_norm="instance"`` build the targets as data2vec does instead: the
average of the teacher's last ``target_layers`` block outputs, each normalised per channel over the
sample's real tokens. Layer norm alone keeps what every token shares (a near-random teacher's
tokens differ little), so the latent loss can fall to ~0 within tens of steps while teaching
nothing; per-channel normalisation over tokens removes that shared part and leaves the targets
their differences.

The teacher is deliberately *not* a submodule: it must stay outside DDP, in fp32, and be advanced
by :func:`ema_update` only when the optimiser really steps (the engine owns that).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.masking import multiblock_mask, visible_tokens
from foundation.model import Encoder
from foundation.positions import make_positions
from foundation.tokens import PatchBatch, gather_bias, gather_tokens
from foundation.trunk import Transformer, masked_mean


class JEPA(nn.Module):
    def __init__(self, encoder: Encoder, masking: dict, predictor_width: int = 128, predictor_depth: int = 3, predictor_heads: int = 4,
                 target_layers: int = 1, target_norm: str = "layer") -> None:
        super().__init__()
        if target_norm not in ("layer", "instance"):
            raise ValueError(f"jepa.target_norm must be layer or instance, got {target_norm!r}")
        adapter = encoder.adapter
        self.encoder, self.adapter = encoder, adapter
        self.target_layers, self.target_norm = int(target_layers), target_norm
        self.masking = {k: (tuple(v) if isinstance(v, list) else v) for k, v in masking.items()}
        self.predictor_embed = nn.Linear(encoder.width, predictor_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_width))
        self.predictor_positions = make_positions(adapter.position_kind, adapter.coord_dims, predictor_width)
        self.predictor = Transformer(predictor_width, predictor_depth, predictor_heads, bias_buckets=adapter.attn_bias_buckets)
        self.predictor_proj = nn.Linear(predictor_width, encoder.width)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def targets(self, teacher: Encoder, batch: PatchBatch) -> Tensor:
        """[B, N, D] what the predictor must match: the teacher's final tokens, layer-normed (I-JEPA), or
        the mean of its last ``target_layers`` blocks, each normalised per channel over real tokens (data2vec)."""
        if self.target_norm == "layer" and self.target_layers == 1:
            t = teacher(batch).tokens
            return F.layer_norm(t.float(), t.shape[-1:])
        enc = teacher(batch, return_layers=True)
        layers = [h.float() for h in enc.layers[-self.target_layers:]]
        if self.target_norm == "layer":
            return torch.stack([F.layer_norm(h, h.shape[-1:]) for h in layers]).mean(0)

        def instance_norm(h: Tensor) -> Tensor:
            mean = masked_mean(h, enc.padding).unsqueeze(1)
            var = masked_mean((h - mean) ** 2, enc.padding).unsqueeze(1)
            return (h - mean) / (var + 1e-5).sqrt()

        return torch.stack([instance_norm(h) for h in layers]).mean(0)

    def make_teacher(self) -> Encoder:
        return copy.deepcopy(self.encoder).float().requires_grad_(False).eval()

    def forward(self, batch: PatchBatch, generator: torch.Generator | None = None, teacher: Encoder | None = None) -> tuple[Tensor, dict]:
        if teacher is None:
            raise ValueError("JEPA needs the EMA teacher (the engine passes it)")
        b, n = batch.padding.shape
        masks = multiblock_mask(batch.coords, batch.padding, generator=generator, **self.masking)
        k = masks.targets.shape[1]
        with torch.no_grad():  # one teacher pass serves every target block of the sample
            t = self.targets(teacher, batch)
        ctx_keep = visible_tokens(masks.context_hidden, batch.padding)
        ctx = self.encoder(batch, keep=ctx_keep)

        # one predictor sequence per (sample, target block): context tokens, then mask tokens
        rep = lambda x: x.repeat_interleave(k, 0)  # noqa: E731
        tgt_keep = visible_tokens(~masks.targets.reshape(b * k, n), rep(batch.padding))
        coords = rep(batch.coords)
        ctx_x = rep(self.predictor_embed(ctx.tokens)) + self.predictor_positions(gather_tokens(coords, rep(ctx_keep.index)))
        tgt_x = self.mask_token + self.predictor_positions(gather_tokens(coords, tgt_keep.index))
        x = torch.cat([ctx_x, tgt_x.to(ctx_x.dtype)], 1)
        pad = torch.cat([rep(ctx_keep.padding), tgt_keep.padding], 1) if ctx_keep.has_padding or tgt_keep.has_padding else None
        bias = None
        if batch.attn_bias is not None:
            bias = gather_bias(rep(batch.attn_bias), torch.cat([rep(ctx_keep.index), tgt_keep.index], 1))
        pred = self.predictor_proj(self.predictor(x, pad, bias)[:, ctx_x.shape[1]:])
        target = gather_tokens(rep(t), tgt_keep.index)
        w = (~tgt_keep.padding).unsqueeze(-1).float()
        loss = (F.smooth_l1_loss(pred.float(), target, reduction="none") * w).sum() / (w.sum() * t.shape[-1]).clamp(min=1)
        return loss, {"context_tokens": int((~ctx_keep.padding).sum()), "target_tokens": int(w.sum())}


def momentum_at(step: int, total: int, start: float = 0.996, end: float = 1.0) -> float:
    """Cosine momentum schedule from ``start`` to ``end`` over the run (BYOL/DINO/I-JEPA)."""
    return end - (end - start) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place, shard by shard.

    Works on plain tensors and on FSDP2 DTensors alike (both sharded the same way), with one
    fused foreach op; never rebinds ``.data``, so sharding and optimiser references survive.
    """
    t_params = [_local(p) for p in teacher.parameters()]
    s_params = [_local(p).detach().to(torch.float32) for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
