"""The point-cloud adapter: Point-MAE-style groups as tokens, a mini-PointNet tokenizer, Chamfer MAE loss."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dataclasses
import math

import torch
from torch import Tensor, nn

from foundation.tokens import PatchBatch
from foundation.recipes import RecipeError
from modalities.base import Adapter
from modalities.pointcloud.dataset import PointCloudDataset, make_dataset
from modalities.pointcloud.ops import chamfer_distance
from modalities.pointcloud.preprocess import up_axis_rotation
from modalities.pointcloud.synthetic import write_synthetic
from modalities.pointcloud.tokenizer import MiniPointNet


class PointCloudAdapter(Adapter):
    """Object scans and LiDAR: FPS + kNN groups (in workers), xyz centres as coordinates.

    Config (the preprocessing that travels with an exported encoder):
      points        point budget per sample (fewer points are topped up with repeats)
      sampling      fps | random: how the budget is drawn
      groups, group_size   G tokens of K points each (Point-MAE: 64 x 32 for 1,024 points)
      normalize     sphere (centre + unit sphere) | centre | none
      features      extra per-point channels appended to each point (e.g. [intensity], [r, g, b])
      columns       declared columns of .bin/.npy/.txt files: kitti | nuscenes | scannet | sunrgbd | "x y z ..."
      up_axis       x | y | z: the axis rotation augmentation turns about and blocks are cut across
      mesh_points   points sampled on OFF mesh surfaces before the budget is drawn
      nonfinite     error | drop: NaN/inf coordinates fail loudly by default
      min_points    clouds (or blocks) with fewer points are an error / a counted skip (default group_size)
      block_size, block_stride, block_min_points   cut large tiles into square blocks (in file units)
      rotate, scale, jitter, dropout   training augmentation (rotation about up axis, anisotropic
                    scale range, Gaussian jitter sigma in normalised units, max fraction of points dropped)
      cache         keep read files in memory (per worker)
    """

    name: ClassVar[str] = "pointcloud"
    position_kind: ClassVar[str] = "mlp"
    default_masking: ClassVar[dict[str, Any]] = {"kind": "block", "ratio": 0.6}
    defaults: ClassVar[dict[str, Any]] = {
        "points": 1024,
        "sampling": "fps",
        "groups": 64,
        "group_size": 32,
        "normalize": "sphere",
        "features": [],
        "columns": None,
        "up_axis": "z",
        "mesh_points": 8192,
        "nonfinite": "error",
        "min_points": None,
        "block_size": None,
        "block_stride": None,
        "block_min_points": None,
        "rotate": True,
        "scale": [0.8, 1.25],
        "jitter": 0.005,
        "dropout": 0.0,
        "cache": True,
        "tokenizer_hidden": 64,
    }

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        c = self.config
        if c["sampling"] not in ("fps", "random"):
            raise RecipeError(f"adapter.sampling must be fps or random, got {c['sampling']!r}")
        if c["up_axis"] not in ("x", "y", "z"):
            raise RecipeError(f"adapter.up_axis must be x, y or z, got {c['up_axis']!r}")
        if int(c["group_size"]) > int(c["points"]) or int(c["groups"]) > int(c["points"]):
            raise RecipeError(f"adapter.groups ({c['groups']}) and adapter.group_size ({c['group_size']}) "
                             f"cannot exceed points ({c['points']})")
        if isinstance(c["features"], str):
            c["features"] = [f for f in c["features"].replace(",", " ").split() if f]
        c["scale"] = [float(v) for v in c["scale"]]

    @property
    def channels(self) -> int:
        return 3 + len(self.config["features"])

    @property
    def patch_dim(self) -> int:
        return int(self.config["group_size"]) * self.channels

    @property
    def target_dim(self) -> int:
        return int(self.config["group_size"]) * 3

    @property
    def coord_dims(self) -> int:
        return 3

    def dataset(self, data: dict, train: bool) -> PointCloudDataset:
        return make_dataset(data, self.config, train)

    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        return write_synthetic(out_dir, n, seed)

    # -- dense task: per-point segmentation (modalities/pointcloud/dense.py) ----------------------
    def dense_dataset(self, data: dict, train: bool):
        from foundation.sources import find_sources
        from modalities.pointcloud.dense import PointDenseDataset
        from modalities.pointcloud.io import EXTENSIONS

        sources = find_sources(data.get("root"), data.get("manifest"), data.get("labels"), extensions=EXTENSIONS)
        from foundation.dense import label_files

        among = label_files([s.path for s in sources], data.get("masks"))  # label files beside the clouds
        sources = [s for s in sources if s.path not in among]
        rule = data.get("masks") or ("file" if train else None)
        return PointDenseDataset(sources, self.config, train, data.get("on_error", "raise"), rule, data.get("manifest"))

    def dense_head(self, encoder: nn.Module, classes: int) -> nn.Module:
        from modalities.pointcloud.dense import PointDenseHead

        return PointDenseHead(encoder, classes)

    def write_dense(self, dataset, predictions, out_dir, names):
        from modalities.pointcloud.dense import write_point_files

        return write_point_files(dataset, predictions, out_dir, names)

    def make_tokenizer(self, width: int) -> nn.Module:
        return MiniPointNet(int(self.config["group_size"]), self.channels, width, int(self.config["tokenizer_hidden"]))

    def view_augment(self, batch: PatchBatch, generator: torch.Generator | None) -> PatchBatch:
        """Rotate (about the up axis, if ``rotate``) and anisotropically scale each sample's groups and
        centres together, on the device: the same as augmenting the cloud before grouping (FPS and kNN
        are unchanged by rotation; by mild scaling nearly so). Only the xyz channels move; extra
        channels (intensity, colour) stay; normals, if present, are not turned (use rotate=false)."""
        b, n, _ = batch.coords.shape
        dev, dt = batch.coords.device, batch.coords.dtype
        m = torch.eye(3, device=dev, dtype=dt).repeat(b, 1, 1)
        if self.config.get("rotate", False):
            m = up_axis_rotation(torch.rand(b, generator=generator, device=dev).to(dt) * 2 * math.pi, self.config["up_axis"])
        lo, hi = self.config.get("scale", (1.0, 1.0))
        s = lo + (hi - lo) * torch.rand(b, 3, generator=generator, device=dev).to(dt)
        m = m * s.unsqueeze(-1)  # x' = diag(s) R x: rotate, then scale the axes
        coords = torch.einsum("bij,bnj->bni", m, batch.coords)
        k, c = int(self.config["group_size"]), self.channels
        pts = batch.patches.reshape(b, n, k, c)
        xyz = torch.einsum("bij,bnkj->bnki", m, pts[..., :3])
        patches = torch.cat([xyz, pts[..., 3:]], -1).reshape(b, n, k * c)
        return dataclasses.replace(batch, patches=patches, coords=coords)

    def reconstruction_loss(self, pred: Tensor, targets: Tensor, target_valid: Tensor, mask: Tensor) -> Tensor:
        """Squared-L2 Chamfer distance between predicted and true points of each masked group.

        ``mask`` [B, N] is True for masked tokens; points whose xyz are not all valid are ignored.
        Overlapping groups mean some of these points were visible in neighbouring groups (see
        ``dataset.py``), as in Point-MAE.
        """
        k = int(self.config["group_size"])
        sel = mask.bool()
        p = pred[sel].reshape(-1, k, 3)
        t = targets[sel].reshape(-1, k, 3)
        valid = target_valid[sel].reshape(-1, k, 3).all(-1)
        if p.shape[0] == 0:
            return pred.sum() * 0.0
        return chamfer_distance(p, t, b_valid=valid).mean()
