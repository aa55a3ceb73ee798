"""A whole raster embedded by tiles, optionally written as a georeferenced GeoTIFF of embeddings.

The scene is cut into chips exactly as the dataset cuts it (``chip_size``, ``stride``; windowed rasterio reads,
so memory holds one batch of chips), each chip is embedded under the export's pooling, and chip (i, j) becomes
pixel (i, j) of an embedding raster with one band per dimension. The output keeps the source CRS; its transform
is the source's scaled by the stride (a pixel covers the stride, from the chip's top-left corner). Chips the
dataset drops (less valid area than ``min_valid_fraction``: nodata, cloud) are NaN.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

WINDOW = re.compile(r"#r(\d+)c(\d+)h(\d+)w(\d+)$")


def embed_raster(loaded, path: str | Path, out_tif: str | Path | None = None, batch_size: int = 16) -> dict:
    """``loaded``: a :class:`foundation.embed.LoadedEncoder` of an earth export. Returns the embedding grid
    [D, rows, cols], the chips' ids, CRS and transform; writes ``out_tif`` when given."""
    import rasterio
    from rasterio.transform import Affine

    ds = loaded.dataset({"root": str(path)})
    out = loaded.embed_dataset(ds, batch_size)
    stride = int(loaded.adapter.config.get("stride") or loaded.adapter.config["chip_size"])
    with rasterio.open(path) as src:
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
    rows, cols = -(-height // stride), -(-width // stride)
    grid = np.full((out.embeddings.shape[1], rows, cols), np.nan, np.float32)
    for emb, chip_id in zip(out.embeddings, out.ids):
        m = WINDOW.search(chip_id)
        if m is None:
            raise ValueError(f"{path}: chip id {chip_id!r} carries no window; embed_raster needs a stacked GeoTIFF scene")
        grid[:, int(m.group(1)) // stride, int(m.group(2)) // stride] = emb
    out_transform = transform * Affine.scale(stride)
    if out_tif is not None:
        profile = {"driver": "GTiff", "width": cols, "height": rows, "count": grid.shape[0], "dtype": "float32", "crs": crs,
                   "transform": out_transform, "nodata": float("nan"), "compress": "deflate"}
        with rasterio.open(out_tif, "w", **profile) as dst:
            dst.write(grid)
            dst.descriptions = tuple(f"{out.pooling}_{i}" for i in range(grid.shape[0]))
            dst.update_tags(weights_sha256=out.weights_sha256, pooling=out.pooling, source=Path(path).name)
    return {"embeddings": grid, "ids": out.ids, "crs": crs, "transform": out_transform, "pooling": out.pooling,
            "weights_sha256": out.weights_sha256}
