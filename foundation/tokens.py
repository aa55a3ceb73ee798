"""The token contract between adapters and the core.

Adapters turn one sample into :class:`SampleTokens` inside DataLoader workers (plain tensors,
no learnable parts), and :func:`collate` pads a list of them into one :class:`PatchBatch`.
Everything the core does afterwards (masking, tokenizing, encoding) sees only this batch, so the
core never needs to know which modality it is serving.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class SampleTokens:
    """One sample cut into tokens, as an adapter's ``to_patches`` returns it.

    ``padding`` marks tokens that are wholly invalid (nodata, silence past the end): the core
    treats them exactly like batch padding. ``meta`` holds tensors the tokenizer conditions on
    (they must have the same shape for every sample of one dataset so they stack).
    """

    patches: Tensor  # [N, P]
    coords: Tensor  # [N, C]
    targets: Tensor  # [N, T]
    target_valid: Tensor  # [N, T] bool
    padding: Tensor | None = None  # [N] bool
    meta: dict[str, Tensor] = field(default_factory=dict)
    attn_bias: Tensor | None = None  # [N, N]
    id: str = ""
    path: str = ""
    label: int | float | None = None
    # dense targets of a dense task (``foundation.dense``): [N, D] integer labels of the D elements each
    # token covers (voxels of a patch, pixels, points of a group, a node), -1 where an element has none
    dense: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.patches.shape[0]
        if n == 0:
            raise ValueError(f"sample {self.id or self.path!r} has no tokens")
        for name in ("coords", "targets", "target_valid") + (("dense",) if self.dense is not None else ()):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"sample {self.id!r}: {name} has {getattr(self, name).shape[0]} rows, patches have {n}")
        if self.padding is None:
            self.padding = torch.zeros(n, dtype=torch.bool)


@dataclass
class PatchBatch:
    """A padded batch of samples; see DESIGN.md "The contract between adapters and core"."""

    patches: Tensor  # [B, N, P]
    coords: Tensor  # [B, N, C]
    padding: Tensor  # [B, N] True = padding / wholly invalid
    targets: Tensor  # [B, N, T]
    target_valid: Tensor  # [B, N, T]
    meta: dict[str, Tensor]
    ids: list[str]
    paths: list[str] = field(default_factory=list)
    attn_bias: Tensor | None = None  # [B, N, N]
    labels: Tensor | None = None  # [B]
    dense: Tensor | None = None  # [B, N, D] dense targets, -1 past each sample's end (``SampleTokens.dense``)
    # the padding tensor that :func:`collate` found all False (None: not known). Kept as the tensor
    # itself, not a bool, so a batch rebuilt with new padding (``dataclasses.replace``, views,
    # augmentations) is never mistaken for an unpadded one.
    unpadded: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return self.patches.shape[0]

    @property
    def has_padding(self) -> bool:
        """False only when the collate saw no padding in this very ``padding`` tensor; known without
        looking at the tensor, so checking it on a GPU costs no host sync."""
        return self.unpadded is not self.padding

    def _map(self, fn) -> "PatchBatch":
        def apply(x: Any) -> Any:
            if isinstance(x, Tensor):
                return fn(x)
            if isinstance(x, dict):
                return {k: apply(v) for k, v in x.items()}
            return x

        out = replace(self, **{f.name: apply(getattr(self, f.name)) for f in fields(self) if f.name != "unpadded"}, unpadded=None)
        if not self.has_padding:
            out.unpadded = out.padding
        return out

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PatchBatch":
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PatchBatch":
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        return self._map(lambda x: x.pin_memory())


def _pad_stack(rows: list[Tensor], length: int, value: float | bool) -> Tensor:
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), value)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def collate(samples: list[SampleTokens]) -> PatchBatch:
    """Pad samples of different token counts into one batch (padding=True past each sample's end).

    ``None`` items are samples skipped at load time under ``data.on_error=skip`` (see
    ``foundation.inputs``): they are left out, never replaced by another sample.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError("cannot collate an empty list of samples (under data.on_error=skip: every sample of this batch "
                         "failed to load; run `domainfm validate` on the data)")
    n = max(s.patches.shape[0] for s in samples)
    bias = None
    if any(s.attn_bias is not None for s in samples):
        bias = torch.zeros(len(samples), n, n, dtype=samples[0].attn_bias.dtype)
        for i, s in enumerate(samples):
            m = s.patches.shape[0]
            bias[i, :m, :m] = s.attn_bias
    meta: dict[str, Tensor] = {}
    for key in samples[0].meta:
        values = [torch.as_tensor(s.meta[key]) for s in samples]
        try:
            meta[key] = torch.stack(values)
        except RuntimeError as err:
            raise ValueError(f"meta[{key!r}] differs in shape between samples {[s.id for s in samples]}") from err
    labels = None
    if all(s.label is not None for s in samples):
        labels = torch.tensor([s.label for s in samples])
    padding = _pad_stack([s.padding for s in samples], n, True)
    dense = _pad_stack([s.dense.long() for s in samples], n, -1) if all(s.dense is not None for s in samples) else None
    return PatchBatch(
        patches=_pad_stack([s.patches.float() for s in samples], n, 0.0),
        coords=_pad_stack([s.coords.float() for s in samples], n, 0.0),
        padding=padding,
        targets=_pad_stack([s.targets.float() for s in samples], n, 0.0),
        target_valid=_pad_stack([s.target_valid.bool() for s in samples], n, False),
        meta=meta,
        ids=[s.id for s in samples],
        paths=[s.path for s in samples],
        attn_bias=bias,
        labels=labels,
        dense=dense,
        unpadded=None if padding.any() else padding,
    )


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Gather rows ``index`` [B, M] from ``x`` [B, N, ...] along the token axis."""
    shape = index.shape + x.shape[2:]
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, idx)


def gather_bias(bias: Tensor, index: Tensor) -> Tensor:
    """Gather a pairwise structure [B, N, N] to the kept tokens [B, M] -> [B, M, M]."""
    rows = gather_tokens(bias, index)  # [B, M, N]
    return torch.gather(rows, 2, index.unsqueeze(1).expand(-1, index.shape[1], -1))
