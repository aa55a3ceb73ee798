"""Evaluation of an aligned model: retrieval, zero-shot classification, emergent retrieval, probes.

All functions take L2-normalised embeddings (numpy or torch, [N, D]) so they serve every tower and every
pairing: ``retrieval(speech, text)``, or ``retrieval(pointcloud, text)`` between two towers that were
never paired directly (emergent retrieval through an anchor, ImageBind-style). Unimodal probes before
and after alignment go through ``foundation.probes.linear_probe``, the one probe stack.
"""
from __future__ import annotations

import numpy as np
import torch

from foundation.probes import linear_probe, paired_difference

KS = (1, 5, 10)


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def ranks(query: np.ndarray, gallery: np.ndarray, match: np.ndarray) -> np.ndarray:
    """1-based rank of the first correct gallery item for each query; ``match`` [Nq, Ng] bool."""
    sim = _np(query) @ _np(gallery).T
    order = np.argsort(-sim, axis=1, kind="stable")
    hit = np.take_along_axis(match, order, axis=1)
    return hit.argmax(1) + 1


def chance_recall(matches: np.ndarray, gallery: int, k: int) -> float:
    """Recall@k of a random ranking: 1 - C(G - m, k) / C(G, k), averaged over queries with m matches."""
    m = np.asarray(matches, float)
    miss = np.ones_like(m)
    for j in range(min(k, gallery)):
        miss *= np.clip((gallery - m - j) / (gallery - j), 0, 1)
    return float(np.mean(1 - miss))


def retrieval(za, zb, keys_a=None, keys_b=None, ks=KS, names: tuple[str, str] = ("a", "b"), ids_a=None, ids_b=None) -> dict:
    """Recall@k in both directions and median rank. Without keys, row i of ``za`` matches row i of
    ``zb`` only (instance retrieval); with keys, any item of the same key is correct. Chance recall@k
    is reported beside (k / gallery size for instance retrieval, the mean share of matches otherwise)."""
    za, zb = _np(za), _np(zb)
    if keys_a is None:
        match = np.eye(len(za), len(zb), dtype=bool)
    else:
        match = np.asarray(keys_a)[:, None] == np.asarray(keys_b)[None, :]
    out = {}
    for (q, g, m, direction, ids) in ((za, zb, match, f"{names[0]}->{names[1]}", ids_b), (zb, za, match.T, f"{names[1]}->{names[0]}", ids_a)):
        if keys_a is not None:  # identical gallery items (a class text on every row of its class) are one
            # item: copies would fill the top ranks with one wrong class and push recall@k below chance.
            # Identity is the item itself (``ids``: its text or file) where given: one text embedded in two
            # batches can differ in the last bits; else embeddings that are exactly equal.
            _, first = np.unique(np.asarray(ids, dtype=object).astype(str) if ids is not None else g, axis=0 if ids is None else None,
                                 return_index=True)
            keep = np.sort(first)
            g, m = g[keep], m[:, keep]
        r = ranks(q, g, m)
        for k in ks:
            out[f"{direction} recall@{k}"] = float((r <= k).mean())
            out[f"{direction} chance@{k}"] = chance_recall(m.sum(1), m.shape[1], k)
        out[f"{direction} median_rank"] = float(np.median(r))
    return out


def zero_shot(z, labels, class_embeddings, class_values) -> dict:
    """Zero-shot classification: each sample takes the class whose text embedding is nearest.
    ``class_values[c]`` is the label value of row c of ``class_embeddings``."""
    pred = np.asarray(class_values)[(_np(z) @ _np(class_embeddings).T).argmax(1)]
    labels = np.asarray(labels)
    return {"accuracy": float((pred == labels).mean()), "chance": float(1 / len(class_values)), "n": int(len(labels)),
            "predictions": pred.tolist()}


def prompts(template: str, classes: dict) -> tuple[list, list[str]]:
    """``zero_shot.prompt`` (e.g. ``"the word {}"``) filled with each ``zero_shot.classes`` text."""
    values = list(classes)
    return values, [template.format(classes[v]) for v in values]


def probe_before_after(before, after, labels, folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """A unimodal linear probe of one tower's features before and after alignment, on the same folds
    (paired differences over folds)."""
    y = np.asarray(labels)
    res = {"before": [], "after": []}
    for tr, te in folds:
        for name, x in (("before", _np(before)), ("after", _np(after))):
            res[name].append(linear_probe(x[tr], y[tr], x[te], y[te])["accuracy"])
    return {**{k: float(np.mean(v)) for k, v in res.items()}, "per_fold": res,
            "after_minus_before": paired_difference(res["after"], res["before"])}
