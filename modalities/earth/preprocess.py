"""Units, validity and normalisation: raw DN / backscatter -> standardised values the model sees.

Order matters and each step happens once: (1) validity (nodata, NaN/inf, cloud), (2) physical units
as the dataset declares them (optical DN -> reflectance with the declared scale and offset; SAR
linear -> dB only when declared linear), (3) per-band standardisation with statistics streamed over
the training tiles. Statistics are keyed by band *name*, so a model fitted on 13 bands normalises a
4-band chip correctly.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from foundation.recipes import RecipeError
from modalities.earth.bands import band
from modalities.earth.io import EarthInputError

log = logging.getLogger(__name__)

# Used only before ``fit`` has run (demos, tests): typical reflectance and dB backscatter ranges.
FALLBACK_STATS = {"optical": (0.15, 0.10), "sar": (-15.0, 5.0)}


def to_physical(data: np.ndarray, valid: np.ndarray, names: list[str], cfg: dict, source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Apply declared units: reflectance = (DN + offset) * scale for optical, dB for SAR.

    SAR declared ``linear`` is converted to dB; declared ``db`` is left alone, so it is never
    converted twice. Linear backscatter cannot be negative: finding negative values under a
    ``linear`` declaration means the data are already in dB, and we refuse rather than guess.
    The other way round, backscatter in dB is mostly negative (a scene's median is near -10 dB), so
    a ``db`` band whose values are all non-negative with a median below 1 is linear power: refused too,
    since reading it as dB would embed silently wrong values.
    """
    out = data.astype(np.float32, copy=True)
    valid = valid.copy()
    scale, offset = float(cfg["reflectance_scale"]), float(cfg["reflectance_offset"])
    sar_units = str(cfg["sar_units"]).lower()
    if sar_units not in ("db", "linear"):
        raise RecipeError(f"adapter.sar_units must be 'db' or 'linear', got {cfg['sar_units']!r}")
    for i, name in enumerate(names):
        b = band(name)
        v = valid[i]
        if b.is_sar:
            if sar_units == "linear":
                if np.any(out[i][v] < 0):
                    raise EarthInputError(
                        f"{source}: band {name} was declared linear but holds negative values "
                        f"(min {out[i][v].min():.2f}): it looks like dB already; set adapter.sar_units=db")
                valid[i] &= out[i] > 0
                out[i] = 10.0 * np.log10(np.where(valid[i], out[i], 1.0))
            elif v.sum() >= 16 and np.all(out[i][v] >= 0) and np.median(out[i][v]) < 1.0:
                raise EarthInputError(
                    f"{source}: band {name} was declared in dB but holds only non-negative values with median "
                    f"{np.median(out[i][v]):.3f}: it looks like linear power; set adapter.sar_units=linear "
                    f"(input.units=linear when embedding)")
        else:
            out[i] = (out[i] + offset) * scale
    out[~valid] = 0.0
    return out, valid


def apply_cloud_mask(valid: np.ndarray, cloud: np.ndarray | None) -> np.ndarray:
    """Cloudy pixels (cloud > 0) are invalid in every optical band; SAR sees through clouds."""
    if cloud is None:
        return valid
    return valid & ~(cloud > 0)[None]


def band_stats(name: str, stats: dict | None) -> tuple[float, float]:
    stats = stats or {}
    canon = band(name).name
    if canon in stats.get("mean", {}):
        return float(stats["mean"][canon]), float(stats["std"][canon])
    return FALLBACK_STATS["sar" if band(canon).is_sar else "optical"]


def normalise(data: np.ndarray, valid: np.ndarray, names: list[str], stats: dict | None) -> np.ndarray:
    """Per-band standardisation; invalid values become 0 (they are masked everywhere downstream)."""
    out = np.empty_like(data, dtype=np.float32)
    for i, name in enumerate(names):
        mean, std = band_stats(name, stats)
        out[i] = (data[i] - mean) / max(std, 1e-6)
    out[~valid] = 0.0
    return out


class StreamingBandStats:
    """Per-band mean/std over valid pixels, accumulated one chip at a time (float64 sums).

    Streaming keeps memory flat however many training tiles there are; only valid pixels count, so
    nodata borders and clouds do not drag the statistics.
    """

    def __init__(self) -> None:
        self.count: dict[str, float] = {}
        self.total: dict[str, float] = {}
        self.squares: dict[str, float] = {}

    def update(self, data: np.ndarray, valid: np.ndarray, names: list[str]) -> None:
        for i, name in enumerate(names):
            v = data[i][valid[i]].astype(np.float64)
            canon = band(name).name
            self.count[canon] = self.count.get(canon, 0.0) + v.size
            self.total[canon] = self.total.get(canon, 0.0) + float(v.sum())
            self.squares[canon] = self.squares.get(canon, 0.0) + float((v * v).sum())

    def result(self) -> dict[str, dict[str, float]]:
        mean, std = {}, {}
        for name, n in self.count.items():
            if n == 0:
                log.warning("band %s had no valid pixels in the training tiles; keeping fallback statistics", name)
                continue
            m = self.total[name] / n
            var = max(self.squares[name] / n - m * m, 0.0)
            mean[name], std[name] = m, math.sqrt(var) if var > 0 else 1.0
        return {"mean": mean, "std": std}
