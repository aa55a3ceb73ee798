"""Restoration pretraining of a whole segmentation network (encoder and UNETR decoder) on unlabelled volumes:
the third segmentation arm of ``benchmarks/medical_fewlabel.py --restoration-steps`` (an experiment, not a
product path: on the synthetic cohort it does not beat training from scratch, modalities/medical/README.md).

Why: with a handful of labelled volumes, the part of a UNETR that limits the Dice is the decoder, which
fine-tuning otherwise starts from noise. An encoder trained *supervised* for the very task and carried
over alone ties with training from scratch (``benchmarks/results/medical_fewlabel-pilots.txt``), so no
encoder objective can help there by itself. Models Genesis (Zhou et al. 2021) and disruptive
autoencoders (Valanarasu et al. 2023) pretrain the decoder too, by restoring corrupted scans; this is that
idea on our windows: cubes of a window are blanked (so the network must inpaint them from context, through
the encoder) and Gaussian noise is added (so the full-resolution stem learns to denoise, which the
faint, low-contrast structures need). Fine-tuning then replaces only the 1x1x1 output head.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from modalities.medical.dataset import MedicalDataset
from modalities.medical.tasks import SegmentationModel, train_on_windows


def corrupt(image: Tensor, rng: torch.Generator, mask_ratio: float, cube: int, noise: float) -> Tensor:
    """``image`` [B, C, *S] with noise (``noise`` x each window's std) and a ``mask_ratio`` share of
    ``cube``-sized cubes set to zero."""
    b, _, *size = image.shape
    keep = (torch.rand(b, 1, *[max(1, s // cube) for s in size], generator=rng) >= mask_ratio).to(image.dtype)
    keep = F.interpolate(keep, size=size, mode="nearest")
    scale = image.flatten(1).std(1).view(b, *[1] * (image.dim() - 1))
    return (image + noise * scale * torch.randn(image.shape, generator=rng)) * keep


def restoration_pretrain(model: SegmentationModel, dataset: MedicalDataset, steps: int, lr: float = 1e-3,
                         mask_ratio: float = 0.5, cube: int = 8, noise: float = 0.1, batch_volumes: int = 2,
                         seed: int = 0, progress: bool = False) -> list[float]:
    """Train ``model`` (built with ``classes`` = the image channels) to restore corrupted windows of
    ``dataset`` (no labels read); the loss is the voxel MSE inside the scan over each window's
    variance, so bright and dark scans weigh alike. Returns the loss curve."""
    channels = int(model.cfg["channels"])
    if model.classes != channels:
        raise ValueError(f"restoration needs a model with classes={channels} (one output per image channel)")

    def restoration_error(x: Tensor, _: Tensor | None, spacing: Tensor, rng: torch.Generator) -> Tensor:
        clean, valid = x[:, :channels], x[:, channels:]
        out = model(torch.cat([corrupt(clean, rng, mask_ratio, cube, noise), valid], 1), spacing)
        var = clean.flatten(1).var(1).mean().clamp_min(1e-8)
        return ((out - clean) ** 2 * valid).sum() / (valid.sum() * channels).clamp_min(1) / var

    return train_on_windows(model, dataset, list(range(len(dataset.items))), steps, restoration_error, lr, 1.0, batch_volumes,
                            seed, progress, desc="restoration")


def with_new_head(pretrained: SegmentationModel, classes: int) -> SegmentationModel:
    """A segmentation model for ``classes`` whose encoder and decoder start from ``pretrained`` (a
    copy; the restoration model is left as it is) and whose 1x1x1 output head is fresh."""
    model = SegmentationModel(copy.deepcopy(pretrained.encoder), classes, pretrained.features)
    state = {k: v for k, v in pretrained.decoder.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.decoder.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    return model
