"""The speech tokenizer: a linear embedding of each (time x mel) patch, nothing else.

Token-local by construction (one matrix applied to each patch on its own); positions come from the
(time, frequency) coordinates through the core's sin-cos module, so the tokenizer needs no meta.
"""
from __future__ import annotations

from torch import Tensor, nn


class SpectrogramPatchEmbed(nn.Module):
    def __init__(self, patch_dim: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, width)

    def forward(self, patches: Tensor, meta: dict[str, Tensor] | None = None) -> Tensor:
        return self.proj(patches.to(self.proj.weight.dtype))
