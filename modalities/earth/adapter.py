"""EarthAdapter: Sentinel-1/2 and Landsat rasters through rasterio, any band subset, SAR+optical.

The adapter's config is its whole preprocessing (band declarations, units, chip/patch sizes,
per-band statistics), stored with an exported encoder so it reads raw GeoTIFFs exactly as in
training. Pieces: ``bands`` (registry and dataset presets), ``io`` (windowed reads, tiling,
GeoTIFF writing), ``scenes`` (layouts and SAR+optical pairs), ``preprocess`` (units, validity,
statistics), ``dataset`` (chips -> tokens), ``tokenizer`` (wavelength hypernetwork), ``synthetic``.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from foundation.errors import DataError
from foundation.inputs import InputPolicy
from foundation.recipes import RecipeError
from modalities.base import Adapter
from modalities.earth.bands import PRESETS, canonical, s2_offset_for_baseline
from modalities.earth.dataset import EarthDataset
from modalities.earth.preprocess import StreamingBandStats
from modalities.earth.scenes import find_scenes
from modalities.earth.tokenizer import SpectralConvPatchEmbed, SpectralPatchEmbed
from modalities.earth.views import BandViewEncoder, resolution_views

log = logging.getLogger(__name__)

TOKENIZERS = {"linear": SpectralPatchEmbed, "conv": SpectralConvPatchEmbed}

# Keys a preset may fill when the user leaves them None.
_DECLARED = ("bands", "layout", "reflectance_scale", "reflectance_offset", "sar_units", "nodata")
_BUILTIN = {"layout": "auto", "reflectance_scale": 1e-4, "reflectance_offset": 0.0, "sar_units": "db", "nodata": None}


class EarthAdapter(Adapter):
    name: ClassVar[str] = "earth"
    defaults: ClassVar[dict[str, Any]] = {
        "preset": None,  # a declaration from bands.PRESETS (eurosat_ms, sen1floods11_s2, bigearthnet_s2, ...)
        "bands": None,  # band names in file order (None: preset, else the GeoTIFF band descriptions)
        "layout": None,  # stacked | per_band | auto (a folder of *_B01.tif... is per_band)
        "reflectance_scale": None,  # optical DN -> reflectance: (DN + offset) * scale
        "reflectance_offset": None,  # DN offset; None: from s2_baseline (-1000 from 04.00 on) or the preset
        "s2_baseline": None,  # Sentinel-2 processing baseline, e.g. "04.00"
        "sar_units": None,  # db | linear (as the files hold it; converted to dB once)
        "nodata": None,  # overrides the files' nodata value
        "include": None,  # regex a sample's file/folder name must match (e.g. S2Hand), others are ignored
        "pair": None,  # SAR+optical companion: bigearthnet | regex:<find>=><replace>
        "pair_root": None,  # where companions live (bigearthnet: the S1 folder)
        "pair_bands": ["VV", "VH"],  # the companion's bands (file order)
        "cloud_mask": None,  # sidecar mask rule regex:<find>=><replace> on the file name (nonzero = cloud)
        "chip_size": 64,
        "stride": None,  # None: chip_size (no overlap)
        "patch_size": 8,
        "min_valid_fraction": 0.5,  # chips with less valid (clear, not nodata) area are dropped
        "target_norm": "none",  # none: band-standardised values (keeps spectra) | patch: MAE norm_pix per band
        "augment": True,  # rot90/flip on training views
        "band_dropout": 0.0,  # training views hide each band from the tokenizer with this probability
        "stats": None,  # {"mean": {band: v}, "std": {band: v}} filled by fit()
        "fit_max_chips": 2000,
        "cache_chips": 1024,  # keep up to this many decoded chips in memory (small datasets re-read every epoch)
        "tokenizer_hidden": 128,
        "tokenizer": "linear",  # linear patch embedding | conv: per-pixel spectral mixing + 3x3 convs inside the patch
        # frozen features (embed, probe): resolution = all bands and the finest-resolution bands alone,
        # concatenated (modalities/earth/views.py; Sentinel-2: + the 10 m bands) | none = all bands only
        "embed_views": "resolution",
    }
    position_kind: ClassVar[str] = "sincos"
    default_masking: ClassVar[dict[str, Any]] = {"kind": "random", "ratio": 0.75}

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        preset = self.config.get("preset")
        if preset is not None and preset not in PRESETS:
            raise RecipeError(f"adapter.preset: unknown preset {preset!r}; known: {sorted(PRESETS)}")
        declared = PRESETS.get(preset, {})
        for key in _DECLARED:
            if self.config.get(key) is None:
                self.config[key] = copy.deepcopy(declared.get(key, _BUILTIN.get(key)))
        if self.config.get("s2_baseline") not in (None, "") and (config or {}).get("reflectance_offset") is None:
            self.config["reflectance_offset"] = s2_offset_for_baseline(self.config["s2_baseline"])
        if self.config["bands"]:
            self.config["bands"] = [canonical(b) for b in self.config["bands"]]
        if self.config.get("pair_bands"):
            self.config["pair_bands"] = [canonical(b) for b in self.config["pair_bands"]]
        p, size = int(self.config["patch_size"]), int(self.config["chip_size"])
        if size % p:
            raise RecipeError(f"adapter.chip_size {size} is not a multiple of adapter.patch_size {p}")
        if self.config["embed_views"] not in ("resolution", "none"):
            raise RecipeError(f"adapter.embed_views must be 'resolution' or 'none', got {self.config['embed_views']!r}")
        if self.config["tokenizer"] not in TOKENIZERS:
            raise RecipeError(f"adapter.tokenizer must be one of {sorted(TOKENIZERS)}, got {self.config['tokenizer']!r}")

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def channels(self) -> list[str]:
        """Every band a sample carries: primary bands then the pair's."""
        if not self.config["bands"]:
            raise RecipeError("earth adapter: bands unknown until data is seen; set adapter.bands or adapter.preset")
        return list(self.config["bands"]) + (list(self.config["pair_bands"]) if self.config.get("pair") else [])

    @property
    def patch_dim(self) -> int:
        return len(self.channels) * int(self.config["patch_size"]) ** 2

    @property
    def coord_dims(self) -> int:
        return 2

    # -- data -----------------------------------------------------------------------------------
    def dataset(self, data: dict, train: bool) -> EarthDataset:
        scenes, inputs = self._scenes(data)
        return EarthDataset(scenes, self.config, train=train, inputs=inputs)

    def _scenes(self, data: dict) -> tuple[list, InputPolicy]:
        inputs = InputPolicy.from_data(data)
        scenes = find_scenes(data, self.config, inputs)
        if not scenes:
            raise DataError(data.get("root") or data.get("manifest"), f"no usable scenes; skipped: {inputs.skipped_items()[:3]}", "point data.root at GeoTIFF tiles, or check adapter.include")
        if not self.config["bands"]:
            # Learn the band list from the first scene (descriptions / per-band files), then freeze it.
            self.config["bands"] = scenes[0].primary_bands
            inputs.note(f"bands inferred from {scenes[0].path}: {' '.join(self.config['bands'])} (set adapter.bands or adapter.preset to declare them)", warn=False)
        for scene in scenes:
            if not set(scene.bands) & set(self.channels):
                raise DataError(scene.path, f"bands {scene.bands} share none of the model's channels {self.channels}", "set adapter.bands to the file's bands in order")
        return scenes, inputs

    # -- dense task: per-pixel segmentation (modalities/earth/dense.py) ---------------------------
    def dense_dataset(self, data: dict, train: bool):
        from modalities.earth.dense import EarthDenseDataset

        scenes, inputs = self._scenes(data)
        return EarthDenseDataset(scenes, self.config, inputs, data.get("masks"), data.get("manifest"), train=train)

    def dense_head(self, encoder: nn.Module, classes: int) -> nn.Module:
        from modalities.earth.dense import PixelDecoder

        return PixelDecoder(encoder.width, len(self.channels), int(self.config["patch_size"]), classes)

    def write_dense(self, dataset, predictions, out_dir, names):
        from modalities.earth.dense import write_scene_maps

        return write_scene_maps(dataset, predictions, out_dir, len(names))

    def fit(self, dataset: EarthDataset) -> None:
        """Stream per-band mean/std over (up to ``fit_max_chips``) training chips into the config."""
        acc = StreamingBandStats()
        n = len(dataset)
        step = max(1, n // int(self.config["fit_max_chips"]))
        for i in range(0, n, step):
            data, valid, names = dataset.read(i)
            acc.update(data, valid, names)
        self.config["stats"] = acc.result()
        dataset.cfg["stats"] = self.config["stats"]

    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        from modalities.earth.synthetic import write_synthetic

        return write_synthetic(out_dir, n, seed)

    def feature_model(self, encoder: nn.Module, dataset: EarthDataset) -> nn.Module:
        """Band views (``embed_views``): the 20 m/60 m bands blur the 10 m bands' texture inside a
        token, so the finest bands are embedded once more on their own (``views.py``)."""
        if self.config["embed_views"] == "none":
            return encoder
        views = resolution_views(dataset.channels)
        return encoder if len(views) == 1 else BandViewEncoder(encoder, dataset.channels, views)

    # -- model parts ----------------------------------------------------------------------------
    def make_tokenizer(self, width: int) -> nn.Module:
        make = TOKENIZERS[self.config["tokenizer"]]
        return make(width, int(self.config["patch_size"]), hidden=int(self.config["tokenizer_hidden"]))
