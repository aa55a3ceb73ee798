"""Small raster writers for the earth tests (files written by rasterio in the test, beside the real ones)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(path: Path, array: np.ndarray, crs="EPSG:32633", transform=None, nodata=None, descriptions=None, tiled=False) -> Path:
    """Write [C, H, W] with rasterio (the tests' own files, next to the shared real ones)."""
    c, h, w = array.shape
    profile = dict(driver="GTiff", height=h, width=w, count=c, dtype=array.dtype.name, crs=crs,
                   transform=transform or from_origin(400000, 5500000, 10, 10), nodata=nodata)
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
    return path
