"""Raster I/O with rasterio: windowed chip reads, tiling, per-band stacking, GeoTIFF writing.

Why windows everywhere: Sentinel scenes are 10980 x 10980 pixels x 13 bands; a dataset over them
must read one chip at a time (GeoTIFF and COG tiles make a windowed read touch only the bytes it
needs). A chip is (parts, grid, window): the files that contribute bands, the reference pixel grid
they are resampled onto (the finest part's), and the window on that grid. Its CRS and transform
travel with it, so embeddings and predictions can be written back as georeferenced rasters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from foundation.errors import DomainfmError

SUPPORTED_DTYPES = {"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


@dataclass(frozen=True)
class RasterPart:
    """A file and the band names its raster bands hold, in file order."""

    path: str
    bands: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    """The pixel grid a sample is read onto: CRS, affine transform, size in pixels."""

    crs: str
    transform: tuple[float, ...]  # Affine as a plain 6-tuple (pickles into DataLoader workers)
    height: int
    width: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    def window_transform(self, window: Window) -> Affine:
        return rasterio.windows.transform(window, self.affine)


class EarthInputError(DomainfmError, ValueError):  # DomainfmError: the CLI prints it as one line
    """A raster or scene that cannot be used as given; the message names the file, the problem and the fix."""


def open_checked(path: str):
    """Open a raster, refusing what the adapter cannot read with a message naming the file."""
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioError as err:  # RasterioIOError and GDAL's CPLE_* errors alike
        raise EarthInputError(f"{path}: not a readable raster ({err})") from err
    if ds.crs is None:
        ds.close()
        raise EarthInputError(f"{path}: raster has no CRS; EO samples must be georeferenced (set one with gdal_edit.py -a_srs)")
    bad = set(ds.dtypes) - SUPPORTED_DTYPES
    if bad:
        ds.close()
        raise EarthInputError(f"{path}: unsupported data type(s) {sorted(bad)}; supported: {sorted(SUPPORTED_DTYPES)}")
    return ds


def check_band_count(part: RasterPart) -> None:
    """A stacked file must hold exactly the declared bands (EuroSAT's 13, a pair's 2...)."""
    with open_checked(part.path) as ds:
        if ds.count != len(part.bands):
            raise EarthInputError(
                f"{part.path}: file has {ds.count} band(s) but {len(part.bands)} were declared ({list(part.bands)}); "
                "fix adapter.bands / adapter.preset for this dataset")


def reference_grid(parts: list[RasterPart]) -> Grid:
    """The finest-resolution part's grid: 20 m and 60 m bands are resampled onto the 10 m grid."""
    best = None
    for part in parts:
        with open_checked(part.path) as ds:
            res = abs(ds.transform.a) * abs(ds.transform.e)
            if best is None or res < best[0]:
                best = (res, Grid(ds.crs.to_string(), tuple(ds.transform)[:6], ds.height, ds.width))
    return best[1]


def tile_windows(height: int, width: int, size: int, stride: int | None = None) -> list[Window]:
    """Chips of ``size`` pixels every ``stride`` pixels covering the whole scene.

    The last row/column of chips is shifted back to end at the scene's edge, so every chip is full
    size and no pixel is left out; a scene smaller than ``size`` is one (smaller) chip.
    """
    stride = stride or size
    if size <= 0 or stride <= 0:
        raise ValueError(f"chip size and stride must be positive, got {size}, {stride}")

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, stride))
        if s[-1] + size < n:
            s.append(n - size)
        return s

    return [Window(c, r, min(size, width), min(size, height)) for r in starts(height) for c in starts(width)]


