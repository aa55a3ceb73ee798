"""CI-sized version of benchmarks/speech_fsdd_loso.py: one leave-one-speaker-out fold, a small
MAE, three seeds. It still asserts the claim: the pretrained linear probe beats the same
architecture randomly initialised on a speaker the pretraining never heard (paired splits)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from foundation.embed import embed_dataset
from foundation.engine import pretrain
from foundation.evaluate import random_twin
from foundation.model import Encoder
from foundation.probes import few_shot_indices, linear_probe, paired_interval
from foundation.recipes import load_recipe

HELD_OUT = "jackson"


@pytest.mark.slow
def test_pretrained_beats_random_init_on_an_unseen_speaker(fsdd, tmp_path):
    torch.set_num_threads(1)
    files = sorted(fsdd.glob("*.wav"))
    speakers = np.array([re.match(r"^\d_([a-z]+)_", f.name).group(1) for f in files])
    digits = np.array([int(f.name[0]) for f in files])
    (tmp_path / "pretrain.csv").write_text("path\n" + "".join(f"{f}\n" for f, s in zip(files, speakers) if s != HELD_OUT))
    (tmp_path / "all.csv").write_text("path,digit\n" + "".join(f"{f},{d}\n" for f, d in zip(files, digits)))
    recipe = load_recipe("speech-mae", [
        f"data.manifest={tmp_path / 'pretrain.csv'}", f"run.dir={tmp_path / 'run'}", "train.steps=300", "train.warmup_steps=20",
        "train.lr=0.002", "model.width=64", "model.depth=2", "model.heads=2", "mae.decoder_width=64", "mae.decoder_depth=1",
        "mae.decoder_heads=2", "train.checkpoint_every=300", "train.monitor_every=1000", "train.log_every=50",
    ])
    run = pretrain(recipe, progress=False)
    enc = Encoder.from_pretrained(run / "encoder")
    ds = enc.adapter.dataset({"manifest": str(tmp_path / "all.csv"), "labels": "column:digit"}, train=False)
    pool, test = np.flatnonzero(speakers != HELD_OUT), np.flatnonzero(speakers == HELD_OUT)
    picks = [pool[few_shot_indices(digits[pool], 5, seed)] for seed in range(3)]
    used = np.unique(np.concatenate(picks + [test]))  # embed only the clips the probes touch
    where = {int(i): j for j, i in enumerate(used)}
    pools = ("meanstd", "mid_meanstd")
    feats = {name: {p: f[p] for p in pools} for name, f in (("pretrained", embed_dataset(enc, Subset(ds, used.tolist()), 128, device="cpu")),
                                                            ("random", embed_dataset(random_twin(enc), Subset(ds, used.tolist()), 128, device="cpu")))}
    pos = lambda idx: np.array([where[int(i)] for i in idx])  # noqa: E731
    acc = {"pretrained": [], "random": []}
    for seed, pick in enumerate(picks):
        pick, test_rows = pos(pick), pos(test)
        for name, f in feats.items():
            r = linear_probe({p: v[pick] for p, v in f.items()}, digits[used][pick], {p: v[test_rows] for p, v in f.items()}, digits[test], seed)
            acc[name].append(r["accuracy"])
    diff, lo, hi = paired_interval(acc["pretrained"], acc["random"])
    assert lo > 0, f"pretrained {acc['pretrained']} vs random init {acc['random']}: diff {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"
