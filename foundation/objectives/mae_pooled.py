"""MAE with a global bottleneck (``mae.latent: pooled``): the decoder sees only the max over the
visible tokens' embeddings, plus a mask token at every group position, and rebuilds every token.

A plain MAE decoder reads each visible token, so the encoder's tokens only need to describe their
own neighbourhood; nothing asks the pooled embedding, which probes and SVMs read, to describe the
whole sample. Here that pooled vector is the only way information reaches the decoder (as in a
PointNet autoencoder, but from a masked view), so short pretraining shapes exactly the readout
few-label probes use. Same parameters and names as :class:`MAE`; only the forward pass differs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from foundation.model import with_register_bias
from foundation.objectives.mae import MAE
from foundation.tokens import PatchBatch
from foundation.trunk import masked_max


class PooledMAE(MAE):
    def forward(self, batch: PatchBatch, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        hidden = self.adapter.sample_mask(batch, self.masking, generator)
        enc, _ = self.forward_encoder(batch, hidden)
        z = self.decoder_embed(masked_max(enc.tokens, enc.padding))  # [B, Dd]: the probes' max readout
        b, n = batch.padding.shape
        x = self.mask_token.to(z.dtype).expand(b, n, -1) + self.decoder_positions(batch.coords).to(z.dtype)
        x = torch.cat([z.unsqueeze(1), x], 1)  # the pooled vector takes the register token's place
        pad = torch.cat([batch.padding.new_zeros(b, 1), batch.padding], 1)
        pred = self.head(self.decoder(x, pad, with_register_bias(batch.attn_bias, self.adapter.attn_bias_buckets))[:, 1:])
        loss = self.adapter.reconstruction_loss(pred.float(), batch.targets, batch.target_valid, ~batch.padding)
        return loss, {"visible_tokens": int((~enc.padding).sum()), "masked_tokens": int(hidden.sum())}
