"""Reduced check of the few-label benchmark's ceiling (benchmarks/medical_fewlabel.py): the synthetic
cohort's class (lesion spread) is learnable by the from-scratch model of the benchmark's size and
tokenizer when it has enough labels, while intensity statistics do not see it. This guards the
task itself: the previous cohort and a tokenizer without its LayerNorm left even this at chance.

The part of the few-label claim that holds (the probe beats random init) is asserted, reduced, in
test_med_fewlabel_reduced.py; beating from scratch does not hold (modalities/medical/README.md).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.model import Encoder
from modalities.medical.adapter import MedicalAdapter
from modalities.medical.dataset import MedicalDataset
from modalities.medical.synthetic import write_cohort
from modalities.medical.tasks import VolumeClassifier, predict_classes, train_classifier


@pytest.mark.slow  # a reduced benchmark check: the slow tier
def test_from_scratch_model_learns_the_cohort_class_with_enough_labels(tmp_path):
    data = write_cohort(tmp_path, 64, seed=11)
    cfg = MedicalAdapter({"patch": [8, 8, 8], "roi": [32, 32, 32], "sw_roi": [32, 32, 32], "cache": "memory",
                          "crops_per_volume": 2, "tokenizer": "conv"}).config
    ds = MedicalDataset(cfg, data, train=True)
    labels = np.array(ds.labels)
    train, test = list(range(40)), list(range(40, 64))
    torch.manual_seed(0)
    model = VolumeClassifier(Encoder.build(MedicalAdapter(cfg), {"width": 128, "depth": 4, "heads": 4}), 2, pooling="max")
    train_acc = train_classifier(model, ds, train, labels, steps=200, lr=1e-3, seed=0)
    test_acc = float((predict_classes(model, ds, test) == labels[test]).mean())
    assert train_acc >= 0.7 and test_acc >= 0.7, (train_acc, test_acc)  # chance is 0.5; seeds 11-13 gave train 0.80-0.98, held-out 0.83-0.92
