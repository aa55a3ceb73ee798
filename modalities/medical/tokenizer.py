"""The medical tokenizer: a linear 3-d patch embedding conditioned on the physical patch size.

A linear map of a flattened C x p1 x p2 x p3 patch is exactly a Conv3d with kernel = stride = patch
(what ViT/UNETR use), but runs on only the visible patches the core hands over. Because one model
serves scans of different resolution, the tokenizer also embeds the patch's extent in millimetres
(log of patch size x voxel spacing): token-local, it depends only on the patch and its metadata.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbed3d(nn.Module):
    def __init__(self, patch_dim: int, width: int, patch: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, width)
        self.extent = nn.Linear(3, width)
        self.register_buffer("patch", torch.tensor(patch, dtype=torch.float32), persistent=False)
        nn.init.zeros_(self.extent.weight)  # starts as a plain patch embedding; learns to use spacing
        nn.init.zeros_(self.extent.bias)

    def forward(self, patches: Tensor, meta: dict[str, Tensor]) -> Tensor:
        x = self.proj(patches.to(self.proj.weight.dtype))
        spacing = meta.get("spacing")
        if spacing is not None:
            mm = (spacing.to(x.device, torch.float32) * self.patch).log()  # [B, 3]
            x = x + self.extent(mm.to(x.dtype)).unsqueeze(1)
        return x
