"""The medical tokenizers, conditioned on the physical patch size. Both are token-local.

- ``linear``: a linear map of a flattened C x p1 x p2 x p3 patch, exactly a Conv3d with kernel =
  stride = patch (what ViT/UNETR use), run on only the visible patches the core hands over.
- ``conv``: a small convolutional stem *inside each patch* (two 3^3 convolutions of stride 2 with
  GELU, then a linear map), as in "Early convolutions help transformers see better" (Xiao et al.
  2021). It sees edges and blob/bar shapes within the patch that a single linear map of noisy voxels
  does not; it never looks across patch borders, so it stays token-local.

Because one model serves scans of different resolution, the tokenizer also embeds the patch's extent
in millimetres (log of patch size x voxel spacing): token-local, it depends only on the patch and its
metadata.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from foundation.grid import patch_conv_stem


class _Extent(nn.Module):
    """Adds an embedding of the patch's physical extent (starts at zero: a plain patch embedding)."""

    def __init__(self, width: int, patch: tuple[int, int, int]) -> None:
        super().__init__()
        self.extent = nn.Linear(3, width)
        self.register_buffer("patch", torch.tensor(patch, dtype=torch.float32), persistent=False)
        nn.init.zeros_(self.extent.weight)
        nn.init.zeros_(self.extent.bias)

    def add_extent(self, x: Tensor, meta: dict[str, Tensor]) -> Tensor:
        spacing = meta.get("spacing")
        if spacing is not None:
            mm = (spacing.to(x.device, torch.float32) * self.patch).log()  # [B, 3]
            x = x + self.extent(mm.to(x.dtype)).unsqueeze(1)
        return x


class PatchEmbed3d(_Extent):
    def __init__(self, patch_dim: int, width: int, patch: tuple[int, int, int]) -> None:
        super().__init__(width, patch)
        self.proj = nn.Linear(patch_dim, width)

    def forward(self, patches: Tensor, meta: dict[str, Tensor]) -> Tensor:
        return self.add_extent(self.proj(patches.to(self.proj.weight.dtype)), meta)


class ConvPatchEmbed3d(_Extent):
    """Two 3^3 convolutions (stride 2 along axes of at least 4 voxels) + GELU inside each patch, then linear."""

    def __init__(self, channels: int, width: int, patch: tuple[int, int, int], features: tuple[int, int] = (16, 32)) -> None:
        super().__init__(width, patch)
        self.channels, self.shape = channels, tuple(int(p) for p in patch)
        layers, flat = patch_conv_stem(channels, features, self.shape)
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Linear(flat, width)
        # unit-scale tokens: without it the stem's small outputs are drowned by the positional embedding
        self.norm = nn.LayerNorm(width)

    def forward(self, patches: Tensor, meta: dict[str, Tensor]) -> Tensor:
        b, m, _ = patches.shape
        x = patches.to(self.proj.weight.dtype).reshape(b * m, self.channels, *self.shape)
        x = self.stem(x).flatten(1)
        return self.add_extent(self.norm(self.proj(x)).reshape(b, m, -1), meta)
