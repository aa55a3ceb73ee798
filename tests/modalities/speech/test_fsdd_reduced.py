"""CI-sized version of benchmarks/speech_fsdd_loso.py: one leave-one-speaker-out fold (held-out
speaker never heard in pretraining), a small MAE, three seeds, k = 5 digits per class.

What holds at this budget is asserted: MAE loss falls well below the trivial predictor (1.0 on
per-patch normalised targets). The acceptance claim (pretrained probe beats the same architecture
randomly initialised) held in the full benchmark at k = 1 and 5 (1000 steps, width 128, see
benchmarks/results/speech_fsdd_loso-mae-jackson.md) but NOT at CI-sized budgets: 300-500 steps of
a 64- or 96-wide model gave pretrained 0.13-0.24 vs random init 0.16-0.32, so this reduced test
does not claim it; issue 4 stays open with that gap stated.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from foundation.engine import pretrain
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
        f"data.manifest={tmp / 'pretrain.csv'}", f"run.dir={tmp / 'run'}", "train.steps=300", "train.warmup_steps=20",
        "train.lr=0.002", "model.width=64", "model.depth=2", "model.heads=2", "mae.decoder_width=64", "mae.decoder_depth=1",
        "mae.decoder_heads=2", "train.checkpoint_every=300", "train.monitor_every=1000", "train.log_every=50",
    ])
    run = pretrain(recipe, progress=False)
    return {"run": run, "tmp": tmp, "speakers": speakers, "digits": digits}


@pytest.mark.slow
def test_mae_loss_falls_below_the_trivial_predictor_on_fsdd(fold):
    summary = json.loads((fold["run"] / "summary.json").read_text())
    assert summary["final_loss"] < 0.95 and summary["first_loss"] - summary["final_loss"] > 0.2, summary
