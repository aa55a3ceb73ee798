"""Band registry and per-dataset declarations of band order and units.

Why a registry: the tokenizer generates its patch-embedding weights from each band's physical
centre wavelength (and polarisation for SAR), so the model never relies on a band's *position* in a
file. That is what lets one model serve EuroSAT (B8A stored last), Sen1Floods11 (B8A after B08),
BigEarthNet (one file per band, no B10), an RGB+NIR subset, or SAR alone.

Why declarations: band order and units are properties of a *dataset*, not of the GeoTIFF format.
Reflectance DN scale and the Sentinel-2 L2A baseline-04.00 offset, SAR in linear power or dB: these
are declared once (a preset, or adapter keys) and applied exactly once in ``preprocess.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Sentinel-1 C-band: 5.405 GHz -> 5.547 cm. VV/VH share it; the polarisation embedding tells them apart.
SAR_C_BAND_UM = 55_470.0

POLARISATIONS = {"": 0, "VV": 1, "VH": 2, "HH": 3, "HV": 4}


@dataclass(frozen=True)
class Band:
    """One spectral band or SAR channel: what the tokenizer needs to know about it."""

    name: str
    sensor: str  # "S2", "S1", "L8" (Landsat 8/9 OLI/TIRS share bands), "generic"
    wavelength_um: float  # centre wavelength in micrometres
    gsd_m: float  # native ground sampling distance in metres
    polarisation: str = ""  # "" for optical, VV/VH/HH/HV for SAR

    @property
    def is_sar(self) -> bool:
        return self.polarisation != ""

    @property
    def pol_index(self) -> int:
        return POLARISATIONS[self.polarisation]


def _s2(name: str, wl: float, gsd: float) -> Band:
    return Band(name, "S2", wl, gsd)


# Sentinel-2 MSI centre wavelengths (S2A, ESA SUHB), native resolutions.
_BANDS: list[Band] = [
    _s2("B01", 0.443, 60), _s2("B02", 0.490, 10), _s2("B03", 0.560, 10), _s2("B04", 0.665, 10),
    _s2("B05", 0.705, 20), _s2("B06", 0.740, 20), _s2("B07", 0.783, 20), _s2("B08", 0.842, 10),
    _s2("B8A", 0.865, 20), _s2("B09", 0.945, 60), _s2("B10", 1.375, 60), _s2("B11", 1.610, 20),
    _s2("B12", 2.190, 20),
    # Sentinel-1 C-band SAR, IW GRD 10 m pixel spacing.
    Band("VV", "S1", SAR_C_BAND_UM, 10, "VV"), Band("VH", "S1", SAR_C_BAND_UM, 10, "VH"),
    Band("HH", "S1", SAR_C_BAND_UM, 10, "HH"), Band("HV", "S1", SAR_C_BAND_UM, 10, "HV"),
    # Landsat 8/9 OLI + TIRS (same band set on both satellites).
    Band("L8_B1", "L8", 0.443, 30), Band("L8_B2", "L8", 0.482, 30), Band("L8_B3", "L8", 0.562, 30),
    Band("L8_B4", "L8", 0.655, 30), Band("L8_B5", "L8", 0.865, 30), Band("L8_B6", "L8", 1.609, 30),
    Band("L8_B7", "L8", 2.201, 30), Band("L8_B8", "L8", 0.590, 15), Band("L8_B9", "L8", 1.373, 30),
    Band("L8_B10", "L8", 10.895, 100), Band("L8_B11", "L8", 12.005, 100),
    # Sensor-agnostic names for plain RGB(+NIR) products.
    Band("RED", "generic", 0.665, 0), Band("GREEN", "generic", 0.560, 0), Band("BLUE", "generic", 0.490, 0),
    Band("NIR", "generic", 0.842, 0),
]
BANDS: dict[str, Band] = {b.name: b for b in _BANDS}
S2_BANDS = [b.name for b in _BANDS if b.sensor == "S2"]

_ALIASES = {"B8": "B08", "B8a": "B8A", "B08A": "B8A", "LC08_B": "L8_B", "LC09_B": "L8_B", "L9_B": "L8_B"}


def canonical(name: str) -> str:
    """Normalise a band name as files spell it ("B1", "B8a", "b04", "vv", "LC09_B4") to the registry's."""
    raw = name.strip()
    up = raw.upper()
    for a, b in _ALIASES.items():
        if up.startswith(a.upper()) and a.endswith("_B"):
            up = b + up[len(a):]
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", up)
    if m:
        up = "B8A" if m.group(2) else f"B{int(m.group(1)):02d}"
    if up not in BANDS:
        raise KeyError(f"unknown band {name!r}; known: {sorted(BANDS)}")
    return up


