"""The acceptance protocol for graph classification: pretrained vs random init vs from-scratch vs WL.

One function, used by ``benchmarks/graph_svm.py`` at full size and by the CI test at reduced size,
so the number in the README and the claim CI asserts come from the same code.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from foundation.data import eval_loader
from foundation.finetune import train_from_scratch, tune_lr
from foundation.model import Encoder
from foundation.probes import compare_few_shot, kfold_accuracy, paired_difference
from foundation.trunk import masked_max, masked_mean
from modalities.graph.tasks import wl_features

log = logging.getLogger(__name__)
# Frozen-feature poolings the SVM's inner CV chooses from: the last layer's mean and max, and (as GIN,
# InfoGraph and GraphMAE read graphs out) the concatenation over every layer, input embedding included,
# of each layer's mean (``layers_mean``) or mean and max (``layers_meanmax``).
POOLINGS = ("mean", "max", "layers_mean", "layers_meanmax")


def pooled(emb: dict, poolings: tuple[str, ...] = POOLINGS) -> dict[str, np.ndarray]:
    return {p: emb[p] for p in poolings if p in emb}


@torch.no_grad()
def graph_embeddings(encoder: Encoder, dataset, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Frozen graph embeddings: the encoder's own poolings plus layer-wise readouts.

    Each layer's node tokens (the trunk's input, i.e. node-feature embedding plus positions, then each
    block's output, layer-normalised) are mean- and max-pooled over the graph's real nodes only.
    """
    encoder.eval()
    captured: dict[str, torch.Tensor] = {}
    hook = encoder.trunk.blocks[0].register_forward_pre_hook(lambda _m, args: captured.__setitem__("x0", args[0]))
    feats: dict[str, list] = {}
    try:
        for batch in eval_loader(dataset, batch_size):
            out = encoder.pooled(batch)
            enc = encoder(batch, return_layers=True)
            pad = enc.padding
            layers = [captured["x0"][:, 1:]] + list(enc.layers)  # drop the register token
            layers = [F.layer_norm(h, h.shape[-1:]) for h in layers]
            out["layers_mean"] = torch.cat([masked_mean(h, pad) for h in layers], -1)
            out["layers_meanmax"] = torch.cat([torch.cat([masked_mean(h, pad), masked_max(h, pad)], -1) for h in layers], -1)
            for k, v in out.items():
                feats.setdefault(k, []).append(v.float().numpy())
    finally:
        hook.remove()
    return {k: np.concatenate(v) for k, v in feats.items()}


def scratch_baseline(adapter, model_cfg: dict, dataset, y: np.ndarray, split: list, steps: int,
                     lrs: tuple[float, ...] = (3e-4, 1e-3), batch_size: int = 32) -> dict:
    """From-scratch supervised model of the same size and step budget as pretraining: the encoder plus
    a linear head (:func:`foundation.finetune.train_from_scratch`), its learning rate tuned on a
    validation quarter of the first fold's training graphs (test folds never touch the choice), then
    trained on each fold's training graphs and tested on its test graphs."""
    from sklearn.model_selection import train_test_split

    tr0 = split[0][0]
    fit, val = train_test_split(tr0, test_size=0.25, stratify=y[tr0], random_state=0)
    lr, tuning = tune_lr(lrs, lambda v: train_from_scratch(adapter, model_cfg, dataset, fit, val, y, steps, v, seed=0,
                                                          batch_size=batch_size)["accuracy"])
    acc, train_acc = [], []
    for f, (tr, te) in enumerate(split):
        r = train_from_scratch(adapter, model_cfg, dataset, tr, te, y, steps, lr, seed=f, batch_size=batch_size)
        acc.append(r["accuracy"])
        train_acc.append(r["train_accuracy"])
    return {"fold_accuracy": acc, "mean": float(np.mean(acc)) if acc else float("nan"),
            "train_accuracy": float(np.mean(train_acc)) if train_acc else float("nan"),
            "steps": steps, "folds": len(split), "lr": lr,
            "lr_tuning": {str(k): v for k, v in tuning.items()}}


