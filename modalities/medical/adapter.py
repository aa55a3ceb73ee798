"""MedicalAdapter: CT/MRI volumes (NIfTI, DICOM series) for the core, through MONAI.

Everything that shapes what the encoder sees is in ``defaults`` and therefore in an exported model's
config: orientation, target spacing, intensity scaling, foreground crop, patch size, crop size.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from foundation.tokens import PatchBatch
from foundation.recipes import RecipeError
from modalities.base import Adapter, TokenDataset
from modalities.medical.dataset import MedicalDataset
from modalities.medical.synthetic import write_cohort
from modalities.medical.tokenizer import ConvPatchEmbed3d, PatchEmbed3d


class MedicalAdapter(Adapter):
    name = "medical"
    position_kind = "sincos"
    default_masking: ClassVar[dict[str, Any]] = {"kind": "block", "ratio": 0.75, "blocks": 4}
    # "maxmin" from the sliding-window feature model (``embed.embed_volume``), which lacks
    # "mid_meanstd"; a crop view (``eval_roi``) goes through the encoder and has it
    probe_poolings: ClassVar[tuple[str, ...]] = ("meanstd", "mid_meanstd", "max", "maxmin")
    defaults: ClassVar[dict[str, Any]] = {
        # tokens
        "patch": [16, 16, 16],  # voxels per patch along (R, A, S) after resampling; e.g. [16, 16, 4] for thick-slice MR
        "channels": 1,  # image plus extra sequences (channel_columns)
        "position_unit_mm": 16.0,
        "tokenizer": "linear",
        "target_pool": 1,
        "target_norm": "patch",
        "view_intensity": [0.8, 1.25],  # contrastive views: per-view random gain and gamma drawn in this range  # MAE target standardised per "patch" (norm_pix) or over the whole "sample"  # MAE target: the patch average-pooled by this factor per axis, then per-patch normalised  # "linear" patch embedding or "conv" (a small Conv3d stem inside each patch)  # token coordinates are patch centres in units of this many millimetres
        # geometry
        "orientation": "RAS",
        "spacing": [1.5, 1.5, 1.5],  # target voxel spacing in mm; null keeps each file's own
        "interpolation": "bilinear",
        "spacing_tolerance": 0.1,  # DICOM: relative slice-gap deviation that counts as a missing slice
        # intensity
        "intensity": "mr",  # "ct": HU window; "mr": per-volume percentiles; "none"
        "ct_window": [-1000.0, 1000.0],
        "mr_percentiles": [1.0, 99.0],
        "crop_foreground": True,
        "foreground_threshold": 0.0,  # on the scaled intensities (0..1)
        "foreground_margin": 4,
        # samples
        "roi": [96, 96, 96],  # pretraining crop size (voxels)
        "crops_per_volume": 4,
        "eval_roi": None,  # evaluation view: null = whole volume, else a central crop of this size
        "sw_roi": [96, 96, 96],  # sliding-window size for whole-volume embedding
        "sw_overlap": 0.25,
        # data layout
        "channel_columns": [],  # manifest columns holding extra sequences (stacked as channels)
        "seg_column": "seg",
        "patient_column": "patient",
        # caching of the deterministic preprocessing
        "cache": "disk",  # "disk" (safetensors + JSON, no pickles), "memory" (CacheDataset) or "none"
        "cache_dir": None,  # default $DOMAINFM_CACHE or ~/.cache/domainfm
    }

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        c = self.config
        for key in ("patch", "roi", "sw_roi"):
            if len(c[key]) != 3 or min(c[key]) < 1:
                raise RecipeError(f"adapter.{key} must be three positive sizes, got {c[key]}")
        if c["spacing"] is not None and (len(c["spacing"]) != 3 or min(c["spacing"]) <= 0):
            raise RecipeError(f"adapter.spacing must be three positive millimetre values or null, got {c['spacing']}")
        if int(c["target_pool"]) < 1 or any(p % min(int(c["target_pool"]), p) for p in c["patch"]):
            raise RecipeError(f"adapter.target_pool {c['target_pool']} must be >= 1 and divide the patch {c['patch']}")
        if c["target_norm"] not in ("patch", "sample"):
            raise RecipeError(f"adapter.target_norm must be 'patch' or 'sample', got {c['target_norm']!r}")
        if c["tokenizer"] not in ("linear", "conv"):
            raise RecipeError(f"adapter.tokenizer must be 'linear' or 'conv', got {c['tokenizer']!r}")
        for key in ("roi", "sw_roi"):
            if any(r % p for r, p in zip(c[key], c["patch"])):
                raise RecipeError(f"adapter.{key} {c[key]} must be a multiple of patch {c['patch']} (adapter.patch)")

    @property
    def patch_dim(self) -> int:
        return int(self.config["channels"]) * math.prod(self.config["patch"])

    @property
    def target_dim(self) -> int:
        pool = [min(int(self.config["target_pool"]), int(p)) for p in self.config["patch"]]
        return int(self.config["channels"]) * math.prod(p // k for p, k in zip(self.config["patch"], pool))

    @property
    def coord_dims(self) -> int:
        return 3

    def dataset(self, data: dict, train: bool) -> TokenDataset:
        return MedicalDataset(self.config, data, train=train)

    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        return write_cohort(out_dir, n, seed, spacing=tuple(self.config["spacing"] or (1.5, 1.5, 1.5)))

    def view_augment(self, batch: PatchBatch, generator: torch.Generator | None) -> PatchBatch:
        """A per-view intensity change, on the device: gain and gamma (x -> gain * x^gamma, on the
        [0, 1]-scaled intensities), each drawn per sample from ``view_intensity``. Two views of one
        scan then differ in brightness and contrast, so a contrastive objective cannot match them by
        scanner cues (gain, window) and must match them by anatomy."""
        lo, hi = (float(v) for v in self.config["view_intensity"])
        b, dev = batch.patches.shape[0], batch.patches.device
        draw = lambda: (lo + (hi - lo) * torch.rand(b, 1, 1, generator=generator, device=dev)).to(batch.patches.dtype)  # noqa: E731
        gain, gamma = draw(), draw()
        return dataclasses.replace(batch, patches=gain * batch.patches.clamp(min=0) ** gamma)

    def feature_model(self, encoder: nn.Module, dataset: MedicalDataset) -> nn.Module:
        """Whole studies by sliding windows (``embed.py``), so a probe reads the same features as
        ``embed_studies`` and the few-label benchmark; a crop view (training crops or ``eval_roi``)
        is already window-sized and goes through the encoder itself."""
        from modalities.medical.embed import SlidingWindowEncoder

        if dataset.train or self.config.get("eval_roi"):
            return encoder
        return SlidingWindowEncoder(encoder, dataset)

    # -- dense task: voxel segmentation (modalities/medical/tasks.py) -----------------------------
    def dense_dataset(self, data: dict, train: bool) -> TokenDataset:
        from modalities.medical.tasks import dense_dataset

        return dense_dataset(self.config, data, train)

    def dense_head(self, encoder: nn.Module, classes: int) -> nn.Module:
        from modalities.medical.tasks import UNETRHead

        return UNETRHead(encoder, classes)

    def dense_logits(self, outputs, dataset, index: int, batch_size: int = 4):
        """Whole volumes by sliding ``sw_roi`` windows with Gaussian blending (``tasks.window_logits``),
        never the whole volume through the encoder at once."""
        from modalities.medical.tasks import window_logits

        return window_logits(outputs, dataset, index, batch_size)

    def write_dense(self, dataset, predictions, out_dir, names):
        from modalities.medical.tasks import write_volume_maps

        return write_volume_maps(dataset, predictions, out_dir)

    def make_tokenizer(self, width: int) -> nn.Module:
        patch = tuple(self.config["patch"])
        if self.config["tokenizer"] == "conv":
            return ConvPatchEmbed3d(int(self.config["channels"]), width, patch)
        return PatchEmbed3d(self.patch_dim, width, patch)