def band(name: str) -> Band:
    return BANDS[canonical(name)]


def band_meta(names: list[str]) -> dict[str, list[float] | list[int]]:
    """Per-band wavelengths and polarisation indices in the given order (the tokenizer's meta)."""
    bands = [band(n) for n in names]
    return {"wavelengths": [b.wavelength_um for b in bands], "polarisation": [b.pol_index for b in bands]}


# A declaration says what a dataset's files contain. Keys: bands (file order), layout
# (stacked | per_band), reflectance_scale/offset (DN -> reflectance), sar_units (db | linear), nodata.
PRESETS: dict[str, dict[str, Any]] = {
    # EuroSAT MS GeoTIFFs: 13 bands, B8A stored *last*, L1C DN = reflectance * 10000.
    "eurosat_ms": {"bands": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"],
                   "reflectance_scale": 1e-4, "reflectance_offset": 0.0},
    # Sen1Floods11 S2Hand: 13 bands with B8A after B08, int16 DN, nodata 0.
    "sen1floods11_s2": {"bands": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"],
                        "reflectance_scale": 1e-4, "reflectance_offset": 0.0, "nodata": 0},
    # Sen1Floods11 S1Hand: VV, VH already in dB, NaN nodata.
    "sen1floods11_s1": {"bands": ["VV", "VH"], "sar_units": "db"},
    # BigEarthNet-S2 (L2A, processed before baseline 04.00, so no offset): one file per band, no B10.
    "bigearthnet_s2": {"bands": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
                       "layout": "per_band", "reflectance_scale": 1e-4, "reflectance_offset": 0.0},
    # BigEarthNet-S1: VV and VH files, float32 dB.
    "bigearthnet_s1": {"bands": ["VV", "VH"], "layout": "per_band", "sar_units": "db"},
    # Sentinel-2 L2A from processing baseline 04.00 (January 2022) on: BOA_ADD_OFFSET = -1000 DN.
    "s2_l2a_baseline04": {"bands": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
                          "reflectance_scale": 1e-4, "reflectance_offset": -1000.0, "nodata": 0},
    # Landsat 8/9 Collection 2 Level-2 surface reflectance: SR = DN * 2.75e-5 - 0.2.
    "landsat_c2l2": {"bands": ["L8_B1", "L8_B2", "L8_B3", "L8_B4", "L8_B5", "L8_B6", "L8_B7"],
                     "reflectance_scale": 2.75e-5, "reflectance_offset": -0.2 / 2.75e-5, "nodata": 0},
    # An 8-bit RGB product (the rasterio test scene): relative brightness, nodata 0.
    "rgb_byte": {"bands": ["RED", "GREEN", "BLUE"], "reflectance_scale": 1.0 / 255.0, "reflectance_offset": 0.0, "nodata": 0},
}


def s2_offset_for_baseline(baseline: str | float | None) -> float:
    """The DN offset of Sentinel-2 L2A/L1C products: -1000 from processing baseline 04.00 on, else 0."""
    if baseline in (None, ""):
        return 0.0
    return -1000.0 if float(baseline) >= 4.0 else 0.0
