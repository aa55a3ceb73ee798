"""benchmarks/medical_restoration.py (the restoration arm of benchmarks/medical_fewlabel.py): it learns from
unlabelled volumes and hands its decoder to segmentation. Not part of the default suite:
``python -m pytest benchmarks/tests``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.medical_restoration import corrupt, restoration_pretrain, with_new_head
from foundation.model import Encoder
from modalities.medical.adapter import MedicalAdapter
from modalities.medical.dataset import MedicalDataset
from modalities.medical.synthetic import write_cohort
from modalities.medical.tasks import SegmentationModel

TINY = {"width": 32, "depth": 2, "heads": 2}


def test_restoration_pretraining_learns_without_labels_and_hands_its_decoder_to_segmentation(tmp_path):
    """Unlabelled volumes only (no segmentation read); the fine-tuning model starts from the restored
    network, all but its output head, and the restoration model is left as it was."""
    data = write_cohort(tmp_path, 6, seed=3, size=(32, 32, 32))
    cfg = MedicalAdapter({"patch": [8, 8, 8], "roi": [32, 32, 32], "sw_roi": [32, 32, 32], "cache": "memory",
                          "crops_per_volume": 2}).config
    ds = MedicalDataset(cfg, {**data, "labels": None}, train=True)  # with_seg=False: no masks loaded
    torch.manual_seed(0)
    model = SegmentationModel(Encoder.build(MedicalAdapter(cfg), TINY), classes=1, features=4)
    with pytest.raises(ValueError, match="classes=1"):
        restoration_pretrain(SegmentationModel(model.encoder, classes=4, features=4), ds, steps=1)
    losses = restoration_pretrain(model, ds, steps=16, lr=3e-3, batch_volumes=1)
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    seg = with_new_head(model, classes=4)
    assert seg.decoder.head.conv.conv.out_channels == 4
    for k, v in model.decoder.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(seg.decoder.state_dict()[k], v), k
    assert all(torch.equal(a, b) for a, b in zip(seg.encoder.state_dict().values(), model.encoder.state_dict().values()))
    seg.encoder.trunk.norm.weight.data.add_(1.0)  # a copy: the restoration model does not move with it
    assert not torch.equal(seg.encoder.trunk.norm.weight, model.encoder.trunk.norm.weight)
    # corruption: about mask_ratio of the cubes blanked, the rest noisy around the image
    x = torch.rand(2, 1, 32, 32, 32) + 1.0
    y = corrupt(x, torch.Generator().manual_seed(0), mask_ratio=0.5, cube=8, noise=0.1)
    blank = (y == 0).float().mean()
    assert 0.2 < blank < 0.8 and (y[y != 0] - x[y != 0]).abs().mean() < 0.1
