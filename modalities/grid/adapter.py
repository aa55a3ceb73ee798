"""The generic grid adapter: any ``.npy`` array [C, *S] (or [*S] for one channel).

It is the smallest complete adapter and the reference for the modality ones: it reads files,
normalises with statistics fitted on the training data, augments with a per-sample generator,
patchifies through the shared grid toolkit and embeds patches with one linear layer (equivalent to
a strided convolution). The core's demo and tests run on it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from foundation.grid import normalized_targets, patchify
from foundation.sources import Source, class_index, find_sources
from foundation.tokens import SampleTokens
from foundation.errors import DataError
from modalities.base import Adapter, TokenDataset
from modalities.grid.synthetic import write_texture_dataset


class GridPatchEmbed(nn.Module):
    """Linear embedding of one flattened patch: token-local by construction."""

    def __init__(self, patch_dim: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, width)

    def forward(self, patches: Tensor, meta: dict) -> Tensor:
        return self.proj(patches.to(self.proj.weight.dtype))


class GridDataset(TokenDataset):
    def __init__(self, adapter: "GridAdapter", sources: list[Source], train: bool) -> None:
        self.adapter, self.sources, self.train = adapter, sources, train
        labels, self.classes = class_index([s.label for s in sources])
        self.labels = labels

    def __len__(self) -> int:
        return len(self.sources)

    def label(self, index: int) -> int | None:
        return None if self.labels is None else self.labels[index]

    def read(self, index: int) -> Tensor:
        path = self.sources[index].path
        try:
            x = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except Exception as err:  # noqa: BLE001 - any reader failure is reported with the file
            raise DataError(path, f"cannot read as a .npy array ({err})", "save each sample with numpy.save, or remove the file") from err
        dims = len(self.adapter.config["patch"])
        if x.dim() == dims:
            x = x.unsqueeze(0)
        if x.dim() != dims + 1 or x.shape[0] != self.adapter.config["channels"]:
            raise DataError(path, f"shape {tuple(x.shape)} is not [{self.adapter.config['channels']} channels, {dims} axes]", "set adapter.channels to the files' channel count")
        return x

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens:
        x = self.adapter.normalize(self.read(index))
        if rng is not None and self.train:
            x = self.adapter.augment(x, rng)
        return self.adapter.to_patches(x, id=Path(self.sources[index].path).name, path=self.sources[index].path, label=self.label(index))


class GridAdapter(Adapter):
    name = "grid"
    defaults = {
        "channels": 1,
        "patch": [4, 4],
        "mean": None,  # per-channel statistics, fitted on the training data
        "std": None,
        "flip": True,  # random flips along every axis in training
    }
    position_kind = "sincos"
    default_masking = {"kind": "random", "ratio": 0.6}

    @property
    def patch_dim(self) -> int:
        return self.config["channels"] * math.prod(self.config["patch"])

    @property
    def coord_dims(self) -> int:
        return len(self.config["patch"])

    def dataset(self, data: dict, train: bool) -> GridDataset:
        return GridDataset(self, find_sources(data.get("root"), data.get("manifest"), data.get("labels"), extensions=(".npy",)), train)

    def fit(self, dataset: TokenDataset, max_samples: int = 512) -> None:
        """Per-channel mean/std streamed over (up to ``max_samples``) training arrays."""
        c = self.config["channels"]
        total, sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0.0
        for i in range(min(len(dataset), max_samples)):
            x = dataset.read(i).double().reshape(c, -1)
            total += x.sum(1)
            sq += (x**2).sum(1)
            count += x.shape[1]
        mean = total / count
        self.config["mean"] = mean.tolist()
        self.config["std"] = ((sq / count - mean**2).clamp(min=1e-12).sqrt()).tolist()

    def normalize(self, x: Tensor) -> Tensor:
        if self.config["mean"] is None:
            return x
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - torch.tensor(self.config["mean"]).view(shape)) / torch.tensor(self.config["std"]).view(shape)

    def augment(self, x: Tensor, rng: torch.Generator) -> Tensor:
        if self.config["flip"]:
            for axis in range(1, x.dim()):
                if torch.rand((), generator=rng) < 0.5:
                    x = x.flip(axis)
        return x

    def to_patches(self, x: Tensor, id: str = "", path: str = "", label: int | None = None) -> SampleTokens:
        g = patchify(x, self.config["patch"])
        return SampleTokens(
            patches=g.patches,
            coords=g.coords,
            targets=normalized_targets(g.patches, g.valid, channels=self.config["channels"]),
            target_valid=g.valid,
            padding=g.token_padding,
            id=id,
            path=path,
            label=label,
        )

    def make_tokenizer(self, width: int) -> nn.Module:
        return GridPatchEmbed(self.patch_dim, width)

    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        write_texture_dataset(Path(out_dir), n, seed, size=32)
        return {"root": str(out_dir), "labels": "folder"}
