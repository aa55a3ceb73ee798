"""A dataset of point clouds (a folder or a manifest) cut into Point-MAE groups in DataLoader workers.

One sample is one file, or one block of a large LiDAR tile when ``block_size`` is set (its id names
the file and the block). Grouping (FPS centres + kNN) runs here, on the CPU workers, so the device
only sees fixed-size tensors.

Note on MAE targets, as in Point-MAE: groups overlap (kNN neighbourhoods of FPS centres share
points), so some points of a masked group are also inside visible groups. The reconstruction task
is therefore a little easier than the mask ratio suggests; we keep it because it is what the
field's numbers are measured with, and the block mask (neighbouring centres masked together) keeps
the leak small.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from foundation.inputs import InputPolicy
from foundation.sources import Source, class_index, find_sources
from foundation.tokens import SampleTokens
from modalities.base import TokenDataset
from modalities.pointcloud.io import EXTENSIONS, PointCloud, PointCloudError, read_cloud
from modalities.pointcloud.ops import group_points
from modalities.pointcloud.preprocess import (NORMAL_NAMES, augment, block_mask, block_origins, dropout_keep,
                                              normalize, scale_features, subsample)

log = logging.getLogger(__name__)


class PointCloudDataset(TokenDataset):
    """``dataset[i]`` is the deterministic view; ``dataset[(i, seed)]`` the augmented one (when ``train``)."""

    def __init__(self, sources: list[Source], config: dict, train: bool = True, on_error: str = "raise",
                 cache_size: int = 4096) -> None:
        self.inputs = InputPolicy(on_error)
        self.cfg, self.train, self.on_error = config, train, self.inputs.on_error
        self.features = list(config.get("features") or [])
        self._cache: OrderedDict[str, PointCloud] = OrderedDict()
        self._cache_size = cache_size if config.get("cache", True) else 0
        self.inputs.found = len(sources)
        labels, self.classes = class_index([s.label for s in sources])
        self.items: list[tuple[Source, int | None, tuple[float, float] | None]] = []
        for i, src in enumerate(sources):
            lab = labels[i] if labels is not None else None
            if config.get("block_size"):
                origins = self.inputs.load(src.path, self._blocks, src.path)
                self.items += [(src, lab, origin) for origin in origins or []]
            elif not self.inputs.skip or self.inputs.load(src.path, self._checked, src.path, None) is not None:
                self.items.append((src, lab, None))  # under raise, a bad file fails when first read
        if not self.items:
            raise PointCloudError(f"no usable point clouds ({len(self.inputs.skipped)} skipped" +
                                  (f"; first: {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else ")"))


    # -- reading -----------------------------------------------------------------------------------
    def _load(self, path: str) -> PointCloud:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        cloud = read_cloud(path, self.cfg.get("columns"), int(self.cfg.get("mesh_points", 8192)))
        if self._cache_size:
            self._cache[path] = cloud
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cloud

    def _checked(self, path: str, origin: tuple[float, float] | None) -> PointCloud:
        """The cloud (or block) with non-finite points handled and the minimum size enforced."""
        cloud = self._load(path)
        if origin is not None:
            cloud = cloud.subset(block_mask(cloud.xyz, origin, float(self.cfg["block_size"]), self.cfg["up_axis"]))
        finite = np.isfinite(cloud.xyz).all(1)
        if not finite.all():
            if self.cfg.get("nonfinite", "error") != "drop":
                raise PointCloudError(f"{path}: {int((~finite).sum())} of {len(finite)} points have NaN/inf coordinates "
                                      "(set adapter.nonfinite=drop to drop them)")
            cloud = cloud.subset(np.nonzero(finite)[0])
        need = int(self.cfg.get("min_points") or self.cfg["group_size"])
        if len(cloud) < need:
            raise PointCloudError(f"{path}: {len(cloud)} points, fewer than the {need} needed (adapter.min_points)")
        if self.features:
            cloud.feature(self.features)  # raises naming the file if a channel is missing
        return cloud

    def _blocks(self, path: str) -> list[tuple[float, float]]:
        cloud = self._checked(path, None)
        size = float(self.cfg["block_size"])
        stride = float(self.cfg.get("block_stride") or size)
        need = int(self.cfg.get("block_min_points") or self.cfg.get("min_points") or self.cfg["group_size"])
        origins = block_origins(cloud.xyz[np.isfinite(cloud.xyz).all(1)], size, stride, self.cfg["up_axis"], need)
        if not origins:
            raise PointCloudError(f"{path}: no {size} m block holds {need} points")
        return origins

    # -- the TokenDataset API ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def label(self, index: int) -> int | None:
        return self.items[index][1]

    def sample_id(self, index: int) -> str:
        src, _, origin = self.items[index]
        return src.path if origin is None else f"{src.path}#block@{origin[0]:.2f},{origin[1]:.2f}"

    def points(self, index: int, rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, PointCloud, torch.Tensor]:
        """Preprocessed points [n, 3], scaled feature channels [n, F], the source cloud and kept indices.

        The indices map each point back to the source (or block) cloud, so per-point predictions can
        be written back into the file (see ``tasks.write_point_labels``).
        """
        src, _, origin = self.items[index]
        cloud = self._checked(src.path, origin)
        aug = rng is not None and self.train
        keep = dropout_keep(len(cloud), float(self.cfg.get("dropout", 0.0)), rng) if aug else torch.arange(len(cloud))
        xyz64 = torch.from_numpy(cloud.xyz[keep.numpy()])
        xyz = (xyz64 - xyz64.mean(0)).float()  # centre in float64 first: UTM coordinates lose cm in float32
        idx = subsample(xyz, int(self.cfg["points"]), self.cfg["sampling"], rng if aug else None)
        xyz, _, _ = normalize(xyz[idx], self.cfg["normalize"])
        chosen = keep[idx]
        feats = torch.zeros(len(idx), 0)
        if self.features:
            feats = torch.from_numpy(scale_features(cloud.feature(self.features), self.features))[chosen]
        if aug:
            normal_cols = [self.features.index(n) for n in NORMAL_NAMES] if set(NORMAL_NAMES) <= set(self.features) else []
            normals = feats[:, normal_cols] if normal_cols else None
            xyz, normals = augment(xyz, normals, self.cfg, rng, self.cfg["up_axis"])
            if normal_cols:
                feats[:, normal_cols] = normals
        return xyz, feats, cloud, chosen

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens | None:
        """Sample ``index``; None under ``data.on_error=skip`` if its file fails (no other sample instead)."""
        src, lab, _ = self.items[index]
        got = self.inputs.load(src.path, self.points, index, rng, check=False)
        if got is None:
            return None
        xyz, feats, _, _ = got
        tokens = tokens_from_points(xyz, feats, int(self.cfg["groups"]), int(self.cfg["group_size"]),
                                    rng if (rng is not None and self.train) else None)
        return SampleTokens(**tokens, id=self.sample_id(index), path=src.path, label=lab)


def tokens_from_points(xyz: torch.Tensor, feats: torch.Tensor, groups: int, group_size: int,
                       rng: torch.Generator | None = None) -> dict:
    """Groups of one cloud as token tensors: patches = [relative xyz, features] per point, flattened."""
    return grouped_tokens(xyz, feats, groups, group_size, rng)[0]


def grouped_tokens(xyz: torch.Tensor, feats: torch.Tensor, groups: int, group_size: int,
                   rng: torch.Generator | None = None) -> tuple[dict, torch.Tensor]:
    """:func:`tokens_from_points` and each group's point indices [G, K] into ``xyz`` (per-point
    labels of the dense task are gathered with them)."""
    n = xyz.shape[0]
    start = torch.randint(n, (1,), generator=rng) if rng is not None else None
    centres, nbr = group_points(xyz.unsqueeze(0), groups, group_size, start=start)
    centres, nbr = centres[0], nbr[0]  # [G, 3], [G, K]
    rel = xyz[nbr] - centres.unsqueeze(1)  # [G, K, 3]
    per_point = torch.cat([rel, feats[nbr]], dim=-1) if feats.shape[1] else rel
    targets = rel.reshape(groups, -1)
    return {
        "patches": per_point.reshape(groups, -1),
        "coords": centres,
        "targets": targets,
        "target_valid": torch.ones_like(targets, dtype=torch.bool),
        "meta": {},
    }, nbr


def make_dataset(data: dict, config: dict, train: bool) -> PointCloudDataset:
    sources = find_sources(data.get("root"), data.get("manifest"), data.get("labels"), extensions=EXTENSIONS)
    return PointCloudDataset(sources, config, train=train, on_error=data.get("on_error", "raise"))
