"""Wavelength-conditioned patch embedding (DOFA-style hypernetwork) with a SAR polarisation embedding.

Why: a fixed Conv2d patch embedding ties the model to one band order and count. Here each band's
kernel [p*p -> width] is *generated* from that band's centre wavelength (log-scaled Fourier
features) plus a polarisation embedding (VV and VH share the C-band wavelength), and a token is the
mean of its present bands' projections. So one model embeds 13-band, 4-band (RGB+NIR), SAR-only or
SAR+optical chips, one token per location whatever the band count (no longer sequences).

Token-local by construction: a token's embedding uses only its own patch values and the sample's
per-band metadata (``meta["wavelengths"]``, ``meta["polarisation"]``, optional ``meta["band_valid"]``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modalities.earth.bands import POLARISATIONS


class SpectralPatchEmbed(nn.Module):
    """patches [B, M, C*p*p] (channel-major) + per-band meta -> tokens [B, M, width]."""

    def __init__(self, width: int, patch_size: int, hidden: int = 128, n_freqs: int = 12) -> None:
        super().__init__()
        self.width, self.k = width, patch_size * patch_size
        # log-wavelength spans ~-0.8 (443 nm) .. 10.9 (5.5 cm C-band): geometric frequencies cover both scales.
        self.register_buffer("freqs", 2.0 ** torch.linspace(-3, 4, n_freqs), persistent=False)
        self.band_mlp = nn.Sequential(nn.Linear(2 * n_freqs, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.pol = nn.Embedding(len(POLARISATIONS), hidden)
        self.norm = nn.LayerNorm(hidden)
        self.to_weight = nn.Linear(hidden, self.k * width)
        self.to_bias = nn.Linear(hidden, width)
        nn.init.normal_(self.pol.weight, std=0.5)
        nn.init.normal_(self.to_weight.weight, std=0.02)
        nn.init.zeros_(self.to_weight.bias)
        # A wavelength-independent base kernel keeps early training stable (the hypernetwork learns deltas).
        self.base = nn.Parameter(torch.randn(self.k, width) / math.sqrt(self.k))

    def band_embedding(self, wavelengths: Tensor, polarisation: Tensor) -> Tensor:
        """[B, C] wavelengths (um) and polarisation indices -> [B, C, hidden]."""
        angles = torch.log(wavelengths.float().clamp(min=1e-3)).unsqueeze(-1) * self.freqs
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.norm(self.band_mlp(feats) + self.pol(polarisation.long()))

    def forward(self, patches: Tensor, meta: dict[str, Tensor]) -> Tensor:
        wl, pol = meta["wavelengths"], meta["polarisation"]
        b, m, p = patches.shape
        c = wl.shape[1]
        if p != c * self.k:
            raise ValueError(f"patches carry {p} values per token but meta lists {c} bands x {self.k} pixels")
        e = self.band_embedding(wl, pol)  # [B, C, H]
        weight = self.to_weight(e).view(b, c, self.k, self.width) + self.base  # [B, C, k, W]
        bias = self.to_bias(e)  # [B, C, W]
        present = meta.get("band_valid")
        present = torch.ones_like(wl, dtype=patches.dtype) if present is None else present.to(patches.dtype)
        share = present / present.sum(1, keepdim=True).clamp(min=1.0)  # mean over present bands
        x = patches.view(b, m, c, self.k)
        tokens = torch.einsum("bmck,bckw->bmw", x * share[:, None, :, None], weight.to(patches.dtype))
        return tokens + torch.einsum("bcw,bc->bw", bias.to(patches.dtype), share).unsqueeze(1)
