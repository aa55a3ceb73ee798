"""Masked autoencoder over any adapter's tokens, readable top to bottom like facebookresearch/mae:
mask -> encode visible tokens only -> decode with mask tokens -> adapter's loss on masked tokens.

``visible_weight`` adds the same loss on the *visible* tokens, weighted: MAE's masked-only loss never
asks the encoder to keep what context cannot predict (a small lesion, a rare atom), because such
content only ever has to be rebuilt when it is hidden, and then it cannot be. Rebuilding the visible
tokens as well makes the encoder carry them to its output (SimMIM and the original MAE ablation
weigh the same trade-off; off by default, as in MAE)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from foundation.masking import Visible, visible_tokens
from foundation.model import Encoder, with_register_bias
from foundation.positions import make_positions
from foundation.tokens import PatchBatch, gather_tokens
from foundation.trunk import Transformer


class MAE(nn.Module):
    def __init__(self, encoder: Encoder, masking: dict, decoder_width: int = 128, decoder_depth: int = 2, decoder_heads: int = 4, mask_tokens_in_encoder: bool = False,
                 visible_weight: float = 0.0) -> None:
        super().__init__()
        adapter = encoder.adapter
        self.encoder, self.adapter, self.masking = encoder, adapter, dict(masking)
        self.mask_tokens_in_encoder = mask_tokens_in_encoder
        self.visible_weight = float(visible_weight)
        if mask_tokens_in_encoder:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, encoder.width))
            nn.init.trunc_normal_(self.encoder_mask_token, std=0.02)
        self.decoder_embed = nn.Linear(encoder.width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_positions = make_positions(adapter.position_kind, adapter.coord_dims, decoder_width)
        buckets = adapter.attn_bias_buckets
        self.decoder = Transformer(decoder_width, decoder_depth, decoder_heads, bias_buckets=buckets + 1 if buckets else 0)
        self.head = nn.Linear(decoder_width, adapter.target_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward_encoder(self, batch: PatchBatch, hidden: Tensor):
        if self.mask_tokens_in_encoder:  # GraphMAE: hidden tokens stay in the trunk as mask embeddings
            return self.encoder(batch, replace=hidden, replacement=self.encoder_mask_token), None
        keep = visible_tokens(hidden, batch.padding)
        return self.encoder(batch, keep=keep), keep

    def forward_decoder(self, batch: PatchBatch, enc, keep, select: Visible | None = None) -> Tensor:
        """Predictions for every token, or for the tokens ``select`` gathers (the head runs on those only)."""
        b, n = batch.padding.shape
        latent = self.decoder_embed(enc.tokens)
        if keep is None:  # mask tokens went through the encoder: the decoder reads its output at every position
            x = latent
        else:  # scatter visible tokens into a full sequence of mask tokens
            x = self.mask_token.to(latent.dtype).expand(b, n, -1).clone()
            idx = keep.index.unsqueeze(-1).expand_as(latent)
            src = torch.where(keep.padding.unsqueeze(-1), torch.gather(x, 1, idx), latent)
            x = x.scatter(1, idx, src)
        x = x + self.decoder_positions(batch.coords).to(x.dtype)
        x = torch.cat([self.decoder_embed(enc.register).unsqueeze(1), x], 1)
        pad = torch.cat([batch.padding.new_zeros(b, 1), batch.padding], 1) if batch.has_padding else None
        x = self.decoder(x, pad, with_register_bias(batch.attn_bias, self.adapter.attn_bias_buckets))[:, 1:]
        return self.head(x if select is None else gather_tokens(x, select.index))

    def forward(self, batch: PatchBatch, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        hidden = self.adapter.sample_mask(batch, self.masking, generator)
        enc, keep = self.forward_encoder(batch, hidden)
        if not self.visible_weight:  # only hidden tokens are scored: predict those alone (a quarter less head output,
            # loss and gradient at ratio 0.75, where 3-d patches make these the step's largest tensors)
            sel = visible_tokens(~hidden, batch.padding)
            pred = self.forward_decoder(batch, enc, keep, sel).float()
            targets, valid = gather_tokens(batch.targets, sel.index), gather_tokens(batch.target_valid, sel.index)
            loss = self.adapter.reconstruction_loss(pred, targets, valid, ~sel.padding)
            return loss, {"visible_tokens": int((~enc.padding).sum()), "masked_tokens": int(hidden.sum())}
        pred = self.forward_decoder(batch, enc, keep).float()
        loss = self.adapter.reconstruction_loss(pred, batch.targets, batch.target_valid, hidden)
        if self.visible_weight:
            visible = ~hidden & ~batch.padding
            loss = loss + self.visible_weight * self.adapter.reconstruction_loss(pred, batch.targets, batch.target_valid, visible)
        return loss, {"visible_tokens": int((~enc.padding).sum()), "masked_tokens": int(hidden.sum())}

    def export_encoder(self) -> Encoder:
        return self.encoder
