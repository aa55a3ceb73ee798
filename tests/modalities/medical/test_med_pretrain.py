"""Pretraining through the core on a folder that mixes the real CT/MR volumes and synthetic ones."""
from __future__ import annotations

import csv
import os

import numpy as np

from foundation.engine import pretrain
from foundation.export import encoder_from_run
from foundation.recipes import load_recipe
from modalities.medical.synthetic import write_cohort


def test_pretrain_on_real_and_synthetic_volumes(tmp_path, nifti_dir, dicom_series):
    root = tmp_path / "mixed"
    root.mkdir()
    for f in sorted(nifti_dir.glob("*.nii.gz")):
        os.symlink(f, root / f.name)
    os.symlink(dicom_series, root / "mr_series")  # a series folder is one volume
    write_cohort(root / "synthetic", 3, seed=0, size=(32, 32, 32))
    recipe = load_recipe("medical-mae", [
        f"data.root={root}", f"run.dir={tmp_path / 'run'}", "train.steps=6", "train.batch_size=4", "train.warmup_steps=2",
        "train.log_every=2", "train.checkpoint_every=6", "model.width=32", "model.depth=1", "model.heads=2", "mae.decoder_width=32",
        "mae.decoder_depth=1", "adapter.cache=memory", "adapter.spacing=[3.0, 3.0, 3.0]", "adapter.crops_per_volume=2",
    ])
    run = pretrain(recipe, progress=False)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows and all(np.isfinite(float(r["loss"])) for r in rows)
    enc = encoder_from_run(run)
    assert enc.adapter.config["spacing"] == [3.0, 3.0, 3.0]
    ds = enc.adapter.dataset({"root": str(root)}, train=True)
    assert len(ds.items) == 4 + 3 and any(s.path.endswith("mr_series") for s in ds.sources)


def test_medical_recipes_resolve_and_build_their_adapter():
    from foundation.model import Encoder
    from modalities.base import adapter_from_config

    for name in ("medical-mae", "medical-jepa", "medical-contrast", "medical-mae-gpu", "medical-jepa-gpu"):
        r = load_recipe(name, [])
        assert r["modality"] == "medical" and r["objective"] in name
        adapter = adapter_from_config("medical", r["adapter"])
        if "gpu" not in name:
            assert Encoder.build(adapter, r["model"]).width == r["model"]["width"]
        if r["objective"] == "mae":
            assert r["masking"]["kind"] == "block"
