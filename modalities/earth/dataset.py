"""The chip dataset: scenes tiled into windows, each window read, cleaned and cut into tokens.

Index building reads each candidate chip's validity once (windowed), so chips that are mostly
nodata/cloud are dropped up front (counted and logged) and never reach training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from rasterio.windows import Window

from foundation.errors import DataError
from foundation.grid import normalized_targets, patchify
from foundation.inputs import InputPolicy
from foundation.sources import class_index
from foundation.tokens import SampleTokens
from modalities.base import TokenDataset
from modalities.earth.bands import band_meta
from modalities.earth.io import Grid, RasterPart, gsd_metres, read_chip, reference_grid, tile_windows, window_id
from modalities.earth.preprocess import apply_cloud_mask, normalise, to_physical
from modalities.earth.scenes import Scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chip:
    scene: int
    window: Window


def read_cloud(path: str | None, grid: Grid, window: Window) -> np.ndarray | None:
    if path is None:
        return None
    data, _, _ = read_chip([RasterPart(path, ("cloud",))], grid, window)
    return data[0]


class EarthDataset(TokenDataset):
    """Chips of georeferenced scenes as :class:`SampleTokens` (one token per patch location)."""

    def __init__(self, scenes: list[Scene], cfg: dict, train: bool = False, inputs: InputPolicy | None = None) -> None:
        self.inputs = inputs or InputPolicy()
        self.scenes, self.cfg, self.train, self.on_error = scenes, cfg, train, self.inputs.on_error
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per process (each worker its own)
        self.channels = list(cfg["bands"]) + (list(cfg["pair_bands"]) if cfg.get("pair") else [])
        self.grids: list[Grid] = []
        self.chips: list[Chip] = []
        self.dropped_invalid = 0
        size, stride = int(cfg["chip_size"]), cfg.get("stride")
        keep_scenes = []
        for scene in scenes:
            # every chip's validity is read here, so a truncated or corrupt raster fails (or is skipped) now
            got = self.inputs.load(scene.path, self._scene_windows, scene, size, stride, check=False)
            if got is None:
                continue
            grid, kept, dropped = got
            self.dropped_invalid += dropped
            idx = len(keep_scenes)
            keep_scenes.append(scene)
            self.grids.append(grid)
            self.chips += [Chip(idx, w) for w in kept]
        self.scenes = keep_scenes
        if self.dropped_invalid:
            self.inputs.dropped[f"chip(s) with valid fraction < {cfg['min_valid_fraction']} (nodata/cloud)"] = self.dropped_invalid
            log.info("earth: dropped %d chip(s) with valid fraction < %s", self.dropped_invalid, cfg["min_valid_fraction"])
        if not self.chips:
            skipped = self.inputs.skipped_items()
            raise DataError("data", f"no usable chips: {len(scenes)} scene(s), {self.dropped_invalid} chip(s) dropped as mostly invalid"
                            + (f", {len(skipped)} skipped ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""),
                            "check data.root, or lower adapter.min_valid_fraction")
        labels = [self.scenes[c.scene].label for c in self.chips]
        self.targets, self.classes = class_index(labels)


    def _scene_windows(self, scene: Scene, size: int, stride) -> tuple[Grid, list[Window], int]:
        grid = reference_grid(scene.parts)
        kept, dropped = [], 0
        for w in tile_windows(grid.height, grid.width, size, int(stride) if stride else None):
            frac = self._valid_fraction(scene, grid, w)
            if frac < float(self.cfg["min_valid_fraction"]) or frac == 0.0:
                dropped += 1
            else:
                kept.append(w)
        return grid, kept, dropped

    # -- reading ------------------------------------------------------------------------------
    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Chip ``index`` in physical units (reflectance, dB) with validity: [C, h, w] each.

        Bands come out in the model's channel order whatever the file's order; a channel the file
        lacks (BigEarthNet has no B10) is all-invalid, a file band the model does not use is left out.
        """
        cached = self._cache.get(index)
        if cached is not None:
            return cached[0].copy(), cached[1].copy(), list(self.channels)
        chip = self.chips[index]
        scene, grid = self.scenes[chip.scene], self.grids[chip.scene]
        cfg = {**self.cfg, **scene.decl}
        data, valid, names = read_chip(scene.parts, grid, chip.window, cfg.get("nodata"))
        data, valid = to_physical(data, valid, names, cfg, source=window_id(scene.path, chip.window))
        data, valid, names = self._to_channels(data, valid, names)
        cloud = read_cloud(scene.cloud, grid, chip.window)
        if cloud is not None:
            from modalities.earth.bands import band

            optical = np.array([not band(n).is_sar for n in names])
            valid[optical] = apply_cloud_mask(valid[optical], cloud)
        if len(self._cache) < int(self.cfg.get("cache_chips", 0)):
            self._cache[index] = (data.copy(), valid.copy())
        return data, valid, names

    def _to_channels(self, data: np.ndarray, valid: np.ndarray, names: list[str]):
        if names == self.channels:
            return data, valid, names
        out = np.zeros((len(self.channels),) + data.shape[1:], np.float32)
        ok = np.zeros(out.shape, bool)
        for i, name in enumerate(names):
            if name in self.channels:
                j = self.channels.index(name)
                out[j], ok[j] = data[i], valid[i]
        return out, ok, list(self.channels)

    def _valid_fraction(self, scene: Scene, grid: Grid, window: Window) -> float:
        data, valid, names = read_chip(scene.parts, grid, window, {**self.cfg, **scene.decl}.get("nodata"))
        cloud = read_cloud(scene.cloud, grid, window)
        if cloud is not None:
            from modalities.earth.bands import band

            optical = np.array([not band(n).is_sar for n in names])
            valid[optical] &= ~(cloud > 0)[None]
        # Share of valid (band, pixel) values: SAR under a cloud still counts, a nodata border does not.
        return float(valid.mean())

    def georef(self, index: int) -> tuple[str, object, int, int]:
        """(CRS, affine transform, height, width) of chip ``index``: for writing maps back."""
        chip = self.chips[index]
        grid = self.grids[chip.scene]
        return grid.crs, grid.window_transform(chip.window), int(chip.window.height), int(chip.window.width)

    def chip_id(self, index: int) -> str:
        chip = self.chips[index]
        return window_id(self.scenes[chip.scene].path, chip.window)

    # -- TokenDataset ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chips)

    def label(self, index: int) -> int | None:
        return None if self.targets is None else self.targets[index]

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens | None:
        """Chip ``index``; None under ``data.on_error=skip`` if its scene fails to read (no stand-in)."""
        path = self.scenes[self.chips[index].scene].path
        got = self.inputs.load(path, self.read, index, check=False)
        if got is None:
            return None
        data, valid, names = got
        x = torch.from_numpy(normalise(data, valid, names, self.cfg.get("stats")))
        ok = torch.from_numpy(valid)
        present = ok.flatten(1).any(1)
        if rng is not None and self.cfg.get("augment", True):
            k = int(torch.randint(4, (1,), generator=rng))
            x, ok = torch.rot90(x, k, (1, 2)), torch.rot90(ok, k, (1, 2))
            if bool(torch.rand(1, generator=rng) < 0.5):
                x, ok = x.flip(2), ok.flip(2)
        tokens_in = present.clone()
        drop = float(self.cfg.get("band_dropout", 0.0))
        if rng is not None and drop > 0 and int(present.sum()) > 1:
            # Hide a random subset of bands from the tokenizer (targets keep them): cross-spectral
            # prediction, and practice for the band subsets the model will meet at embedding time.
            keep = (torch.rand(len(names), generator=rng) >= drop) & present
            if not keep.any():
                keep[int(torch.nonzero(present)[torch.randint(int(present.sum()), (1,), generator=rng)])] = True
            tokens_in = keep
        p = int(self.cfg["patch_size"])
        gp = patchify(x, (p, p), ok)
        c = len(names)
        inputs = (gp.patches.view(gp.patches.shape[0], c, -1) * tokens_in[None, :, None]).reshape(gp.patches.shape)
        if self.cfg.get("target_norm", "none") == "patch":
            targets = normalized_targets(gp.patches, gp.valid, channels=c)
        else:
            targets = gp.patches
        chip = self.chips[index]
        grid = self.grids[chip.scene]
        bm = band_meta(names)
        meta = {
            "wavelengths": torch.tensor(bm["wavelengths"], dtype=torch.float32),
            "polarisation": torch.tensor(bm["polarisation"], dtype=torch.long),
            "band_valid": tokens_in,
            "gsd": torch.tensor([gsd_metres(grid.crs, grid.affine, grid.height)], dtype=torch.float32),
        }
        return SampleTokens(
            patches=inputs, coords=gp.coords, targets=targets, target_valid=gp.valid,
            padding=gp.token_padding, meta=meta, id=window_id(self.scenes[chip.scene].path, chip.window),
            path=self.scenes[chip.scene].path, label=self.label(index),
        )
