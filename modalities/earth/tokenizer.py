"""Wavelength-conditioned patch embedding (DOFA-style hypernetwork) with a SAR polarisation embedding.

Why: a fixed Conv2d patch embedding ties the model to one band order and count. Here each band's
kernel [p*p -> width] is *generated* from that band's centre wavelength (log-scaled Fourier
features) plus a polarisation embedding (VV and VH share the C-band wavelength), and a token is the
mean of its present bands' projections. So one model embeds 13-band, 4-band (RGB+NIR), SAR-only or
SAR+optical chips, one token per location whatever the band count (no longer sequences).

Token-local by construction: a token's embedding uses only its own patch values and the sample's
per-band metadata (``meta["wavelengths"]``, ``meta["polarisation"]``, optional ``meta["band_valid"]``).

Two tokenizers share the band hypernetwork:
- ``linear`` (``SpectralPatchEmbed``): the whole p x p x C patch mapped linearly to one token.
- ``conv`` (``SpectralConvPatchEmbed``): each *pixel's* spectrum mixed into a few channels by
  generated weights, then GELU and two 3x3 convolutions inside the patch. A linear map of an
  8x8x13 patch to 128 numbers keeps the patch mean but not its pixel-scale texture (the within-patch
  spread per band that per-band mean/std statistics rely on); the per-pixel nonlinearity and the
  small convolutions keep both, still one token per location and still any band subset.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from foundation.grid import patch_conv_stem
from modalities.earth.bands import POLARISATIONS


class _BandConditioned(nn.Module):
    """The band hypernetwork's input: an embedding of each band's wavelength and polarisation."""

    def __init__(self, patch_size: int, hidden: int, n_freqs: int) -> None:
        super().__init__()
        self.patch_size, self.k = patch_size, patch_size * patch_size
        # log-wavelength spans ~-0.8 (443 nm) .. 10.9 (5.5 cm C-band): geometric frequencies cover both scales.
        self.register_buffer("freqs", 2.0 ** torch.linspace(-3, 4, n_freqs), persistent=False)
        self.band_mlp = nn.Sequential(nn.Linear(2 * n_freqs, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.pol = nn.Embedding(len(POLARISATIONS), hidden)
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.pol.weight, std=0.5)

    def band_embedding(self, wavelengths: Tensor, polarisation: Tensor) -> Tensor:
        """[B, C] wavelengths (um) and polarisation indices -> [B, C, hidden]."""
        angles = torch.log(wavelengths.float().clamp(min=1e-3)).unsqueeze(-1) * self.freqs
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.norm(self.band_mlp(feats) + self.pol(polarisation.long()))

    def bands(self, patches: Tensor, meta: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Band embeddings [B, C, H], each band's share of the mean over present bands [B, C] and
        the patches as [B, M, C, k]."""
        wl = meta["wavelengths"]
        b, m, p = patches.shape
        c = wl.shape[1]
        if p != c * self.k:
            raise ValueError(f"patches carry {p} values per token but meta lists {c} bands x {self.k} pixels")
        present = meta.get("band_valid")
        present = torch.ones_like(wl, dtype=patches.dtype) if present is None else present.to(patches.dtype)
        share = present / present.sum(1, keepdim=True).clamp(min=1.0)  # mean over present bands
        return self.band_embedding(wl, meta["polarisation"]), share, patches.view(b, m, c, self.k)


class SpectralPatchEmbed(_BandConditioned):
    """patches [B, M, C*p*p] (channel-major) + per-band meta -> tokens [B, M, width]."""

    def __init__(self, width: int, patch_size: int, hidden: int = 128, n_freqs: int = 12) -> None:
        super().__init__(patch_size, hidden, n_freqs)
        self.width = width
        self.to_weight = nn.Linear(hidden, self.k * width)
        self.to_bias = nn.Linear(hidden, width)
        nn.init.normal_(self.to_weight.weight, std=0.02)
        nn.init.zeros_(self.to_weight.bias)
        # A wavelength-independent base kernel keeps early training stable (the hypernetwork learns deltas).
        self.base = nn.Parameter(torch.randn(self.k, width) / math.sqrt(self.k))

    def forward(self, patches: Tensor, meta: dict[str, Tensor]) -> Tensor:
        e, share, x = self.bands(patches, meta)
        b, c = share.shape
        weight = self.to_weight(e).view(b, c, self.k, self.width) + self.base  # [B, C, k, W]
        bias = self.to_bias(e)  # [B, C, W]
        tokens = torch.einsum("bmck,bckw->bmw", x * share[:, None, :, None], weight.to(patches.dtype))
        return tokens + torch.einsum("bcw,bc->bw", bias.to(patches.dtype), share).unsqueeze(1)


class SpectralConvPatchEmbed(_BandConditioned):
    """Per-pixel generated spectral mixing, GELU, two 3x3 convolutions inside the patch, linear, LayerNorm."""

    def __init__(self, width: int, patch_size: int, hidden: int = 128, n_freqs: int = 12,
                 features: tuple[int, int, int] = (32, 32, 64)) -> None:
        super().__init__(patch_size, hidden, n_freqs)
        mix, *convs = features
        self.mix = mix
        self.to_weight = nn.Linear(hidden, mix)
        self.to_bias = nn.Linear(hidden, mix)
        nn.init.normal_(self.to_weight.weight, std=0.02)
        nn.init.zeros_(self.to_weight.bias)
        self.base = nn.Parameter(torch.randn(mix))  # wavelength-independent part of each band's mixing weights
        layers, flat = patch_conv_stem(mix, convs, (patch_size, patch_size))
        self.stem = nn.Sequential(nn.GELU(), *layers)
        self.proj = nn.Linear(flat, width)
        # unit-scale tokens: without it the stem's small outputs are drowned by the positional embedding
        self.out_norm = nn.LayerNorm(width)

    def forward(self, patches: Tensor, meta: dict[str, Tensor]) -> Tensor:
        e, share, x = self.bands(patches, meta)
        b, m, c, k = x.shape
        dtype = self.proj.weight.dtype
        weight = (self.to_weight(e) + self.base) * share[..., None]  # [B, C, S]
        bias = torch.einsum("bcs,bc->bs", self.to_bias(e), share)  # [B, S]
        pixels = torch.einsum("bmck,bcs->bmsk", x.to(dtype), weight.to(dtype)) + bias.to(dtype)[:, None, :, None]
        h = self.stem(pixels.reshape(b * m, self.mix, self.patch_size, self.patch_size)).flatten(1)
        return self.out_norm(self.proj(h)).view(b, m, -1)
