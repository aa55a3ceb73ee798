"""The preprocessing pipeline, built from the adapter config out of MONAI dictionary transforms.

Two parts: a deterministic part (read, channel-first, RAS, resample, intensity scaling, foreground
crop) whose output is cached, and a random part (several 3-d crops per volume) drawn per sample from
a seeded generator. NaN voxels are kept out of every statistic: they are zeroed and tracked in a
``valid`` mask that follows the image through every spatial transform (nearest interpolation).
"""
from __future__ import annotations

from typing import Any

import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandSpatialCropSamplesd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)

from modalities.medical.io import MedicalInputError, SeriesReader

IMAGE, VALID, SEG = "image", "valid", "seg"


class SplitInvalid(MapTransform):
    """Zero non-finite voxels and record where they were in ``valid`` (all-NaN volumes are refused)."""

    def __init__(self, keys: str = IMAGE) -> None:
        super().__init__(keys)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        img = d[IMAGE]
        ok = torch.isfinite(torch.as_tensor(img)).all(0, keepdim=True)
        if not bool(ok.any()):
            raise MedicalInputError(f"{d.get('source', '?')}: every voxel is NaN or infinite")
        clean = torch.as_tensor(img).nan_to_num(0.0, posinf=0.0, neginf=0.0)  # MetaTensor in, MetaTensor out
        d[IMAGE] = clean
        d[VALID] = clean[:1] * 0 + ok.to(clean.dtype)  # same affine as the image
        return d


class Check3d(MapTransform):
    """Refuse 2-d images (a single slice) where a 3-d volume is expected, and a file holding several channels
    (a 4-d NIfTI), naming the file: each file is one channel, extra channels come from manifest columns
    (``adapter.channel_columns``), so a multi-channel file would otherwise be cut into the wrong patches."""

    def __call__(self, data: dict) -> dict:
        for key in self.key_iterator(data):
            shape = tuple(data[key].shape)
            if len(shape) != 4 or min(shape[1:]) < 2:
                raise MedicalInputError(f"{data.get('source', '?')}: {key} of shape {shape[1:]} is not a 3-d volume")
            if shape[0] != 1:
                raise MedicalInputError(f"{data.get('source', '?')}: {key} holds {shape[0]} channels, and each file is one channel "
                                        f"here; give each channel its own file as a manifest column (adapter.channels, "
                                        f"adapter.channel_columns)")
        return data


class Above:
    """Foreground selector for CropForegroundd (a class, not a lambda, so it pickles into workers)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, x):
        return x > self.threshold


def image_keys(channels: int) -> list[str]:
    return [IMAGE] + [f"{IMAGE}{i}" for i in range(1, channels)]


def deterministic_transforms(cfg: dict[str, Any], with_seg: bool = False, pad_to: list[int] | None = None) -> Compose:
    """Read -> channel-first -> (stack extra sequences) -> RAS -> spacing -> intensity -> foreground crop."""
    imgs = image_keys(int(cfg["channels"]))
    load = imgs + ([SEG] if with_seg else [])
    # registered last, so LoadImaged asks it first; it claims only DICOM, NIfTI falls to NibabelReader
    reader = SeriesReader(spacing_tolerance=float(cfg["spacing_tolerance"]), swap_ij=True)
    loader = LoadImaged(keys=load, image_only=True)  # auto-selects a reader by suffix, errors propagate
    loader.register(reader)
    t: list = [loader, EnsureChannelFirstd(keys=load), Check3d(keys=load)]
    if len(imgs) > 1:
        t.append(ConcatItemsd(keys=imgs, name=IMAGE, dim=0))
    t.append(SplitInvalid())
    spatial = [IMAGE, VALID] + ([SEG] if with_seg else [])
    if cfg["orientation"]:
        t.append(Orientationd(keys=spatial, axcodes=cfg["orientation"], labels=None))
    if cfg["spacing"]:
        modes = [cfg["interpolation"], "nearest"] + (["nearest"] if with_seg else [])
        t.append(Spacingd(keys=spatial, pixdim=cfg["spacing"], mode=modes, padding_mode="zeros"))
    if cfg["intensity"] == "ct":
        lo, hi = cfg["ct_window"]
        t.append(ScaleIntensityRanged(keys=IMAGE, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    elif cfg["intensity"] == "mr":
        lo, hi = cfg["mr_percentiles"]
        t.append(ScaleIntensityRangePercentilesd(keys=IMAGE, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, channel_wise=True))
    elif cfg["intensity"] != "none":
        raise ValueError(f"medical adapter: intensity must be 'ct', 'mr' or 'none', not {cfg['intensity']!r}")
    if cfg["crop_foreground"]:
        t.append(CropForegroundd(keys=spatial, source_key=IMAGE, select_fn=Above(cfg["foreground_threshold"]),
                                 margin=int(cfg["foreground_margin"]), allow_smaller=True))
    if pad_to:
        t.append(SpatialPadd(keys=spatial, spatial_size=pad_to))
    t.append(EnsureTyped(keys=spatial, dtype=None, track_meta=True))
    return Compose(t)


def random_crops(cfg: dict[str, Any], with_seg: bool = False) -> RandSpatialCropSamplesd:
    """Several random ``roi`` crops per volume (seeded by the caller via ``set_random_state``)."""
    keys = [IMAGE, VALID] + ([SEG] if with_seg else [])
    return RandSpatialCropSamplesd(keys=keys, roi_size=cfg["roi"], num_samples=int(cfg["crops_per_volume"]), random_size=False)


def center_crop(roi: list[int], with_seg: bool = False) -> CenterSpatialCropd:
    keys = [IMAGE, VALID] + ([SEG] if with_seg else [])
    return CenterSpatialCropd(keys=keys, roi_size=roi)
