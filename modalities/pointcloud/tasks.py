"""Downstream tasks the point-cloud field reports: object classification probes on frozen features,
the few-shot episode protocol, and a per-point segmentation head whose labels go back into LAS.

Probes are the core's (``foundation.probes.tuned_probe``: standardised features, regularisation by
inner cross-validation on the training labels only, DESIGN "How we prove a claim"); this module
reports them as the field does: overall accuracy (OA) and class-balanced accuracy ("mAcc").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from foundation.probes import accuracies, tuned_probe
from modalities.pointcloud.io import write_las
from modalities.pointcloud.ops import knn


def probe(kind: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
          return_predictions: bool = False) -> dict:
    """The core's tuned probe (``linear`` logistic regression, ``svm`` linear SVM, ``knn``; C or k by
    inner CV on the training set) scored as point-cloud tables report it: OA, mAcc and the training
    accuracy (an under-fitted probe is then visible); with ``return_predictions`` the test predictions
    (``pred``), for paired comparisons on the same test samples.
    """
    pred, chosen = tuned_probe(kind, xtr, ytr, xte)
    out = accuracies(np.asarray(yte), pred)
    out["train_acc"] = chosen["train_accuracy"]
    if return_predictions:
        out["pred"] = pred
    return out


def few_shot_episodes(labels: np.ndarray, n_way: int, k_shot: int, n_query: int = 20, episodes: int = 10,
                      seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The field's few-shot protocol (Point-BERT/Point-MAE): each episode draws ``n_way`` classes,
    ``k_shot`` support and ``n_query`` query samples per class. Returns (support, query, classes).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    eligible = [c for c in np.unique(labels) if (labels == c).sum() >= k_shot + n_query]
    if len(eligible) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot needs {n_way} classes with >= {k_shot + n_query} samples; "
                         f"{len(eligible)} have enough")
    out = []
    for _ in range(episodes):
        classes = np.sort(rng.choice(eligible, n_way, replace=False))
        sup, qry = [], []
        for c in classes:
            idx = rng.permutation(np.nonzero(labels == c)[0])
            sup.append(idx[:k_shot])
            qry.append(idx[k_shot: k_shot + n_query])
        out.append((np.concatenate(sup), np.concatenate(qry), classes))
    return out


def few_shot_eval(features: np.ndarray, labels: np.ndarray, n_way: int, k_shot: int, episodes: int = 10,
                  seed: int = 0, kind: str = "svm", drawn: list | None = None) -> dict[str, float]:
    """Mean and std of episode accuracy with a probe fitted on each episode's support set; ``accs`` holds
    each episode's accuracy (the same ``seed`` gives the same episodes, so two encoders pair up).
    ``drawn`` (``few_shot_episodes``' output) scores episodes drawn once for several methods instead."""
    labels = np.asarray(labels)
    accs = []
    for sup, qry, _ in drawn if drawn is not None else few_shot_episodes(labels, n_way, k_shot, episodes=episodes, seed=seed):
        accs.append(probe(kind, features[sup], labels[sup], features[qry], labels[qry])["oa"])
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "episodes": len(accs), "accs": [float(a) for a in accs]}


# -- per-point segmentation ----------------------------------------------------------------------
def interpolate_tokens(points: Tensor, centres: Tensor, tokens: Tensor, k: int = 3) -> Tensor:
    """Per-point features [B, N, D] by inverse-distance weighting of the ``k`` nearest token centres
    (PointNet++ feature propagation, as Point-MAE's segmentation head does)."""
    k = min(k, centres.shape[1])
    idx = knn(points, centres, k)  # [B, N, k]
    near = torch.gather(centres.unsqueeze(1).expand(-1, points.shape[1], -1, -1), 2, idx.unsqueeze(-1).expand(-1, -1, -1, 3))
    w = 1.0 / ((points.unsqueeze(2) - near).norm(dim=-1) + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    feats = torch.gather(tokens.unsqueeze(1).expand(-1, points.shape[1], -1, -1), 2,
                         idx.unsqueeze(-1).expand(-1, -1, -1, tokens.shape[-1]))
    return (w.unsqueeze(-1) * feats).sum(2)


class PointSegHead(nn.Module):
    """Per-point classes from encoder tokens: interpolated token features + the point's own xyz (and
    channels), through a small shared MLP. Train it on frozen or fine-tuned encoder tokens."""

    def __init__(self, token_width: int, num_classes: int, point_channels: int = 3, hidden: int = 128) -> None:
        super().__init__()
        self.point = nn.Sequential(nn.Linear(point_channels, hidden), nn.GELU())
        self.head = nn.Sequential(nn.Linear(token_width + hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, points: Tensor, point_feats: Tensor, centres: Tensor, tokens: Tensor) -> Tensor:
        """points [B, N, 3], point_feats [B, N, C] (xyz and channels), centres [B, G, 3], tokens [B, G, D] -> [B, N, classes]."""
        inter = interpolate_tokens(points, centres, tokens)
        return self.head(torch.cat([inter, self.point(point_feats)], dim=-1))


def propagate_labels(src_xyz: np.ndarray, src_labels: np.ndarray, dst_xyz: np.ndarray) -> np.ndarray:
    """Labels of every ``dst`` point from its nearest labelled ``src`` point (budget -> full file)."""
    dst = torch.as_tensor(np.asarray(dst_xyz, np.float32)).unsqueeze(0)
    idx = knn(dst, torch.as_tensor(np.asarray(src_xyz, np.float32)).unsqueeze(0), 1)[0, :, 0].numpy()
    return np.asarray(src_labels)[idx]


def write_point_labels(las_in: str | Path, las_out: str | Path, labelled_xyz: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Write per-point predictions into a copy of ``las_in`` as its classification.

    ``labelled_xyz`` are the points the head saw (in the file's own coordinates, e.g. the budget
    subset); every point of the file gets the class of its nearest labelled point. Returns the
    classes written.
    """
    from modalities.pointcloud.io import read_las

    cloud = read_las(las_in)
    centre = cloud.xyz.mean(0)  # kNN in float32 after centring (UTM coordinates)
    full = propagate_labels(labelled_xyz - centre, labels, cloud.xyz - centre)
    intensity = cloud.feature(["intensity"])[:, 0] if "intensity" in cloud.feature_names else None
    write_las(las_out, cloud.xyz, classification=full, intensity=intensity, template=las_in)
    return full
