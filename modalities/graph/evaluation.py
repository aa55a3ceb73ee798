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
from torch import nn
from torch.nn import functional as F

from foundation.embed import embed_dataset
from foundation.model import Encoder
from foundation.probes import compare_few_shot, paired_interval
from foundation.tokens import collate
from foundation.trunk import masked_mean
from modalities.graph.tasks import svm_cv, wl_features

log = logging.getLogger(__name__)
POOLINGS = ("mean", "meanstd", "max", "mid_meanstd")


def pooled(emb: dict, poolings: tuple[str, ...] = POOLINGS) -> dict[str, np.ndarray]:
    return {p: emb[p] for p in poolings if p in emb}


def train_scratch(adapter, model_cfg: dict, dataset, train_idx: np.ndarray, y: np.ndarray, steps: int,
                  batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> tuple[Encoder, nn.Linear]:
    """A from-scratch supervised model of the same size: the encoder plus a linear head on mean-pooled
    tokens, trained end to end with cross-entropy for ``steps`` steps (AdamW, cosine decay)."""
    torch.manual_seed(seed)
    enc = Encoder.build(adapter, model_cfg)
    head = nn.Linear(enc.width, int(y.max()) + 1)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    enc.train()
    for step in range(steps):
        pick = train_idx[torch.randint(len(train_idx), (batch_size,), generator=g).numpy()]
        batch = collate([dataset[(int(i), seed * 100003 + step * batch_size + j)] for j, i in enumerate(pick)])
        out = enc(batch)
        loss = F.cross_entropy(head(masked_mean(out.tokens, out.padding)), torch.as_tensor(y[pick]))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return enc.eval(), head


@torch.no_grad()
def scratch_predict(enc: Encoder, head: nn.Linear, dataset, idx: np.ndarray, batch_size: int = 64) -> np.ndarray:
    preds = []
    for s in range(0, len(idx), batch_size):
        batch = collate([dataset[int(i)] for i in idx[s : s + batch_size]])
        out = enc(batch)
        preds.append(head(masked_mean(out.tokens, out.padding)).argmax(-1).numpy())
    return np.concatenate(preds)


def compare_encoders(data: dict, recipe_name: str = "graph-mae", overrides: list[str] = (), folds: int = 10,
                     seeds: tuple[int, ...] = (0, 1, 2), scratch_steps: int = 200, scratch_folds: int | None = None,
                     ks: tuple[int, ...] = (5, 10), few_seeds: int = 5, run_dir: str | None = None,
                     poolings: tuple[str, ...] = POOLINGS) -> dict:
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
    emb_pre = embed_dataset(encoder, ds, batch_size=64, device="cpu")
    torch.manual_seed(int(recipe["run"]["seed"]) + 1)
    rand = Encoder.build(adapter, recipe["model"]).eval()
    emb_rand = embed_dataset(rand, ds, batch_size=64, device="cpu")
    res: dict = {"n_graphs": len(ds), "classes": int(y.max()) + 1, "pretrain_s": round(t_pre, 1),
                 "recipe": recipe_name, "overrides": list(overrides), "poolings": list(poolings), "steps": int(recipe["train"]["steps"])}
    res["pretrained"] = svm_cv(pooled(emb_pre, poolings), y, folds, seeds)
    res["random_init"] = svm_cv(pooled(emb_rand, poolings), y, folds, seeds)
    res["wl_kernel"] = svm_cv({"wl": wl_features(ds.set.graphs)}, y, folds, seeds)
    # from scratch: same folds as the first seed, its own training and test accuracy per fold
    split = list(StratifiedKFold(folds, shuffle=True, random_state=seeds[0]).split(np.zeros(len(y)), y))
    split = split[: scratch_folds or folds] if scratch_steps else []  # scratch_steps=0: skip (e.g. a second recipe)
    sc_acc, sc_train = [], []
    for f, (tr, te) in enumerate(split):
        enc, head = train_scratch(adapter, recipe["model"], ds, tr, y, scratch_steps, seed=f)
        sc_acc.append(float((scratch_predict(enc, head, ds, te) == y[te]).mean()))
        sc_train.append(float((scratch_predict(enc, head, ds, tr) == y[tr]).mean()))
    res["from_scratch"] = {"fold_accuracy": sc_acc, "mean": float(np.mean(sc_acc)) if sc_acc else float("nan"),
                           "train_accuracy": float(np.mean(sc_train)) if sc_train else float("nan"),
                           "steps": scratch_steps, "folds": len(split)}
    pre_folds = np.array(res["pretrained"]["fold_accuracy"])
    res["paired"] = {
        "pretrained_minus_random": paired_interval(pre_folds, res["random_init"]["fold_accuracy"]),
        "pretrained_minus_scratch": paired_interval(pre_folds[: len(sc_acc)], sc_acc) if sc_acc else None,
        "pretrained_minus_wl": paired_interval(pre_folds, res["wl_kernel"]["fold_accuracy"]),
    }
    # few labels: k per class from a stratified half, tested on the other half, paired seeds
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    pool, test = np.sort(perm[: len(y) // 2]), np.sort(perm[len(y) // 2 :])
    few = compare_few_shot({"pretrained": pooled(emb_pre, poolings), "random_init": pooled(emb_rand, poolings)}, y, pool, test, list(ks), few_seeds)
    res["few_label"] = {name: {str(k): {"mean": float(np.mean([r["accuracy"] for r in v])),
                                         "accuracies": [r["accuracy"] for r in v]} for k, v in per.items()}
                        for name, per in few.items()}
    res["few_label_paired"] = {str(k): paired_interval([r["accuracy"] for r in few["pretrained"][k]],
                                                       [r["accuracy"] for r in few["random_init"][k]]) for k in ks}
    res["wall_s"] = round(time.time() - t0, 1)
    return res
