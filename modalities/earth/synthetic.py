"""Synthetic Sentinel-2 (+ co-registered Sentinel-1) chips with spatially structured land cover.

Why this design: per DESIGN "How we prove a claim", a synthetic set that proves learning must defeat
trivial features. Each chip mixes two land-cover materials (water, vegetation, crop, bare soil,
urban, sand; each with a 13-band reflectance signature and a VV/VH backscatter), drawn at random
*independently of the class*, in a class-specific spatial arrangement (striped fields, a patchwork,
a river, a lake, a town grid, scattered buildings) with a covered fraction drawn from the same range
for every class. So per-band means/stds carry almost no class information: the class lives in the
spatial structure, which a model only sees if it looks at more than band statistics.

Realism: illumination and per-pixel noise, smooth within-material variation, multiplicative speckle
on SAR (4-look gamma), clouds (bright, flagged in the GeoTIFF's internal mask) on some chips, nodata
swath edges (mask 0 in S2, NaN in S1) on others; every chip is a georeferenced UTM GeoTIFF.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from modalities.earth.bands import S2_BANDS

CLASSES = ["Cropland", "Patchwork", "River", "Lake", "Town", "Scattered"]
# Reflectance in S2_BANDS order (B01..B08, B8A, B09, B10, B11, B12).
MATERIALS = {
    "water": ([0.08, 0.07, 0.06, 0.04, 0.03, 0.02, 0.02, 0.015, 0.015, 0.01, 0.001, 0.005, 0.003], (-22.0, -28.0)),
    "vegetation": ([0.03, 0.04, 0.07, 0.04, 0.10, 0.28, 0.35, 0.38, 0.40, 0.38, 0.005, 0.20, 0.10], (-9.0, -15.0)),
    "crop": ([0.04, 0.05, 0.09, 0.06, 0.14, 0.24, 0.30, 0.33, 0.35, 0.33, 0.005, 0.25, 0.14], (-11.0, -17.0)),
    "soil": ([0.10, 0.12, 0.16, 0.20, 0.22, 0.24, 0.26, 0.27, 0.28, 0.28, 0.01, 0.34, 0.28], (-13.0, -20.0)),
    "urban": ([0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20, 0.21, 0.21, 0.20, 0.01, 0.24, 0.22], (-4.0, -11.0)),
    "sand": ([0.18, 0.22, 0.28, 0.33, 0.36, 0.38, 0.40, 0.41, 0.42, 0.41, 0.01, 0.45, 0.40], (-16.0, -24.0)),
}


def _rotate(y: np.ndarray, x: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    return x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)


def structure(cls: int, size: int, frac: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean map (material A where True) of class ``cls`` covering about ``frac`` of the chip."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    if cls == 0:  # parallel field stripes
        u, _ = _rotate(y, x, theta)
        period = rng.uniform(6, 14)
        return ((u / period) % 1.0) < frac
    if cls == 1:  # patchwork of rectangular parcels
        cell = int(rng.integers(8, 17))
        grid = rng.random((size // cell + 2, size // cell + 2)) < frac
        oy, ox = rng.integers(0, cell, 2)
        return grid[((y + oy) // cell).astype(int), ((x + ox) // cell).astype(int)]
    if cls == 2:  # a meandering river
        u, v = _rotate(y - size / 2, x - size / 2, theta)
        amp, wl, ph = rng.uniform(3, 10), rng.uniform(25, 60), rng.uniform(0, 2 * np.pi)
        centre = amp * np.sin(2 * np.pi * u / wl + ph) + rng.uniform(-size / 6, size / 6)
        return np.abs(v - centre) < frac * size / 2
    if cls == 3:  # one lake with a wobbly shore
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        ang = np.arctan2(y - cy, x - cx)
        r0 = np.sqrt(frac * size * size / np.pi)
        wobble = 1 + 0.15 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.1 * np.sin(5 * ang + rng.uniform(0, 6))
        return np.hypot(y - cy, x - cx) < r0 * wobble
    if cls == 4:  # a regular town grid of blocks
        u, v = _rotate(y, x, rng.choice([0.0, np.pi / 4, rng.uniform(0, np.pi)]))
        period = rng.uniform(7, 12)
        side = np.sqrt(frac) * period
        return ((u % period) < side) & ((v % period) < side)
    if cls == 5:  # scattered small buildings / ponds
        out = np.zeros((size, size), bool)
        while out.mean() < frac:
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 3.5)
            out |= np.hypot(y - cy, x - cx) < r
        return out
    raise ValueError(f"unknown synthetic class {cls}")


def _smooth_noise(size: int, rng: np.random.Generator, scale: int = 8) -> np.ndarray:
    coarse = rng.standard_normal((size // scale + 2, size // scale + 2))
    idx = np.arange(size) / scale
    i0 = np.floor(idx).astype(int)
    t = idx - i0
    rows = coarse[i0] * (1 - t)[:, None] + coarse[i0 + 1] * t[:, None]
    return rows[:, i0] * (1 - t)[None] + rows[:, i0 + 1] * t[None]


def make_chip(cls: int, size: int, rng: np.random.Generator, cloud_p: float = 0.2, edge_p: float = 0.15,
              materials: bool = False):
    """One chip: S2 DN uint16 [13, H, W], S1 dB float32 [2, H, W], validity mask uint8 [H, W]; with
    ``materials`` also each pixel's material (index into MATERIALS, 255 under cloud or nodata) [H, W]."""
    names = list(MATERIALS)
    a, b = rng.choice(len(names), 2, replace=False)
    frac = rng.uniform(0.25, 0.55)
    where_a = structure(cls, size, frac, rng)
    spec = np.stack([np.asarray(MATERIALS[names[i]][0]) for i in (a, b)])  # [2, 13]
    sar = np.stack([np.asarray(MATERIALS[names[i]][1]) for i in (a, b)])  # [2, 2]
    gain = rng.uniform(0.8, 1.2)
    texture = 1 + 0.08 * _smooth_noise(size, rng)
    refl = np.where(where_a[None], spec[0][:, None, None], spec[1][:, None, None]) * gain * texture[None]
    refl = refl + rng.normal(0, 0.004, refl.shape)
    db = np.where(where_a[None], sar[0][:, None, None], sar[1][:, None, None]) + rng.uniform(-1.5, 1.5)
    speckle = rng.gamma(4.0, 1 / 4.0, db.shape)
    db = 10 * np.log10(10 ** (db / 10) * speckle)
    valid = np.ones((size, size), bool)
    y, x = np.mgrid[0:size, 0:size]
    if rng.random() < cloud_p:  # an opaque cloud: bright and flat across bands, masked
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size * 0.15, size * 0.35)]
        cloud = np.hypot(y - cy, x - cx) < r
        refl[:, cloud] = rng.uniform(0.5, 0.7)
        valid &= ~cloud
    edge = np.zeros((size, size), bool)
    if rng.random() < edge_p:  # the swath's nodata edge
        edge = (x + y * rng.uniform(0.2, 1.0)) < rng.uniform(0.1, 0.35) * size * 1.6
        valid &= ~edge
    dn = np.clip(refl * 10000, 1, 65535).astype(np.uint16)
    dn[:, edge] = 0
    db = db.astype(np.float32)
    db[:, edge] = np.nan
    if materials:
        mat = np.where(where_a, a, b).astype(np.uint8)
        mat[valid == 0] = 255
        return dn, db, valid.astype(np.uint8) * 255, mat
    return dn, db, valid.astype(np.uint8) * 255


