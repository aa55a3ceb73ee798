"""Band views: embed a chip through several band subsets of one band-agnostic model and concatenate.

Why: the tokenizer fuses every band into one token per location, each present band weighted
equally, so on Sentinel-2 the 20 m and 60 m bands (resampled onto the 10 m grid, hence blurred)
dilute the spatial detail of the four 10 m bands. Embedding the chip once with all its bands and
once with only its finest-resolution bands gives a probe the spectra and the sharp texture side by
side. The model was trained for this: ``band_dropout`` hides random band subsets in pretraining,
so a subset view is an input it knows (the same mechanism that lets it embed RGB+NIR chips).

A view hides bands exactly as a dataset declaring fewer bands would (``band_valid`` off, values
zeroed, tokens with no valid pixel in the view become padding), so it costs one encoder pass per
view and no second read of the files. Measured on EuroSAT in ``modalities/earth/README.md``.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from foundation.tokens import PatchBatch
from modalities.earth.bands import band


def resolution_views(channels: list[str]) -> list[list[str]]:
    """All bands, plus the bands at the finest native resolution when they are a proper subset.

    Sentinel-2 13 bands -> [all 13, the 10 m bands B02 B03 B04 B08]; RGB+NIR, SAR alone or a
    single-resolution sensor -> [all] (a second view would repeat the first). Bands of unknown
    resolution (the generic RED/GREEN/BLUE/NIR names, gsd 0) never form a view of their own.
    """
    gsd = {c: band(c).gsd_m for c in channels}
    known = [g for g in gsd.values() if g > 0]
    finest = [c for c in channels if known and gsd[c] == min(known)]
    return [list(channels)] + ([finest] if finest and len(finest) < len(channels) else [])


def restrict_to_bands(batch: PatchBatch, channels: list[str], view: list[str]) -> PatchBatch:
    """The batch as the tokenizer would see it if the chip carried only ``view``'s bands."""
    unknown = sorted(set(view) - set(channels))
    if unknown:
        raise ValueError(f"band view {view}: bands {unknown} are not among the data's channels {channels}")
    keep = torch.tensor([c in view for c in channels], device=batch.patches.device)
    b, n, p = batch.patches.shape
    c = len(channels)
    if p % c:
        raise ValueError(f"patches carry {p} values per token, not a multiple of the {c} channels {channels}")
    per_band = (b, n, c, p // c)
    patches = (batch.patches.view(per_band) * keep[None, None, :, None]).view(b, n, p)
    seen = batch.target_valid.view(per_band)[:, :, keep].flatten(2).any(-1)  # target_valid is the patches' pixel validity
    padding = batch.padding | ~seen
    meta = dict(batch.meta)
    meta["band_valid"] = meta.get("band_valid", torch.ones(b, c, dtype=torch.bool, device=keep.device)).bool() & keep[None]
    return replace(batch, patches=patches, padding=padding, meta=meta)


class BandViewEncoder(nn.Module):
    """An encoder whose ``pooled`` features concatenate its views' (same keys, widths add up).

    It drops into ``foundation.embed.embed_dataset`` and the probes unchanged; the wrapped encoder
    is shared, not copied."""

    def __init__(self, encoder: nn.Module, channels: list[str], views: list[list[str]] | None = None) -> None:
        super().__init__()
        self.encoder, self.channels = encoder, list(channels)
        self.views = views if views is not None else resolution_views(self.channels)

    @torch.no_grad()
    def pooled(self, batch: PatchBatch) -> dict[str, Tensor]:
        parts = [self.encoder.pooled(batch if view == self.channels else restrict_to_bands(batch, self.channels, view))
                 for view in self.views]
        return {k: torch.cat([p[k] for p in parts], -1) for k in parts[0]}
