"""Few-label evaluation of an encoder against the same architecture randomly initialised."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from foundation.embed import embed_dataset
from foundation.model import Encoder
from foundation.probes import compare_few_shot, format_interval, paired_difference


def random_twin(encoder: Encoder, seed: int = 0) -> Encoder:
    """Same adapter (preprocessing) and architecture, fresh random weights."""
    torch.manual_seed(seed)
    return Encoder(encoder.adapter, **encoder.config)


def few_label_report(encoder: Encoder, dataset, ks: list[int], seeds: int, test_fraction: float = 0.3,
                     batch_size: int = 64, progress: bool = False, poolings: tuple[str, ...] | None = None) -> dict:
    """Pretrained vs random-init linear probes on paired few-label splits of ``dataset``.

    Each encoder's pooling is chosen among ``poolings`` (default: the adapter's ``probe_poolings``)
    by inner CV on the training labels, the same way for both, so neither side is handicapped by a
    pooling that suits the other. A feature key that holds a list (one [instances, D] array per
    sample, e.g. a study's regions) is a bag: ``bag_probe`` reads it on the same splits, and each
    row gets that key's comparison too.
    """
    feats = {"pretrained": embed_dataset(encoder, dataset, batch_size, progress=progress),
             "random_init": embed_dataset(random_twin(encoder), dataset, batch_size)}
    labels = feats["pretrained"]["labels"]
    if (labels < 0).any():
        raise ValueError("probing needs labels for every sample: set data.labels (folder, pattern:<regex>, column:<name>)")
    idx = np.arange(len(labels))
    pool, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=12345)
    poolings = tuple(poolings or encoder.adapter.probe_poolings)
    # an adapter's feature model (``Adapter.feature_model``) may offer only some of them
    pooled = {m: {k: f[k] for k in poolings if k in f} for m, f in feats.items()}
    if not pooled["pretrained"]:
        raise ValueError(f"none of the poolings {poolings} among the features ({sorted(feats['pretrained'])})")
    bag_keys = [k for k, v in feats["pretrained"].items() if isinstance(v, list)]
    for key in bag_keys:
        pooled.update({f"{m}_{key}": f[key] for m, f in feats.items()})
    res = compare_few_shot(pooled, labels, pool, test, ks, seeds)
    rows = []
    for k in ks:
        acc = {m: [r["accuracy"] for r in v[k]] for m, v in res.items()}
        row = {"k": k, **_comparison(acc["pretrained"], acc["random_init"])}
        for key in bag_keys:
            row[key] = _comparison(acc[f"pretrained_{key}"], acc[f"random_init_{key}"])
        rows.append(row)
    return {"rows": rows, "bag_keys": bag_keys, "n_test": int(len(test)), "n_pool": int(len(pool)),
            "classes": len(np.unique(labels)), "seeds": seeds, "raw": res}


def _comparison(a: list[float], b: list[float]) -> dict:
    """Pretrained accuracies ``a`` against random-init ``b`` on the same splits."""
    return {"pretrained": float(np.mean(a)), "pretrained_std": float(np.std(a)),
            "random_init": float(np.mean(b)), "random_init_std": float(np.std(b)), **paired_difference(a, b)}


def format_report(rep: dict) -> str:
    lines = [f"{'k/class':>8} {'pretrained':>14} {'random init':>14} {'paired diff [95% CI]':>28}"]
    bag_keys = rep.get("bag_keys", [])
    for r in rep["rows"]:
        for label, x in [("", r)] + [(f" {key}", r[key]) for key in bag_keys]:
            lines.append(f"{str(r['k']) + label:>8} {x['pretrained']:>8.3f}±{x['pretrained_std']:.3f} {x['random_init']:>8.3f}±{x['random_init_std']:.3f}"
                         f"   {format_interval(x)}{'  beats' if x['beats'] else ''}")
    for key in bag_keys:
        lines.append(f"({key}: foundation.probes.bag_probe on each sample's {key}, the same splits)")
    lines.append(f"({rep['classes']} classes, {rep['n_test']} test samples, {rep['seeds']} paired seeds)")
    return "\n".join(lines)


# -- metrics of every task (finetune reports, predict, the evaluate registry) ---------------------
def task_metrics(task: str, y: np.ndarray, scores: np.ndarray, names: list[str] | None = None) -> dict:
    """Metrics of predictions ``scores`` (probabilities per class/label, or values [N] / [N, 1]) against ``y``.

    classification: accuracy, balanced accuracy, macro-F1, AUROC (binary, or one-vs-rest macro when every
    class is present), per-class accuracy (recall) and the confusion matrix (rows: true, columns: predicted);
    multilabel: per-label accuracy, macro-F1 and macro AUROC; regression: MAE, RMSE, R².
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    if task == "regression":
        pred = scores.reshape(len(y), -1)[:, 0]
        err = pred - y
        ss = float(((y - y.mean()) ** 2).sum())
        return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
                "r2": float(1 - (err ** 2).sum() / ss) if ss > 0 else float("nan"), "n": int(len(y))}
    if task == "multilabel":
        pred = scores > 0.5
        out = {"accuracy": float((pred == (y > 0.5)).mean()), "exact_match": float((pred == (y > 0.5)).all(1).mean()),
               "macro_f1": float(f1_score(y > 0.5, pred, average="macro", zero_division=0)), "n": int(len(y))}
        ok = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        out["auroc"] = float(np.mean([roc_auc_score(y[:, j], scores[:, j]) for j in ok])) if ok else float("nan")
        return out
    n_cls = scores.shape[1]
    pred = scores.argmax(1)
    cm = confusion_matrix(y, pred, labels=list(range(n_cls)))
    per_class = [float(cm[c, c] / cm[c].sum()) if cm[c].sum() else float("nan") for c in range(n_cls)]
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)),
           "per_class_accuracy": dict(zip(names or [str(c) for c in range(n_cls)], per_class)),
           "confusion_matrix": cm.tolist(), "n": int(len(y))}
    present = np.unique(y)
    if n_cls == 2 and len(present) == 2:
        out["auroc"] = float(roc_auc_score(y, scores[:, 1]))
    elif len(present) == n_cls and n_cls > 2:
        p = scores / scores.sum(1, keepdims=True).clip(min=1e-12)
        out["auroc"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    else:
        out["auroc"] = float("nan")
    return out


def headline(task: str) -> str:
    """The metric a task's tables lead with."""
    return {"classification": "accuracy", "multilabel": "macro_f1", "regression": "r2"}[task]
