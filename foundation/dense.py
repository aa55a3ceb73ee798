"""Dense prediction through the one fine-tuning path: one label per voxel, pixel, point or node.

The core stays modality-agnostic. An adapter that offers a dense task provides three hooks
(``modalities.base.Adapter``):

- ``dense_dataset(data, train)``: samples whose ``SampleTokens.dense`` [N, D] holds the integer label of
  the D elements each token covers (-1: none), read from ``data.masks``; ``dataset.dense_classes``
  names the classes;
- ``dense_head(encoder, classes)``: a module ``forward(enc, batch) -> logits [B, N, D, classes]``
  (``needs_layers = True`` to receive every encoder layer, as UNETR's decoder does);
- ``write_dense(dataset, predictions, out_dir, names)``: each sample's predicted labels written in its
  source geometry (NIfTI with the source affine, GeoTIFF with the source transform and CRS, labels in
  the input's point order).

and optionally a fourth, for samples too large for one pass:

- ``dense_logits(outputs, dataset, index, batch_size) -> logits [n, D, classes]`` of dataset sample
  ``index``, laid out like its tokens, computed however the modality needs (the medical adapter: MONAI
  sliding windows with Gaussian blending over ``sw_roi``); ``outputs(batch)`` is the model on token
  batches. Without it a sample goes through the model whole, in batches of samples.

Training is ``foundation.finetune.fit`` (so ``foundation.engine.train``) with :func:`dense_loss`; this
module adds the loss, prediction over a view, metrics, and the predictions' index CSV.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.dense_metrics import IGNORE
from foundation.errors import DomainfmError
from foundation.tokens import collate

DENSE_TASKS = ("segmentation",)
DENSE_METHODS = ("linear", "full", "lora")


class DenseTaskError(DomainfmError, ValueError):
    """A dense task asked of data or a modality that cannot give it; the message names the way out."""


def dense_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0) -> Tensor:
    """Cross-entropy plus soft Dice over foreground classes (MONAI's DiceCE, as nnU-Net and UNETR train),
    on the elements whose target is not -1. Dice keeps a small structure (a lesion) from being
    outvoted by the background; without a labelled element the loss is 0 (and still has a graph).
    logits [B, N, D, C], target [B, N, D]."""
    c = logits.shape[-1]
    x, y = logits.reshape(-1, c).float(), target.reshape(-1).to(logits.device)
    keep = y != IGNORE
    if not bool(keep.any()):
        return logits.sum() * 0.0
    x, y = x[keep], y[keep].long()
    loss = F.cross_entropy(x, y)
    if dice_weight and c > 1:
        p = x.softmax(-1)[:, 1:]
        t = F.one_hot(y, c).float()[:, 1:]
        inter, denom = (p * t).sum(0), p.sum(0) + t.sum(0)
        loss = loss + dice_weight * (1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean())
    return loss


def _regex_rule(rule: str) -> tuple[str, str]:
    find, sep, repl = rule[len("regex:"):].partition("=>")
    if not sep or not find:
        raise DenseTaskError(f"data.masks={rule!r} must be regex:<find>=><replace>")
    return find, repl


def mask_file(path: str, rule: str, extra: dict | None = None, base: Path | None = None) -> str:
    """The dense-label file of the sample at ``path`` under ``data.masks``: ``column:<name>`` (a manifest
    column, relative to the manifest like ``path``) or ``regex:<find>=><replace>`` (a regex substitution
    on the sample's path: ``regex:_S2\\.tif$=>_mask.tif`` names a sibling, ``regex:/images/=>/masks/`` a
    parallel tree)."""
    if rule.startswith("column:"):
        col = rule[len("column:"):]
        value = (extra or {}).get(col)
        if not value:
            raise DenseTaskError(f"{path}: no dense labels in manifest column {col!r} (data.masks={rule})")
        p = Path(str(value))
        return str(p if p.is_absolute() or base is None else base / p)
    if rule.startswith("regex:"):
        find, repl = _regex_rule(rule)
        target = re.sub(find, repl, str(path), count=1)
        if target == str(path):
            raise DenseTaskError(f"{path}: data.masks={rule} does not match this path, so it names no label file")
        if not Path(target).exists():
            raise DenseTaskError(f"{path}: its dense labels {target} (data.masks={rule}) do not exist")
        return target
    raise DenseTaskError(f"data.masks={rule!r} must be column:<name> or regex:<find>=><replace>")


def label_files(paths: list[str], rule: str | None) -> set[str]:
    """The files a ``regex:`` rule names from ``paths``: labels stored among the samples, to be left
    out of them."""
    if not rule or not rule.startswith("regex:"):
        return set()
    find, repl = _regex_rule(rule)
    known = set(paths)
    return {t for p in paths if re.search(find, p) and (t := re.sub(find, repl, p, count=1)) != p and t in known}


@torch.no_grad()
def predict_dense(model, view, batch_size: int = 8, device: torch.device | None = None) -> Iterator[dict]:
    """Per sample of ``view`` in order: ``index`` (the dataset's), ``id``, ``path``, ``labels`` [n, D]
    (argmax per element, n the sample's own token count) and ``truth`` [n, D] where the sample has
    dense targets."""
    from foundation.finetune import _encoder_of

    device = device or next(model.parameters()).device
    model.eval()
    outputs = model.outputs if hasattr(model, "outputs") else model.base_model.model.outputs
    hook = getattr(_encoder_of(model).adapter, "dense_logits", None) if hasattr(view, "dataset") else None
    if hook is not None:  # the adapter predicts each sample itself (e.g. by sliding windows)
        run = lambda batch: outputs(batch.to(device))  # noqa: E731
        for j in range(len(view)):
            smp, index = view[j], int(view.indices[j])
            logits = None if smp is None else hook(run, view.dataset, index, batch_size)
            if logits is None:  # skipped under data.on_error=skip
                continue
            n = smp.patches.shape[0]
            if logits.shape[0] != n:
                raise DenseTaskError(f"{smp.path}: the adapter's dense_logits gave {logits.shape[0]} tokens' logits for {n} tokens")
            yield {"index": index, "id": smp.id, "path": smp.path, "labels": logits.argmax(-1).cpu().numpy(),
                   "truth": None if smp.dense is None else smp.dense.numpy()}
        return
    for s in range(0, len(view), batch_size):
        js = range(s, min(len(view), s + batch_size))
        samples = [view[j] for j in js]
        batch = collate(samples).to(device)
        pred = outputs(batch).argmax(-1).cpu().numpy()
        for b, (j, smp) in enumerate(zip(js, samples)):
            n = smp.patches.shape[0]
            yield {"index": int(view.indices[j]), "id": smp.id, "path": smp.path, "labels": pred[b, :n],
                   "truth": None if smp.dense is None else smp.dense.numpy()}


def dense_evaluate(model, view, names: list[str], batch_size: int = 8, device=None) -> dict:
    """Dice / IoU (``foundation.evaluate.task_metrics``) of ``model`` over every labelled element of ``view``;
    ``n`` counts the samples, ``elements`` the labelled voxels, pixels or points."""
    from foundation.evaluate import task_metrics

    ys, ps, n = [], [], 0
    for r in predict_dense(model, view, batch_size, device):
        if r["truth"] is not None:
            ys.append(r["truth"].reshape(-1))
            ps.append(r["labels"].reshape(-1))
            n += 1
    if not ys:
        raise DenseTaskError("no sample of the evaluation split has dense labels (data.masks)")
    out = task_metrics("segmentation", np.concatenate(ys), np.concatenate(ps), names)
    out["elements"], out["n"] = out["n"], n  # n: samples, as every task's reports count them
    return out


def write_dense_predictions(ft, dataset, out: str | Path, batch_size: int = 8) -> Path:
    """``domainfm predict`` for a dense task: each sample's labels written by the adapter in its source
    geometry, plus an index CSV (id, path, prediction = the written file, fraction_<class>).

    ``out`` is a folder (files and ``predictions.csv`` in it) or a ``.csv`` path (files in a folder of
    the same stem beside it)."""
    from foundation.finetune import LabelledView

    out = Path(out)
    csv_path, folder = (out, out.with_suffix("")) if out.suffix == ".csv" else (out / "predictions.csv", out)
    folder.mkdir(parents=True, exist_ok=True)
    view = LabelledView(dataset, np.arange(len(dataset)))
    preds = list(predict_dense(ft.model, view, batch_size))
    written = dict(ft.model.encoder.adapter.write_dense(dataset, ((r["index"], r["labels"]) for r in preds), folder, ft.names))
    c = len(ft.names)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "prediction"] + [f"fraction_{n}" for n in ft.names])
        for r in preds:
            frac = np.bincount(r["labels"].reshape(-1), minlength=c)[:c] / max(1, r["labels"].size)
            w.writerow([r["id"], r["path"], written.get(r["index"], "")] + [f"{x:.6g}" for x in frac])
    return csv_path
