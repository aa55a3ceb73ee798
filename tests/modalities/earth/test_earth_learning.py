"""Reduced acceptance checks that run in CI: pretraining pays off on real EuroSAT chips, and
pretrained models embed band subsets (RGB+NIR) and SAR-only chips. The full grid is
benchmarks/earth_eurosat.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.embed import embed_dataset
from foundation.engine import pretrain
from foundation.evaluate import random_twin
from foundation.model import Encoder
from foundation.probes import few_shot_indices, linear_probe, paired_interval
from foundation.recipes import load_recipe
from modalities.earth.adapter import EarthAdapter

# a reduced benchmark (one 320-step pretraining on real EuroSAT shared by every test here): the slow tier
pytestmark = pytest.mark.slow

TINY = ["model.width=64", "model.depth=2", "model.heads=4", "mae.decoder_width=64", "mae.decoder_depth=1", "train.lr=2e-3",
        "train.batch_size=32", "train.warmup_steps=10", "train.log_every=10", "train.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def eurosat_run(tmp_path_factory, eurosat):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("earth_run")
    recipe = load_recipe("earth-mae", [f"data.root={eurosat}", "adapter.preset=eurosat_ms", f"run.dir={run}",
                                       "train.steps=320", *TINY])
    pretrain(recipe, progress=False)
    return run


def test_pretraining_beats_random_init_on_eurosat_with_1_and_5_labels(eurosat_run, eurosat):
    import json

    summary = json.loads((eurosat_run / "summary.json").read_text())
    assert summary["final_loss"] < 0.8 < summary["first_loss"], summary  # mean predictor: ~1.0 on standardised targets
    enc = Encoder.from_pretrained(eurosat_run / "encoder")
    ds = enc.adapter.dataset({"root": str(eurosat), "labels": "folder"}, train=False)
    pools = ("meanstd", "mid_meanstd")  # pooling picked by inner CV on the labelled chips (k=1: the first)
    pre = {p: v for p, v in embed_dataset(enc, ds).items() if p in pools}
    rnd = {p: v for p, v in embed_dataset(random_twin(enc, seed=0), ds).items() if p in pools}
    labels = np.asarray([ds.label(i) for i in range(len(ds))])
    a, b = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:4] for c in range(10)])
        pool = np.setdiff1d(np.arange(len(labels)), test)
        for k in (1, 5):  # paired over 5 splits x 2 label budgets, same picks for both encoders
            pick = pool[few_shot_indices(labels[pool], k, seed)]
            for feats, out in ((pre, a), (rnd, b)):
                tr, te = {p: f[pick] for p, f in feats.items()}, {p: f[test] for p, f in feats.items()}
                out.append(linear_probe(tr, labels[pick], te, labels[test], seed)["accuracy"])
    mean, lo, hi = paired_interval(a, b)
    assert lo > 0, f"pretrained {np.mean(a):.3f} vs random init {np.mean(b):.3f}: diff {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def test_13_band_model_embeds_4_band_chips(eurosat_run, tmp_path, eurosat):
    enc = Encoder.from_pretrained(eurosat_run / "encoder")
    manifest = tmp_path / "m.csv"
    files = sorted(eurosat.rglob("*.tif"))[:8]
    manifest.write_text("path,preset\n" + "".join(f"{p},eurosat_ms\n" for p in files))
    sub = EarthAdapter({"bands": ["B02", "B03", "B04", "B08"], "stats": enc.adapter.config["stats"]})
    ds4 = sub.dataset({"manifest": str(manifest)}, train=False)
    out = embed_dataset(enc, ds4)
    assert out["meanstd"].shape == (8, 2 * enc.width) and np.isfinite(out["meanstd"]).all()
    full = embed_dataset(enc, enc.adapter.dataset({"manifest": str(manifest)}, train=False))["mean"]
    assert full.shape == (8, 2 * enc.width), "13 bands: all bands, then the 10 m bands (embed_views)"
    np.testing.assert_allclose(full[:, enc.width:], out["mean"], atol=1e-4)  # the 10 m view is the 4-band chip
    assert not np.allclose(full[:, :enc.width], out["mean"]), "the band subset is really what the model saw"


def test_sar_optical_model_embeds_sar_only_chips(tmp_path, bigearthnet):
    torch.set_num_threads(1)
    data = EarthAdapter({}).synthetic(tmp_path / "syn", 48, seed=0)
    run = tmp_path / "run"
    recipe = load_recipe("earth-mae-s1s2", [f"data.root={data['root']}", f"run.dir={run}", "train.steps=6", *TINY])
    pretrain(recipe, progress=False)
    enc = Encoder.from_pretrained(run / "encoder")
    assert enc.adapter.channels[-2:] == ["VV", "VH"]
    s1 = EarthAdapter({"preset": "bigearthnet_s1", "chip_size": 120, "stats": enc.adapter.config["stats"]})
    ds = s1.dataset({"root": str(bigearthnet / "s1-tiny")}, train=False)
    out = embed_dataset(enc, ds)
    assert len(ds) == 6 and out["mean"].shape == (6, enc.width) and np.isfinite(out["mean"]).all()
    assert np.linalg.matrix_rank(out["mean"]) > 1, "different SAR chips get different embeddings"