def compare_encoders(data: dict, recipe_name: str = "graph-mae", overrides: list[str] = (), folds: int = 10,
                     seeds: tuple[int, ...] = (0, 1, 2), scratch_steps: int | None = None, scratch_folds: int | None = None,
                     ks: tuple[int, ...] = (5, 10), few_seeds: int = 5, run_dir: str | None = None,
                     poolings: tuple[str, ...] = POOLINGS, scratch_lrs: tuple[float, ...] = (3e-4, 1e-3)) -> dict:
    """Pretrain (labels unused) on ``data``, then SVM k-fold CV on frozen features of the pretrained
    and of a randomly initialised encoder (same folds), a from-scratch supervised model of the same size
    on the folds of the first seed, the WL-subtree kernel features, and few-label linear probes."""
    from foundation.engine import pretrain
    from foundation.recipes import load_recipe

    from sklearn.model_selection import StratifiedKFold

    t0 = time.time()
    run_dir = run_dir or tempfile.mkdtemp(prefix="graph-bench-")
    ov = [f"data.root={data['root']}", f"run.dir={run_dir}", "data.labels=dataset", *overrides]
    recipe = load_recipe(recipe_name, ov)
    out = pretrain(recipe, progress=False)
    t_pre = time.time() - t0
    encoder = Encoder.from_pretrained(Path(out) / "encoder")
    adapter = encoder.adapter
    ds = adapter.dataset({**recipe["data"], "labels": "dataset"}, train=False)
    y = np.array([ds.label(i) for i in range(len(ds))])
    emb_pre = graph_embeddings(encoder, ds)
    torch.manual_seed(int(recipe["run"]["seed"]) + 1)
    rand = Encoder.build(adapter, recipe["model"]).eval()
    emb_rand = graph_embeddings(rand, ds)
    res: dict = {"n_graphs": len(ds), "classes": int(y.max()) + 1, "pretrain_s": round(t_pre, 1),
                 "recipe": recipe_name, "overrides": list(overrides), "poolings": list(poolings), "steps": int(recipe["train"]["steps"])}
    res["pretrained"] = kfold_accuracy(pooled(emb_pre, poolings), y, folds, seeds)
    res["random_init"] = kfold_accuracy(pooled(emb_rand, poolings), y, folds, seeds)
    res["wl_kernel"] = kfold_accuracy({"wl": wl_features(ds.set.graphs)}, y, folds, seeds, kernel=True)
    # from scratch: same folds as the first seed; by default the same number of steps as pretraining
    steps = int(recipe["train"]["steps"]) if scratch_steps is None else scratch_steps
    split = list(StratifiedKFold(folds, shuffle=True, random_state=seeds[0]).split(np.zeros(len(y)), y))
    split = split[: folds if scratch_folds is None else scratch_folds]
    if steps and split:  # scratch_steps=0 or scratch_folds=0: skip (e.g. a second recipe)
        res["from_scratch"] = scratch_baseline(adapter, recipe["model"], ds, y, split, steps, tuple(scratch_lrs),
                                               batch_size=int(recipe["train"]["batch_size"]))
    else:
        res["from_scratch"] = {"fold_accuracy": [], "mean": float("nan"), "train_accuracy": float("nan"), "steps": 0, "folds": 0}
    sc_acc = res["from_scratch"]["fold_accuracy"]
    pre_folds = np.array(res["pretrained"]["fold_accuracy"])
    res["paired"] = {
        "pretrained_minus_random": paired_difference(pre_folds, res["random_init"]["fold_accuracy"]),
        "pretrained_minus_scratch": paired_difference(pre_folds[: len(sc_acc)], sc_acc) if sc_acc else None,
        "pretrained_minus_wl": paired_difference(pre_folds, res["wl_kernel"]["fold_accuracy"]),
    }
    # few labels: k per class from a stratified half, tested on the other half, paired seeds
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    pool, test = np.sort(perm[: len(y) // 2]), np.sort(perm[len(y) // 2 :])
    few = compare_few_shot({"pretrained": pooled(emb_pre, poolings), "random_init": pooled(emb_rand, poolings)}, y, pool, test, list(ks), few_seeds)
    res["few_label"] = {name: {str(k): {"mean": float(np.mean([r["accuracy"] for r in v])),
                                         "accuracies": [r["accuracy"] for r in v]} for k, v in per.items()}
                        for name, per in few.items()}
    res["few_label_paired"] = {str(k): paired_difference([r["accuracy"] for r in few["pretrained"][k]],
                                                       [r["accuracy"] for r in few["random_init"][k]]) for k in ks}
    res["wall_s"] = round(time.time() - t0, 1)
    return res
