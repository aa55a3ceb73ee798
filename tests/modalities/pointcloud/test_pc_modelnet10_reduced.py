"""CI-sized version of benchmarks/pointcloud_modelnet10.py: does pretraining on CPU, within CI's budget, make
the frozen encoder's few-label probe beat its randomly initialised twin on the real ModelNet10 shapes?

The ``pointcloud-jepa`` recipe pretrains on the benchmark's training pool (never the test shapes) for
STEPS steps (about two minutes on two cores); then, with 10 labels per class over 5 paired seeds, a
linear probe on the frozen features of each encoder (C and pooling chosen by inner CV on the training
labels only, ``probe_pooled``) is scored on held-out shapes, and the paired 95% interval of the
differences must lie above zero, in overall and in class-balanced accuracy.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.pointcloud_modelnet10 import embed, labelled_shapes, probe_pooled, split, write_manifest
from foundation.engine import pretrain
from foundation.evaluate import random_twin
from foundation.model import Encoder
from foundation.probes import few_shot_indices, paired_interval
from foundation.recipes import load_recipe

STEPS = 120
TEST_PER_CLASS = 40


@pytest.mark.slow
def test_cpu_pretrained_jepa_probe_beats_random_init_on_modelnet10_with_ten_labels(modelnet10, tmp_path):
    t0 = time.time()
    files, names, _, labels = labelled_shapes(modelnet10)
    pool, test = split(labels, 0.4)  # the benchmark's split
    rng = np.random.default_rng(0)
    test = np.sort(np.concatenate([rng.permutation(test[labels[test] == c])[:TEST_PER_CLASS] for c in np.unique(labels)]))
    pool_manifest = write_manifest(tmp_path / "pool.csv", [files[i] for i in pool], [names[i] for i in pool])
    recipe = load_recipe("pointcloud-jepa", [f"data.manifest={pool_manifest}", "data.root=", f"run.dir={tmp_path / 'run'}",
                                             f"train.steps={STEPS}", "data.num_workers=1", "train.log_every=20"])
    run_dir = pretrain(recipe, progress=False)
    t_pre = time.time() - t0

    seeds = range(5)
    draws = {s: pool[few_shot_indices(labels[pool], 10, s)] for s in seeds}
    used = np.union1d(test, np.concatenate(list(draws.values())))  # embed only what the probes read
    manifest = write_manifest(tmp_path / "used.csv", [files[i] for i in used], [names[i] for i in used])
    encoder = Encoder.from_pretrained(run_dir / "encoder")
    views = encoder.adapter.dataset({"manifest": str(manifest), "labels": "column:label"}, train=False)
    views = [views[i] for i in range(len(views))]
    feats = {"pretrained": embed(encoder, views), "random_init": embed(random_twin(encoder, seed=0), views)}
    row_of = {int(i): r for r, i in enumerate(used)}
    y = labels[used]
    te = np.array([row_of[int(i)] for i in test])
    scores = {m: {"oa": [], "macc": []} for m in feats}
    for s in seeds:
        tr = np.array([row_of[int(i)] for i in draws[s]])
        for m in feats:
            row = probe_pooled("linear", feats[m], y, tr, te)
            scores[m]["oa"].append(row["oa"])
            scores[m]["macc"].append(row["macc"])
    print(f"pretraining {t_pre:.0f}s, total {time.time() - t0:.0f}s")
    for metric in ("oa", "macc"):
        mean, lo, hi = paired_interval(scores["pretrained"][metric], scores["random_init"][metric])
        print(metric, {m: np.round(scores[m][metric], 3).tolist() for m in scores}, f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    for metric in ("oa", "macc"):
        mean, lo, hi = paired_interval(scores["pretrained"][metric], scores["random_init"][metric])
        assert lo > 0, (metric, mean, lo, hi, scores)
