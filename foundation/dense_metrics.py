"""Metrics of dense predictions (Dice, IoU) and of verification (EER), for ``task_metrics``.

Dense metrics are pooled over every labelled element of every sample (voxels, pixels, points,
nodes) from one confusion matrix, as segmentation benchmarks report them (Cityscapes/ADE20K mIoU,
MONAI's ``DiceMetric`` aggregated over a dataset); elements labelled ``ignore`` count nowhere.
A class absent from both truth and prediction has no Dice or IoU (NaN) and is left out of the means,
so an empty class never inflates a score.
"""
from __future__ import annotations

import warnings

import numpy as np

IGNORE = -1


def confusion(y: np.ndarray, pred: np.ndarray, classes: int, ignore: int = IGNORE) -> np.ndarray:
    """[classes, classes] counts (rows: true, columns: predicted) over elements whose truth is not ``ignore``."""
    y, pred = np.asarray(y).reshape(-1).astype(np.int64), np.asarray(pred).reshape(-1).astype(np.int64)
    if y.shape != pred.shape:
        raise ValueError(f"dense metrics: {y.size} labels but {pred.size} predictions")
    keep = y != ignore
    y, pred = y[keep], pred[keep]
    if len(y) and (y.min() < 0 or y.max() >= classes or pred.min() < 0 or pred.max() >= classes):
        raise ValueError(f"dense metrics: a label outside 0..{classes - 1} (truth {y.min()}..{y.max()}, "
                         f"prediction {pred.min()}..{pred.max()})")
    return np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)


def _nanmean(x: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def segmentation_metrics(y: np.ndarray, pred: np.ndarray, classes: int, names: list[str] | None = None,
                         background: int | None = 0, ignore: int = IGNORE) -> dict:
    """Dice and IoU per class, ``mean_dice`` over foreground classes (every class but ``background``;
    None: all), ``miou`` over every class, and element accuracy.

    Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), from one confusion matrix over all elements.
    """
    cm = confusion(y, pred, classes, ignore).astype(np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    names = names or [str(c) for c in range(classes)]
    fg = [c for c in range(classes) if c != background] if background is not None and classes > 1 else list(range(classes))
    n = cm.sum()
    return {"mean_dice": _nanmean(dice[fg]), "miou": _nanmean(iou), "pixel_accuracy": float(tp.sum() / n) if n else float("nan"),
            "dice": dict(zip(names, dice.tolist())), "iou": dict(zip(names, iou.tolist())),
            "confusion_matrix": cm.astype(np.int64).tolist(), "n": int(n)}


def equal_error_rate(same: np.ndarray, scores: np.ndarray) -> dict:
    """EER of a verification task: ``same`` is 1 for pairs of one identity (speaker, patient), 0
    otherwise; ``scores`` a similarity (higher = more alike). The EER is where the false-acceptance
    rate equals the false-rejection rate on the ROC curve (linearly interpolated between its two
    nearest points), with its threshold and the AUROC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    same, scores = np.asarray(same).astype(int).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    if len(np.unique(same)) != 2:
        raise ValueError("EER needs both same-identity and different-identity pairs")
    fpr, tpr, thr = roc_curve(same, scores)
    fnr = 1 - tpr
    i = int(np.flatnonzero(fnr <= fpr)[0])  # first point where false rejection no longer exceeds false acceptance
    if i == 0:
        eer, t = float(fpr[0]), float(thr[0])
    else:  # the crossing between points i-1 (fnr > fpr) and i
        d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
        w = d0 / (d0 - d1) if d0 != d1 else 0.0
        eer = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
        t = float(thr[i - 1] + w * (thr[i] - thr[i - 1])) if np.isfinite(thr[i - 1]) else float(thr[i])
    return {"eer": eer, "threshold": t, "auroc": float(roc_auc_score(same, scores)), "n": int(len(same)),
            "n_same": int(same.sum())}