def write_synthetic(out_dir: str | Path, n: int, seed: int = 0, size: int = 64, with_sar: bool = True,
                    with_masks: bool = False) -> dict:
    """Write ``n`` labelled chips: ``s2/<Class>/<class>_<i>_S2.tif`` and ``s1/<Class>/<class>_<i>_S1.tif``.

    Returns the ``data`` keys that read them (folder labels). Read SAR+optical pairs with adapter
    ``pair=regex:_S2=>_S1`` and ``pair_root=<out_dir>/s1``. ``with_masks``: per-pixel material maps
    (segmentation labels, index into MATERIALS; 255 = nodata under clouds and swath edges) in
    ``masks/<Class>/<class>_<i>_mask.tif`` on the chip's grid, and ``masks`` in the returned keys.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = i % len(CLASSES)
        dn, db, mask, *mat = make_chip(cls, size, rng, materials=with_masks)
        # Chips lie on a 1 km lattice in UTM 32N so spatially blocked splits have something to block.
        transform = from_origin(300000 + (i % 40) * 1000, 5000000 - (i // 40) * 1000, 10, 10)
        stem = f"{CLASSES[cls].lower()}_{i:05d}"
        s2 = out / "s2" / CLASSES[cls] / f"{stem}_S2.tif"
        s2.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(s2, "w", driver="GTiff", height=size, width=size, count=13, dtype="uint16",
                           crs="EPSG:32632", transform=transform) as dst:
            dst.write(dn)
            dst.write_mask(mask)  # clouds and the nodata edge, as an internal GDAL mask
            for j, name in enumerate(S2_BANDS):
                dst.set_band_description(j + 1, name)
        if with_sar:
            s1 = out / "s1" / CLASSES[cls] / f"{stem}_S1.tif"
            s1.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(s1, "w", driver="GTiff", height=size, width=size, count=2, dtype="float32",
                               crs="EPSG:32632", transform=transform, nodata=float("nan")) as dst:
                dst.write(db)
                dst.set_band_description(1, "VV")
                dst.set_band_description(2, "VH")
        if with_masks:
            m = out / "masks" / CLASSES[cls] / f"{stem}_mask.tif"
            m.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(m, "w", driver="GTiff", height=size, width=size, count=1, dtype="uint8",
                               crs="EPSG:32632", transform=transform, nodata=255) as dst:
                dst.write(mat[0][None])
    if with_masks:
        return {"root": str(out / "s2"), "labels": "folder", "masks": r"regex:/s2/(\w+)/(\w+)_S2\.tif$=>/masks/\1/\2_mask.tif"}
    return {"root": str(out / "s2"), "labels": "folder"}
