"""Reduced versions of the benchmark that still assert something: GraphMAE pretraining on real MUTAG
reconstructs masked node features far better than the best constant prediction, and the whole
acceptance protocol (pretrain -> frozen SVM CV vs random init, from scratch, WL; few labels) runs."""
from __future__ import annotations

import csv

import numpy as np
import torch
from graph_helpers import shared_data
from torch.nn import functional as F

from foundation.engine import pretrain
from foundation.recipes import load_recipe
from modalities.graph.adapter import GraphAdapter
from modalities.graph.evaluation import compare_encoders
from modalities.graph.io import read_tu

SMALL = ["model.width=64", "model.depth=2", "model.heads=4", "mae.decoder_width=64", "train.log_every=10",
         "train.checkpoint_every=1000", "train.warmup_steps=10"]


def best_constant_sce(x: torch.Tensor, alpha: float = 2.0) -> float:
    """The trivial predictor of SCE: the single direction that minimises the loss over all nodes."""
    p = x.mean(0).clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.02)
    for _ in range(500):
        loss = ((1 - F.cosine_similarity(x, p.expand_as(x), dim=-1)) ** alpha).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_graphmae_loss_falls_well_below_the_constant_predictor_on_mutag(tmp_path):
    folder = shared_data("graphs/MUTAG")
    gs = read_tu(folder, tmp_path / "cache")
    trivial = best_constant_sce(torch.cat([g.x for g in gs.graphs]))
    recipe = load_recipe("graph-mae", [f"data.root={folder}", f"run.dir={tmp_path / 'run'}", "train.steps=150", "train.lr=0.002", "adapter.rw_features=false",
                                       f"adapter.cache_dir={tmp_path / 'cache'}", *SMALL])
    run = pretrain(recipe, progress=False)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    last = np.mean([float(r["loss"]) for r in rows[-3:]])
    assert float(rows[0]["loss"]) > last
    assert last < 0.5 * trivial, (last, trivial)


def test_acceptance_protocol_runs_end_to_end(tmp_path):
    data = GraphAdapter().synthetic(tmp_path / "data", 45, seed=3)
    r = compare_encoders(data, "graph-mae", ["train.steps=5", f"adapter.cache_dir={tmp_path / 'cache'}", *SMALL],
                         folds=3, seeds=(0,), scratch_steps=3, scratch_folds=2, ks=(3,), few_seeds=2,
                         run_dir=str(tmp_path / "run"))
    assert r["n_graphs"] == 45 and r["classes"] == 3
    for method in ("pretrained", "random_init", "wl_kernel"):
        assert len(r[method]["fold_accuracy"]) == 3 and 0 <= r[method]["mean"] <= 1
    assert len(r["from_scratch"]["fold_accuracy"]) == 2
    assert set(r["paired"]) == {"pretrained_minus_random", "pretrained_minus_scratch", "pretrained_minus_wl"}
    assert len(r["few_label"]["pretrained"]["3"]["accuracies"]) == 2
    # the WL kernel sees structure: it must separate the families clearly above chance (1/3)
    assert r["wl_kernel"]["mean"] > 0.6


def test_pretraining_keeps_the_structure_that_separates_the_synthetic_families(tmp_path):
    """Reduced claim check (synthetic network families, whose classes live in structure only).

    Before random-walk encodings became reconstructed node features, GraphMAE's only target (node
    types, class-irrelevant here) let the encoder drop structure: its frozen features scored 9 points
    below a random-init encoder. Now the pretrained SVM accuracy must be high and not below random
    init (the full benchmark reports the paired interval; see modalities/graph/README.md)."""
    from pathlib import Path

    from foundation.model import Encoder
    from modalities.graph.evaluation import graph_embeddings
    from foundation.probes import kfold_accuracy

    data = GraphAdapter().synthetic(tmp_path / "data", 300, seed=0)
    recipe = load_recipe("graph-mae", [f"data.root={data['root']}", f"run.dir={tmp_path / 'run'}", "train.steps=150",
                                       f"adapter.cache_dir={tmp_path / 'cache'}", "train.checkpoint_every=1000"])
    enc = Encoder.from_pretrained(Path(pretrain(recipe, progress=False)) / "encoder")
    ds = enc.adapter.dataset({**recipe["data"], "labels": "dataset"}, train=False)
    y = np.array([ds.label(i) for i in range(len(ds))])
    torch.manual_seed(1)
    rand = Encoder.build(enc.adapter, recipe["model"]).eval()
    pools = ("mean", "layers_meanmax")
    pre = kfold_accuracy({p: v for p, v in graph_embeddings(enc, ds).items() if p in pools}, y, 10, (0,))
    rnd = kfold_accuracy({p: v for p, v in graph_embeddings(rand, ds).items() if p in pools}, y, 10, (0,))
    assert pre["mean"] > 0.9, (pre["mean"], rnd["mean"])
    assert pre["mean"] >= rnd["mean"] - 0.01, (pre["mean"], rnd["mean"])
