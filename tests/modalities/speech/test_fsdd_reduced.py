"""CI-sized version of benchmarks/speech_fsdd_loso.py: one leave-one-speaker-out fold (held-out
speaker never heard in pretraining), the speech-mae recipe for 800 steps, five seeds, k = 10 clips per digit.

Asserted: MAE loss falls well below the trivial predictor (1.0 on per-patch normalised targets), and
the pretrained encoder's linear probe beats its randomly initialised twin on the unseen speaker with
k = 10 labelled clips per digit, paired over seeds. The full grid (four folds, MAE and JEPA, scratch
and classical baselines) is benchmarks/speech_fsdd_loso.py.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from foundation.embed import embed_dataset
from foundation.engine import pretrain
from foundation.evaluate import random_twin
from foundation.model import Encoder
from foundation.probes import few_shot_indices, linear_probe, paired_interval
from foundation.recipes import load_recipe

HELD_OUT = "jackson"


@pytest.fixture(scope="module")
def fold(fsdd, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("fsdd_fold")
    files = sorted(fsdd.glob("*.wav"))
    speakers = np.array([re.match(r"^\d_([a-z]+)_", f.name).group(1) for f in files])
    digits = np.array([int(f.name[0]) for f in files])
    (tmp / "pretrain.csv").write_text("path\n" + "".join(f"{f}\n" for f, s in zip(files, speakers) if s != HELD_OUT))
    (tmp / "all.csv").write_text("path,digit\n" + "".join(f"{f},{d}\n" for f, d in zip(files, digits)))
    recipe = load_recipe("speech-mae", [
        f"data.manifest={tmp / 'pretrain.csv'}", f"run.dir={tmp / 'run'}", "train.steps=800", "train.warmup_steps=40",
        "train.lr=0.0015", "train.checkpoint_every=800", "train.monitor_every=1000", "train.log_every=100",
    ])
    run = pretrain(recipe, progress=False)
    return {"run": run, "tmp": tmp, "speakers": speakers, "digits": digits}


@pytest.mark.slow
def test_mae_loss_falls_below_the_trivial_predictor_on_fsdd(fold):
    summary = json.loads((fold["run"] / "summary.json").read_text())
    assert summary["final_loss"] < 0.95 and summary["first_loss"] - summary["final_loss"] > 0.2, summary


@pytest.mark.slow
def test_pretrained_probe_beats_random_init_on_an_unseen_speaker(fold):
    enc = Encoder.from_pretrained(fold["run"] / "encoder")
    data = {"manifest": str(fold["tmp"] / "all.csv"), "labels": "column:digit"}
    feats = {}
    for name, e in (("pretrained", enc), ("random_init", random_twin(enc, seed=0))):
        f = embed_dataset(e, enc.adapter.dataset(data, train=False), batch_size=64, device="cpu")
        feats[name] = {p: f[p] for p in ("meanstd", "mid_meanstd")}
    pool, test = np.flatnonzero(fold["speakers"] != HELD_OUT), np.flatnonzero(fold["speakers"] == HELD_OUT)
    labels = fold["digits"]
    acc = {name: [] for name in feats}
    for seed in range(5):
        pick = pool[few_shot_indices(labels[pool], 10, seed)]
        for name, f in feats.items():
            r = linear_probe({p: v[pick] for p, v in f.items()}, labels[pick], {p: v[test] for p, v in f.items()}, labels[test], seed)
            acc[name].append(r["accuracy"])
    diff = paired_interval(np.array(acc["pretrained"]), np.array(acc["random_init"]))
    print(acc, diff)
    assert diff[1] > 0, (acc, diff)
