"""Few-label evaluation of an encoder against the same architecture randomly initialised."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from foundation.embed import embed_dataset
from foundation.model import Encoder
from foundation.probes import ProbeError, check_classes, compare_few_shot, format_interval, paired_difference


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
    return compare_features(feats, list(getattr(dataset, "classes", None) or []) or None, ks, seeds, test_fraction,
                            tuple(poolings or encoder.adapter.probe_poolings))


def compare_features(feats: dict[str, dict], names: list[str] | None, ks: list[int], seeds: int, test_fraction: float,
                     poolings: tuple[str, ...]) -> dict:
    """``few_label_report`` from the two encoders' features (``embed_dataset`` outputs, labels included).

    One stratified test split, then ``k`` labels per class from the rest over ``seeds`` paired draws;
    ``foundation.probes.few_shot_splits`` refuses a k above a class's pool and seeds that draw the same
    samples, and a test set smaller than ``MIN_TEST_SAMPLES`` gets point estimates without intervals.
    """
    labels = feats["pretrained"]["labels"]
    if (labels < 0).any():
        raise ProbeError("probing needs labels for every sample: set data.labels (folder, pattern:<regex>, column:<name>)")
    classes, _ = check_classes(labels, names, min_per_class=2)
    idx = np.arange(len(labels))
    n_test = int(np.ceil(test_fraction * len(labels)))
    if not len(classes) <= n_test <= len(labels) - len(classes):
        raise ProbeError(f"probe.test_fraction={test_fraction} holds out {n_test} of {len(labels)} samples; the stratified "
                         f"split needs between {len(classes)} and {len(labels) - len(classes)} (one test and one training sample per class)")
    pool, test = train_test_split(idx, test_size=n_test, stratify=labels, random_state=12345)
    # an adapter's feature model (``Adapter.feature_model``) may offer only some of them
    pooled = {m: {k: f[k] for k in poolings if k in f} for m, f in feats.items()}
    if not pooled["pretrained"]:
        raise ValueError(f"none of the poolings {poolings} among the features ({sorted(feats['pretrained'])})")
    bag_keys = [k for k, v in feats["pretrained"].items() if isinstance(v, list)]
    for key in bag_keys:
        pooled.update({f"{m}_{key}": f[key] for m, f in feats.items()})
    res = compare_few_shot(pooled, labels, pool, test, ks, seeds, names)
    rows = []
    for k in ks:
        acc = {m: [r["accuracy"] for r in v[k]] for m, v in res.items()}
        row = {"k": k, **_comparison(acc["pretrained"], acc["random_init"], len(test))}
        for key in bag_keys:
            row[key] = _comparison(acc[f"pretrained_{key}"], acc[f"random_init_{key}"], len(test))
        rows.append(row)
    return {"rows": rows, "bag_keys": bag_keys, "n_test": int(len(test)), "n_pool": int(len(pool)),
            "classes": len(classes), "seeds": seeds, "raw": res}


def _comparison(a: list[float], b: list[float], n_test: int | None = None) -> dict:
    """Pretrained accuracies ``a`` against random-init ``b`` on the same splits."""
    return {"pretrained": float(np.mean(a)), "pretrained_std": float(np.std(a)),
            "random_init": float(np.mean(b)), "random_init_std": float(np.std(b)), **paired_difference(a, b, n_test)}


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