def _part_valid(ds, data: np.ndarray, masks: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(data) & (masks > 0)
    nd = nodata if nodata is not None else ds.nodata
    if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
        valid &= data != nd
    return valid


def read_part(part: RasterPart, grid: Grid, window: Window, nodata: float | None = None,
              resampling: Resampling = Resampling.bilinear) -> tuple[np.ndarray, np.ndarray]:
    """Read ``part`` over ``window`` of ``grid``: values [C, h, w] float32 and validity [C, h, w].

    Same grid: a plain windowed read. Same CRS, other resolution (BigEarthNet's 20/60 m bands): the
    window's bounds are read from the coarser file and resampled to the chip's shape. Other CRS: the
    file is warped onto the grid through a WarpedVRT (still windowed). Validity is resampled with
    nearest so a nodata pixel never leaks half a value into its neighbours as "valid".
    """
    h, w = int(window.height), int(window.width)
    with open_checked(part.path) as ds:
        same_crs = ds.crs.to_string() == grid.crs
        if same_crs and tuple(ds.transform)[:6] == grid.transform:
            inside = window.row_off >= 0 and window.col_off >= 0 and window.row_off + h <= ds.height and window.col_off + w <= ds.width
            kw = {} if inside else dict(boundless=True)  # a boundless read builds a VRT: only when needed
            data = ds.read(window=window, **kw).astype(np.float32)
            masks = ds.read_masks(window=window, **kw)
            return data, _part_valid(ds, data, masks, nodata)
        bounds = window_bounds(window, grid.affine)
        if same_crs:
            src_win = from_bounds(*bounds, transform=ds.transform)
            inside = src_win.row_off >= -1e-6 and src_win.col_off >= -1e-6 and \
                src_win.row_off + src_win.height <= ds.height + 1e-6 and src_win.col_off + src_win.width <= ds.width + 1e-6
            kw = dict(window=src_win, out_shape=(ds.count, h, w), boundless=not inside)
            fill = dict(fill_value=ds.nodata or 0) if kw["boundless"] else {}
            data = ds.read(resampling=resampling, **fill, **kw).astype(np.float32)
            masks = ds.read_masks(resampling=Resampling.nearest, **kw)
            # Resampling mixes a nodata value into its neighbours: judge validity on a nearest read.
            nearest = ds.read(resampling=Resampling.nearest, **fill, **kw).astype(np.float32)
            return data, _part_valid(ds, nearest, masks, nodata) & np.isfinite(data)
        with WarpedVRT(ds, crs=grid.crs, transform=grid.affine, width=grid.width, height=grid.height,
                       resampling=resampling, src_nodata=nodata if nodata is not None else ds.nodata) as vrt:
            data = vrt.read(window=window).astype(np.float32)
            masks = vrt.read_masks(window=window)
            return data, _part_valid(vrt, data, masks, nodata)


def read_chip(parts: list[RasterPart], grid: Grid, window: Window, nodata: float | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stack every part's bands onto ``grid`` over ``window``: values, validity, band names."""
    arrays, valids, names = [], [], []
    for part in parts:
        data, valid = read_part(part, grid, window, nodata)
        arrays.append(data)
        valids.append(valid)
        names += list(part.bands)
    return np.concatenate(arrays), np.concatenate(valids), names


# Metres per degree on the WGS84 ellipsoid at latitude phi (standard series expansion).
def _m_per_deg_lat(phi: float) -> float:
    return 111132.954 - 559.822 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)


def _m_per_deg_lon(phi: float) -> float:
    return 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)


def gsd_metres(crs, transform: Affine, height: int = 0) -> float:
    """Ground sampling distance in metres (mean of x and y), also for geographic CRSs (EPSG:4326).

    For a geographic CRS the pixel size in degrees is converted at the raster's central latitude:
    a Sen1Floods11 chip at 8.98e-5 degrees is 10 m, not 9e-5 m.
    """
    crs = rasterio.crs.CRS.from_user_input(crs)
    rx, ry = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        lat = math.radians(transform.f + transform.e * height / 2.0)
        return 0.5 * (rx * _m_per_deg_lon(lat) + ry * _m_per_deg_lat(lat))
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return 0.5 * (rx + ry) * factor


def write_geotiff(path: str | Path, array: np.ndarray, crs: str, transform: Affine,
                  nodata: float | None = None, descriptions: list[str] | None = None) -> Path:
    """Write [C, H, W] (or [H, W]) as a tiled, compressed GeoTIFF with the given georeferencing."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = array.shape
    profile = dict(driver="GTiff", height=h, width=w, count=c, dtype=array.dtype.name, crs=crs,
                   transform=transform, nodata=nodata, compress="deflate")
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
    return path


def window_id(path: str, window: Window) -> str:
    """A stable sample id naming the file and the window (row/col offset, size)."""
    return f"{path}#r{int(window.row_off)}c{int(window.col_off)}h{int(window.height)}w{int(window.width)}"


def parse_window_id(sample_id: str) -> tuple[str, Window]:
    """Inverse of :func:`window_id`."""
    path, _, spec = sample_id.rpartition("#")
    import re

    m = re.fullmatch(r"r(\d+)c(\d+)h(\d+)w(\d+)", spec)
    if not m:
        raise ValueError(f"sample id {sample_id!r} does not name a window")
    r, c, h, w = map(int, m.groups())
    return path, Window(c, r, w, h)
