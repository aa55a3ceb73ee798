"""Per-point segmentation of point clouds (``finetune.task=segmentation``).

Labels are the file's own per-point labels (``data.masks=file``, the default: LAS classification, a
``label`` column, an ``.npz``'s ``labels``) or a sibling ``.npy`` of one label per point
(``data.masks=regex:<find>=><replace>``). Label values (e.g. LAS classes 2, 5, 6) become class
indices in sorted order and are written back as the same values. Each token's dense target is the
labels of its group's K points; the head is ``tasks.PointSegHead`` on the group points. Predictions
are written per input file as ``<name>_labels.npy`` with one label per point *in the file's order*:
points seen in several groups take their majority vote, points no group holds take their nearest
labelled point's label.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from foundation.dense import DenseTaskError, mask_file
from modalities.pointcloud.dataset import PointCloudDataset, grouped_tokens
from modalities.pointcloud.preprocess import block_mask
from modalities.pointcloud.tasks import PointSegHead, propagate_labels
from foundation.tokens import SampleTokens


class PointDenseDataset(PointCloudDataset):
    """Point clouds whose samples carry per-point labels: ``dense`` [G, K] (the groups' points)."""

    def __init__(self, sources, config: dict, train: bool, on_error: str, rule: str | None, manifest: str | None) -> None:
        super().__init__(sources, config, train=train, on_error=on_error)
        self.rule, self.base = rule, (Path(manifest).parent if manifest else None)
        self.dense_classes: list[str] = []
        self._values: np.ndarray | None = None
        if rule:
            values = np.unique(np.concatenate([self.file_labels(src) for src, _, _ in self.items]))
            values = values[values >= 0]
            if len(values) < 2:
                raise DenseTaskError(f"{self.items[0][0].path}...: fewer than two point classes among the labels (data.masks={rule})")
            self._values = values
            self.dense_classes = [str(int(v)) for v in values]

    def file_labels(self, src) -> np.ndarray:
        """Every point's label value [N] in the file's order (-1: none)."""
        if self.rule == "file":
            cloud = self._load(src.path)
            if cloud.point_labels is None:
                raise DenseTaskError(f"{src.path}: the file carries no per-point labels (LAS classification, a label column, "
                                     "an .npz 'labels'); name a label file with data.masks=regex:<find>=><replace>")
            return np.asarray(cloud.point_labels, np.int64)
        path = mask_file(src.path, self.rule, getattr(src, "extra", None), self.base)
        labels = np.load(path, allow_pickle=False).astype(np.int64).reshape(-1)
        if len(labels) != len(self._load(src.path)):
            raise DenseTaskError(f"{path}: {len(labels)} labels for the {len(self._load(src.path))} points of {src.path}")
        return labels

    def file_index(self, index: int) -> np.ndarray:
        """Positions in the file of the points ``points()`` indexes (its block, finite points only)."""
        src, _, origin = self.items[index]
        cloud = self._load(src.path)
        idx = np.arange(len(cloud))
        if origin is not None:
            idx = idx[block_mask(cloud.xyz, origin, float(self.cfg["block_size"]), self.cfg["up_axis"])]
        finite = np.isfinite(cloud.xyz[idx]).all(1)
        return idx[finite] if not finite.all() and self.cfg.get("nonfinite", "error") == "drop" else idx

    def grouped(self, index: int, rng: torch.Generator | None) -> tuple[dict, np.ndarray] | None:
        """Tokens of sample ``index`` and the file position of each group point [G, K]."""
        src = self.items[index][0]
        got = self.inputs.load(src.path, self.points, index, rng, check=False)
        if got is None:
            return None
        xyz, feats, _, chosen = got
        aug = rng if (rng is not None and self.train) else None
        tokens, nbr = grouped_tokens(xyz, feats, int(self.cfg["groups"]), int(self.cfg["group_size"]), aug)
        return tokens, self.file_index(index)[chosen.numpy()][nbr.numpy()]

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens | None:
        src, lab, _ = self.items[index]
        got = self.grouped(index, rng)
        if got is None:
            return None
        tokens, where = got
        s = SampleTokens(**tokens, id=self.sample_id(index), path=src.path, label=lab)
        if self._values is not None:
            values = self.file_labels(src)[where]
            cls = np.searchsorted(self._values, values)
            known = (values >= 0) & (cls < len(self._values)) & (self._values[np.minimum(cls, len(self._values) - 1)] == values)
            s.dense = torch.from_numpy(np.where(known, cls, -1))
        return s


class PointDenseHead(nn.Module):
    """``PointSegHead`` on each group's points: absolute point positions (centre + offset) and their
    channels, features interpolated from the three nearest token centres. [B, G, K, classes]."""

    def __init__(self, encoder, classes: int) -> None:
        super().__init__()
        cfg = encoder.adapter.config
        self.k, self.channels = int(cfg["group_size"]), int(encoder.adapter.channels)
        self.head = PointSegHead(encoder.width, classes, point_channels=self.channels)

    def forward(self, enc, batch) -> Tensor:
        b, g, _ = batch.patches.shape
        pts = batch.patches.reshape(b, g, self.k, self.channels)
        xyz = pts[..., :3] + batch.coords.unsqueeze(2)
        feats = torch.cat([xyz, pts[..., 3:]], -1).reshape(b, g * self.k, self.channels)
        centres = batch.coords + batch.padding.unsqueeze(-1).to(batch.coords.dtype) * 1e4  # padding groups: never the nearest
        out = self.head(xyz.reshape(b, g * self.k, 3), feats.to(enc.tokens.dtype), centres, enc.tokens)
        return out.reshape(b, g, self.k, -1)


def write_point_files(dataset: PointDenseDataset, predictions, out_dir: str | Path, names: list[str]):
    """``<name>_labels.npy`` per input file: one label value per point in the file's order (see the
    module docstring). ``predictions`` yields (sample index, class indices [G, K]); the samples of one
    file (its blocks) come together."""
    out_dir = Path(out_dir)
    values = np.array([int(n) if n.lstrip("-").isdigit() else i for i, n in enumerate(names)], np.int64)
    state: dict = {"path": None, "votes": None, "indices": []}
    used: set[str] = set()

    def flush():
        path, votes = state["path"], state["votes"]
        cloud = dataset._load(path)
        seen = votes.sum(1) > 0
        labels = np.full(len(cloud), -1, np.int64)
        labels[seen] = values[votes[seen].argmax(1)]
        finite = np.isfinite(cloud.xyz).all(1)
        rest = ~seen & finite
        if rest.any() and seen.any():
            centre = cloud.xyz[seen].mean(0)  # kNN in float32 after centring (UTM coordinates)
            labels[rest] = propagate_labels(cloud.xyz[seen] - centre, labels[seen], cloud.xyz[rest] - centre)
        name = Path(path).name.split(".")[0] + "_labels"
        while name in used:
            name += "_"
        used.add(name)
        target = out_dir / f"{name}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, labels)
        return [(i, str(target)) for i in state["indices"]]

    for index, pred in predictions:
        path = dataset.items[index][0].path
        if path != state["path"]:
            if state["path"] is not None:
                yield from flush()
            state.update(path=path, votes=np.zeros((len(dataset._load(path)), len(names)), np.int32), indices=[])
        got = dataset.grouped(index, None)
        if got is None:
            continue
        np.add.at(state["votes"], (got[1].reshape(-1), np.asarray(pred).reshape(-1)), 1)
        state["indices"].append(index)
    if state["path"] is not None:
        yield from flush()
