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


# the encoder's own poolings, and "maxmin", which an adapter's feature model may add (medical studies)
PROBE_POOLINGS = ("meanstd", "mid_meanstd", "max", "maxmin")


def few_label_report(encoder: Encoder, dataset, ks: list[int], seeds: int, test_fraction: float = 0.3,
                     batch_size: int = 64, progress: bool = False, poolings: tuple[str, ...] = PROBE_POOLINGS) -> dict:
    """Pretrained vs random-init linear probes on paired few-label splits of ``dataset``.

    Each encoder's pooling is chosen among ``poolings`` by inner CV on the training labels, the
    same way for both, so neither side is handicapped by a pooling that suits the other.
    """
    feats = {"pretrained": embed_dataset(encoder, dataset, batch_size, progress=progress),
             "random_init": embed_dataset(random_twin(encoder), dataset, batch_size)}
    labels = feats["pretrained"]["labels"]
    if (labels < 0).any():
        raise ValueError("probing needs labels for every sample: set data.labels (folder, pattern:<regex>, column:<name>)")
    idx = np.arange(len(labels))
    pool, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=12345)
    # an adapter's feature model (``Adapter.feature_model``) may offer only some of them
    pooled = {m: {k: f[k] for k in poolings if k in f} for m, f in feats.items()}
    if not pooled["pretrained"]:
        raise ValueError(f"none of the poolings {poolings} among the features ({sorted(feats['pretrained'])})")
    if isinstance(feats["pretrained"].get("regions"), list):  # per-sample regions: the region probe as well
        pooled.update({f"{m}_regions": f["regions"] for m, f in feats.items()})
    res = compare_few_shot(pooled, labels, pool, test, ks, seeds)
    rows = []
    for k in ks:
        acc = {m: [r["accuracy"] for r in v[k]] for m, v in res.items()}
        a, b = acc["pretrained"], acc["random_init"]
        row = {"k": k, "pretrained": float(np.mean(a)), "pretrained_std": float(np.std(a)),
               "random_init": float(np.mean(b)), "random_init_std": float(np.std(b)), **paired_difference(a, b)}
        if "pretrained_regions" in acc:
            ra, rb = acc["pretrained_regions"], acc["random_init_regions"]
            row["regions"] = {"pretrained": float(np.mean(ra)), "pretrained_std": float(np.std(ra)), "random_init": float(np.mean(rb)),
                              "random_init_std": float(np.std(rb)), **paired_difference(ra, rb)}
        rows.append(row)
    return {"rows": rows, "n_test": int(len(test)), "n_pool": int(len(pool)), "classes": len(np.unique(labels)),
            "seeds": seeds, "raw": res}


def format_report(rep: dict) -> str:
    lines = [f"{'k/class':>8} {'pretrained':>14} {'random init':>14} {'paired diff [95% CI]':>28}"]
    for r in rep["rows"]:
        for label, x in (("", r), (" regions", r.get("regions"))):
            if x:
                lines.append(f"{str(r['k']) + label:>8} {x['pretrained']:>8.3f}±{x['pretrained_std']:.3f} {x['random_init']:>8.3f}±{x['random_init_std']:.3f}"
                             f"   {format_interval(x)}{'  beats' if x['beats'] else ''}")
    if any("regions" in r for r in rep["rows"]):
        lines.append("(regions: foundation.probes.bag_probe on each sample's regions, the same splits)")
    lines.append(f"({rep['classes']} classes, {rep['n_test']} test samples, {rep['seeds']} paired seeds)")
    return "\n".join(lines)
