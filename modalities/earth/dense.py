"""Per-pixel segmentation of Earth-observation chips (``finetune.task=segmentation``).

Labels are mask rasters on each scene's grid (``data.masks``: a manifest column or a path rule; the
raster's nodata and negative values mean "no label"). The head is a small per-pixel decoder on patch
tokens; predicted maps are written as GeoTIFF on the scene's own grid (its transform and CRS), so
they overlay the source exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from torch import Tensor, nn

from foundation.dense import DenseTaskError, mask_file
from foundation.grid import patchify, unpatchify
from modalities.earth.dataset import EarthDataset
from modalities.earth.io import write_geotiff


def orient(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``a`` [C, H, W] rotated by ``k`` quarter turns, then mirrored left-right: the training views'
    geometry, applied alike to the chip and its labels."""
    a = np.rot90(a, k, axes=(1, 2))
    return np.ascontiguousarray(a[:, :, ::-1] if flip else a)


class EarthDenseDataset(EarthDataset):
    """Chips whose samples carry per-pixel labels: ``dense`` [N, patch*patch], pixels in patch order.

    Training views are rotated and mirrored (image and labels together) before tokenization; the
    rest of the chip pipeline (reading, band statistics, band dropout) is the classification one's.
    """

    def __init__(self, scenes, cfg: dict, inputs, rule: str | None, manifest: str | None, train: bool = False) -> None:
        self.geometric = bool(cfg.get("augment", True))
        self._view: tuple[int, bool] | None = None
        super().__init__(scenes, {**cfg, "augment": False}, train=train, inputs=inputs)
        base = Path(manifest).parent if manifest else None
        self.masks = [mask_file(s.path, rule, s.extra, base) for s in self.scenes] if rule else None
        self.dense_classes = [str(c) for c in range(self._class_count())] if self.masks else []

    def _class_count(self) -> int:
        top = -1
        for scene, grid, path in zip(self.scenes, self.grids, self.masks):
            with rasterio.open(path) as ds:
                if (ds.height, ds.width) != (grid.height, grid.width) or not np.allclose(tuple(ds.transform)[:6], grid.transform[:6]):
                    raise DenseTaskError(f"{path}: the mask's grid ({ds.height}x{ds.width}, {tuple(ds.transform)[:6]}) is not its scene's "
                                         f"{scene.path} ({grid.height}x{grid.width}, {grid.transform[:6]}); resample the mask onto the image grid")
                a = ds.read(1)
                ok = (a >= 0) & ((a != ds.nodata) if ds.nodata is not None else True)
                if ok.any():
                    top = max(top, int(a[ok].max()))
        if top < 1:
            raise DenseTaskError(f"masks {self.masks[0]}...: fewer than two classes among the labelled pixels")
        return top + 1

    def read_labels(self, index: int) -> np.ndarray:
        """Chip ``index``'s labels [h, w] int64, -1 where the mask has none."""
        chip = self.chips[index]
        with rasterio.open(self.masks[chip.scene]) as ds:
            a = ds.read(1, window=chip.window)
            nodata = ds.nodata
        lab = a.astype(np.int64)
        lab[(a < 0) | ((a == nodata) if nodata is not None else False)] = -1
        return lab

    def read(self, index: int):
        data, valid, names = super().read(index)
        if self._view is not None:
            data, valid = orient(data, *self._view), orient(valid, *self._view)
        return data, valid, names

    def sample(self, index: int, rng: torch.Generator | None):
        view = None
        if rng is not None and self.geometric:
            k, flip = int(torch.randint(4, (1,), generator=rng)), bool(torch.rand(1, generator=rng) < 0.5)
            w = self.chips[index].window
            view = (k if int(w.height) == int(w.width) else 2 * (k % 2), flip)  # quarter turns only on square chips
        self._view = view
        try:
            s = super().sample(index, rng)
        finally:
            self._view = None
        if s is None or self.masks is None:
            return s
        lab = self.read_labels(index)[None]
        if view is not None:
            lab = orient(lab, *view)
        p = int(self.cfg["patch_size"])
        gp = patchify(torch.from_numpy(lab).float(), (p, p))
        dense = gp.patches.round().long()
        dense[~gp.valid] = -1  # edge padding of a chip that is not a whole number of patches
        s.dense = dense
        return s


class PixelDecoder(nn.Module):
    """Per-pixel classes from patch tokens: the token's feature, the pixel's own band values and its
    position inside the patch, through a small shared MLP (as SETR's naive decoder, plus the pixel's
    spectrum, which a 10 m boundary inside a patch needs). [B, N, patch*patch, classes]."""

    def __init__(self, width: int, channels: int, patch: int, classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.channels, self.patch = channels, patch
        self.norm = nn.LayerNorm(width)
        self.token = nn.Linear(width, hidden)
        self.pixel = nn.Linear(channels, hidden)
        self.pos = nn.Parameter(torch.zeros(patch * patch, hidden))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, classes))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, enc, batch) -> Tensor:
        b, n, _ = batch.patches.shape
        pix = batch.patches.reshape(b, n, self.channels, self.patch * self.patch).transpose(2, 3)  # [B, N, pp, C]
        h = self.token(self.norm(enc.tokens)).unsqueeze(2) + self.pixel(pix.to(enc.tokens.dtype)) + self.pos
        return self.out(h)


def write_scene_maps(dataset: EarthDenseDataset, predictions, out_dir: str | Path, classes: int):
    """One GeoTIFF per scene, ``<scene>_pred.tif`` on the scene's grid (same size, transform and CRS),
    each chip's labels in its window (overlapping chips: the later one); pixels no chip covers are
    nodata. ``predictions`` yields (chip index, labels [n, patch*patch]) in index order."""
    out_dir = Path(out_dir)
    p = int(dataset.cfg["patch_size"])
    dtype, nodata = (np.uint8, 255) if classes < 255 else (np.int16, -1)
    state: dict = {"scene": None, "canvas": None, "indices": []}
    used: set[str] = set()

    def flush():
        scene = dataset.scenes[state["scene"]]
        grid = dataset.grids[state["scene"]]
        name = f"{Path(scene.path).name.split('.')[0]}_pred"
        while name in used:
            name += "_"
        used.add(name)
        path = write_geotiff(out_dir / f"{name}.tif", state["canvas"], grid.crs, grid.affine, nodata=nodata)
        return [(i, str(path)) for i in state["indices"]]

    for index, labels in predictions:
        chip = dataset.chips[index]
        if chip.scene != state["scene"]:
            if state["scene"] is not None:
                yield from flush()
            g = dataset.grids[chip.scene]
            state.update(scene=chip.scene, canvas=np.full((g.height, g.width), nodata, dtype), indices=[])
        w = chip.window
        h, wd = int(w.height), int(w.width)
        shape = (-(-h // p), -(-wd // p))
        m = unpatchify(torch.as_tensor(np.asarray(labels), dtype=torch.float32), shape, (p, p), 1)[0, :h, :wd]
        r, c = int(w.row_off), int(w.col_off)
        state["canvas"][r:r + h, c:c + wd] = m.numpy().astype(dtype)
        state["indices"].append(index)
    if state["scene"] is not None:
        yield from flush()
