"""Downstream helpers: georeferenced token maps (embeddings, predictions) and spatially blocked splits.

A chip's tokens sit on a regular grid of patch_size x patch_size pixel cells, so a per-token result
is a raster whose pixel is one patch: same CRS, the chip's transform scaled by the patch size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from affine import Affine

from modalities.earth.io import write_geotiff


def token_grid_shape(height: int, width: int, patch: int) -> tuple[int, int]:
    return -(-height // patch), -(-width // patch)


def write_token_map(path: str | Path, values: np.ndarray, dataset, index: int, nodata: float | None = None,
                    descriptions: list[str] | None = None) -> Path:
    """Write per-token ``values`` [N] or [N, D] of chip ``index`` as a GeoTIFF with D bands.

    Pixels are patches: the transform is the chip's transform scaled by ``patch_size``, so a map
    overlays the source scene exactly in any GIS.
    """
    crs, transform, h, w = dataset.georef(index)
    p = int(dataset.cfg["patch_size"])
    gh, gw = token_grid_shape(h, w, p)
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] != gh * gw:
        raise ValueError(f"chip {dataset.chip_id(index)} has {gh * gw} tokens, got {values.shape[0]} values")
    raster = values.T.reshape(values.shape[1], gh, gw)
    return write_geotiff(path, raster, crs, transform @ Affine.scale(p, p), nodata=nodata, descriptions=descriptions)


def write_chip_values(path: str | Path, values: np.ndarray, dataset, index: int, nodata: float | None = None) -> Path:
    """Write a per-pixel map [C, h, w] (or [h, w]) of chip ``index`` (a segmentation prediction)."""
    crs, transform, _, _ = dataset.georef(index)
    return write_geotiff(path, np.asarray(values), crs, transform, nodata=nodata)


def chip_centres(dataset) -> np.ndarray:
    """Chip centres in their CRS units [N, 2] (x, y)."""
    out = []
    for i in range(len(dataset)):
        _, t, h, w = dataset.georef(i)
        out.append(t @ (w / 2.0, h / 2.0))
    return np.asarray(out)


def spatial_block_split(dataset, block_m: float, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices where whole ``block_m`` x ``block_m`` blocks go to one side.

    Neighbouring chips share texture, illumination and often the same field; a random split puts
    them on both sides and inflates accuracy. Blocks are keyed by CRS too, so distant UTM zones never
    collide. (Block size is in CRS units: metres for projected CRSs.)
    """
    keys = []
    for i, (x, y) in enumerate(chip_centres(dataset)):
        crs = dataset.georef(i)[0]
        keys.append((crs, int(np.floor(x / block_m)), int(np.floor(y / block_m))))
    uniq = sorted(set(keys))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_test = max(1, int(round(test_fraction * len(uniq))))
    test_blocks = {uniq[j] for j in order[:n_test]}
    is_test = np.array([k in test_blocks for k in keys])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def read_label_chip(label_path: str, dataset, index: int, ignore: int = -1) -> np.ndarray:
    """A per-pixel label raster (e.g. Sen1Floods11 ``LabelHand``) over chip ``index``'s window, on its grid.

    Read with nearest resampling (labels are categories); nodata/NaN become ``ignore``.
    """
    from rasterio.enums import Resampling

    from modalities.earth.io import RasterPart, read_part

    chip = dataset.chips[index]
    data, valid = read_part(RasterPart(label_path, ("label",)), dataset.grids[chip.scene], chip.window,
                            resampling=Resampling.nearest)
    out = np.where(valid[0], data[0], ignore).astype(np.int64)
    return out


class SegmentationHead(torch.nn.Module):
    """A light per-pixel decoder: each token predicts its patch's p x p pixel classes (a linear
    layer after LayerNorm), then patches are put back in place. Cheap enough to train on a frozen
    encoder with a few labelled scenes; for sharper edges fine-tune the encoder too."""

    def __init__(self, width: int, patch: int, classes: int) -> None:
        super().__init__()
        self.patch, self.classes = patch, classes
        self.norm = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Linear(width, classes * patch * patch)

    def forward(self, tokens: torch.Tensor, grid_shape: tuple[int, int]) -> torch.Tensor:
        """tokens [B, N, W] in row-major grid order -> logits [B, classes, gh*p, gw*p]."""
        b, n, _ = tokens.shape
        gh, gw = grid_shape
        p, c = self.patch, self.classes
        x = self.proj(self.norm(tokens)).view(b, gh, gw, c, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * p, gw * p)
