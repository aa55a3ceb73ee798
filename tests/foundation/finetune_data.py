"""Small in-memory labelled datasets for the fine-tuning tests (tokens built once, no file reads per step).

``InteractionTokens``: the class needs two tokens compared (modalities.grid.synthetic.interaction_image),
so a frozen random encoder's pooled features sit near chance. ``FactorTokens``: the labels live in simple
per-token statistics (a mean shift, an amplitude), so every method, frozen ones included, can learn them.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from modalities.base import TokenDataset
from modalities.grid.adapter import GridAdapter
from modalities.grid.synthetic import interaction_image


def grid_adapter() -> GridAdapter:
    return GridAdapter({"patch": [2, 2], "flip": False})


class MemoryTokens(TokenDataset):
    def __init__(self, adapter: GridAdapter, images: list[np.ndarray], names: list[str]) -> None:
        self.classes = sorted(set(names))
        self.y = [self.classes.index(n) for n in names]
        self.items = [adapter.to_patches(torch.from_numpy(img), id=f"s{i:04d}", path=f"mem/s{i:04d}", label=y)
                      for i, (img, y) in enumerate(zip(images, self.y))]

    def __len__(self) -> int:
        return len(self.items)

    def label(self, index: int) -> int:
        return self.y[index]

    def sample(self, index: int, rng) -> object:
        return copy.copy(self.items[index])


def interaction_tokens(n: int, seed: int = 0) -> MemoryTokens:
    rng = np.random.default_rng(seed)
    names = [("differ", "same")[i % 2] for i in range(n)]
    return MemoryTokens(grid_adapter(), [interaction_image(rng, name == "same") for name in names], names)


def factor_tokens(n: int, task: str, seed: int = 0) -> MemoryTokens:
    """4x8 images (8 tokens of 2x2). classification: 3 classes by mean level (-1, 0, +1);
    multilabel: 'bright' (mean +0.8) and 'wide' (amplitude x3), independent; regression: the mean level."""
    rng = np.random.default_rng(seed)
    images, names = [], []
    for i in range(n):
        noise = rng.normal(0, 1, (1, 4, 8)).astype(np.float32)
        if task == "classification":
            c = i % 3
            images.append(noise * 0.5 + (c - 1))
            names.append(f"level{c}")
        elif task == "multilabel":
            bright, wide = i % 2, (i // 2) % 2
            images.append(noise * (1.5 if wide else 0.5) + 0.8 * bright)
            names.append(";".join([n for n, on in (("bright", bright), ("wide", wide)) if on]))
        else:
            level = rng.uniform(-1, 1)
            images.append(noise * 0.5 + level)
            names.append(f"{level:.4f}")
    return MemoryTokens(grid_adapter(), images, names)
