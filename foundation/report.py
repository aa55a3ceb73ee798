"""report.md with PNG plots, written from what a run leaves on disk (so ``domainfm report`` can
regenerate it at any time): pretraining runs (``metrics.csv``, TensorBoard monitor scalars),
fine-tuning runs (``metrics.csv`` plus ``finetuned/evaluation.json``) and evaluations (``result.json``).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

PRETRAIN_CURVES = [("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"),
                   ("samples_per_s", "throughput (samples/s)")]
# what ``monitor/val_score`` is per fine-tuning task (``foundation.finetune``: ``outputs_metric``, and
# ``dense_evaluate``'s mean Dice for dense tasks)
VALIDATION_SCORE = {"classification": "accuracy", "multilabel": "mean per-label accuracy", "regression": "R²",
                    "segmentation": "mean Dice"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a metrics.csv as float arrays (empty cells are NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = rows[0].keys() if rows else []

    def num(v: str) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return {c: np.array([num(r[c]) for r in rows]) for c in cols}


def plot_curves(metrics: dict[str, np.ndarray], curves: list[tuple[str, str]], out: Path, title: str = "") -> Path | None:
    """One panel per curve over ``step``; columns that are absent or all empty are left out."""
    curves = [(c, t) for c, t in curves if c in metrics and np.isfinite(metrics[c]).any()]
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (col, label) in zip(axes[0], curves):
        ok = np.isfinite(metrics[col])
        ax.plot(metrics["step"][ok], metrics[col][ok], marker="." if ok.sum() < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(label)
        if col == "loss" and (metrics[col][ok] > 0).all() and metrics[col][ok].max() / max(metrics[col][ok].min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(cm: list[list[int]], names: list[str], out: Path, title: str, normalize: bool = False) -> Path:
    """Counts, or with ``normalize`` each true class's row as fractions (dense tasks: a volume's voxel
    counts do not fit a cell, and background would swamp the colour scale)."""
    plt = _plt()
    cm = np.asarray(cm)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(3.8, 1.2 + 0.6 * n), 1.0 + 0.6 * n))  # wide enough for the title
    ax.imshow(cm, cmap="Blues", vmin=0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (rows sum to 1)" if normalize else "true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_per_class(names: list[str], mean: list[float], lo: list[float], hi: list[float], out: Path, title: str,
                   ylabel: str = "accuracy") -> Path:
    """Per-class accuracy (or ``ylabel``: Dice) with its interval as error bars."""
    plt = _plt()
    m, lo, hi = np.asarray(mean, float), np.asarray(lo, float), np.asarray(hi, float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(names), 3.2))
    x = np.arange(len(names))
    ax.bar(x, m, color="tab:blue", alpha=0.8)
    ax.errorbar(x, m, yerr=[np.clip(m - lo, 0, None), np.clip(hi - m, 0, None)], fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _monitor_scalars(run_dir: Path) -> dict[str, np.ndarray]:
    """RankMe/collapse signals the engine logs to TensorBoard (``monitor/*``), as step-aligned columns."""
    tb = run_dir / "tensorboard"
    if not tb.exists():
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    acc = EventAccumulator(str(tb))
    acc.Reload()
    out: dict[str, np.ndarray] = {}
    for tag in acc.Tags().get("scalars", []):
        if tag.startswith("monitor/"):
            ev = acc.Scalars(tag)
            out["step"] = np.array([e.step for e in ev], float)
            out[tag.split("/", 1)[1]] = np.array([e.value for e in ev], float)
    return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def pretrain_report(run_dir: str | Path) -> Path:
    """report.md for a pretraining run: loss, learning rate, gradient norm, throughput and the monitor's
    collapse signals (RankMe...) over steps, plus the run's summary."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.exists():
        from foundation.errors import RunDirError

        raise RunDirError(f"{run_dir}: no metrics.csv, so nothing to report (is it a pretraining or fine-tuning run directory?)")
    m = read_metrics(metrics_path)
    lines = [f"# Pretraining report: {run_dir.name}", ""]
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in s.items() if not isinstance(v, (list, dict))] + [""]
    if plot_curves(m, PRETRAIN_CURVES, run_dir / "training_curves.png", "pretraining"):
        lines += ["![training curves](training_curves.png)", ""]
    mon = _monitor_scalars(run_dir)
    if mon and plot_curves(mon, [(k, k) for k in mon if k != "step"], run_dir / "monitor.png", "collapse signals (held-out batch)"):
        lines += ["Collapse signals on a held-out batch (RankMe: effective rank of the embeddings; a fall means collapse).", "",
                  "![monitor](monitor.png)", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def finetune_report(finetuned_dir: str | Path, metrics_csv: str | Path | None = None) -> Path:
    """report.md in a ``finetuned/`` directory: setup, metrics on the evaluation split, learning
    curves, the validation score over steps (named for the task: accuracy, per-label accuracy, R² or
    mean Dice), and the confusion matrix (classification; dense tasks: row fractions over elements,
    with Dice and IoU per class)."""
    d = Path(finetuned_dir)
    cfg = json.loads((d / "finetuned.json").read_text())
    ev = json.loads((d / "evaluation.json").read_text()) if (d / "evaluation.json").exists() else {}
    lines = [f"# Fine-tuning report: {cfg['method']} / {cfg['task']}", "",
             f"- labels: {', '.join(cfg['names'])}" if cfg["task"] != "regression" else "- target: a number (regression)",
             f"- training samples: {cfg.get('n_train', '?')}; evaluation split: {ev.get('split', 'none')} ({ev.get('metrics', {}).get('n', 0)} samples)",
             f"- budget: {cfg.get('finetune', {}).get('steps', '?')} steps" + (", early stopping on the validation set" if cfg.get("finetune", {}).get("patience") else " (fixed)"),
             ""]
    if ev.get("split") == "train":
        lines += ["No validation set was given (`finetune.val_fraction`), so the metrics below are on the training samples: "
                  "they show the fit, not how well the model generalises.", ""]
    mets = ev.get("metrics", {})
    flat = {k: v for k, v in mets.items() if isinstance(v, (int, float))}
    if flat:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in flat.items()] + [""]
    dense = isinstance(mets.get("dice"), dict)  # a dense task: Dice and IoU per class, over every element
    if dense:
        names = list(mets["dice"])
        dice = [float(mets["dice"][k]) for k in names]
        lines += ["| class | Dice | IoU |", "|---|---|---|"] + [f"| {k} | {_fmt(v)} | {_fmt(float(mets.get('iou', {}).get(k, math.nan)))} |"
                                                              for k, v in zip(names, dice)] + [""]
        plot_per_class(names, dice, dice, dice, d / "per_class_dice.png", f"Dice per class ({ev.get('split')})", ylabel="Dice")
        lines += ["![Dice per class](per_class_dice.png)", ""]
    if mets.get("per_class_accuracy"):
        lines += ["| class | accuracy |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in mets["per_class_accuracy"].items()] + [""]
    metrics_csv = Path(metrics_csv) if metrics_csv else d.parent / "metrics.csv"
    if metrics_csv.exists() and metrics_csv.stat().st_size:
        m = read_metrics(metrics_csv)
        if m and plot_curves(m, [("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm")],
                             d / "learning_curves.png", "fine-tuning"):
            lines += ["![learning curves](learning_curves.png)", ""]
    val = _monitor_scalars(metrics_csv.parent)
    score = VALIDATION_SCORE.get(cfg["task"], "the task's score")
    if "val_score" in val and plot_curves(val, [("val_score", f"validation {score}")], d / "validation.png", "validation"):
        over = " over the foreground classes" if dense else ""
        lines += [f"Validation score over steps ({score}{over}):", "", "![validation](validation.png)", ""]
    if "confusion_matrix" in mets:
        plot_confusion(mets["confusion_matrix"], cfg["names"], d / "confusion_matrix.png", f"confusion matrix ({ev.get('split')})",
                       normalize=dense)
        lines += ["![confusion matrix](confusion_matrix.png)", ""]
    out = d / "report.md"
    out.write_text("\n".join(lines))
    return out


def report(run_dir: str | Path, html: bool = False) -> Path:
    """Regenerate the report of a run directory: a fine-tuning run (or its ``finetuned/``), an
    evaluation (``result.json``) or a pretraining run."""
    from foundation.errors import RunDirError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a directory (give a pretraining, fine-tuning or evaluation run directory)")
    if (run_dir / "finetuned.json").exists():
        out = finetune_report(run_dir)
    elif (run_dir / "finetuned" / "finetuned.json").exists():
        out = finetune_report(run_dir / "finetuned", run_dir / "metrics.csv")
    elif (run_dir / "result.json").exists() and not (run_dir / "metrics.csv").exists():
        from foundation.evaluate import evaluation_report

        out = evaluation_report(json.loads((run_dir / "result.json").read_text()), run_dir)
    else:
        out = pretrain_report(run_dir)
    if html:
        out = to_html(out)
    return out


def to_html(md_path: Path) -> Path:
    """A self-contained-enough HTML view of report.md (images stay beside it)."""
    import html as h
    import re

    body = []
    rows: list[str] = []
    for line in md_path.read_text().splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                cells = [h.escape(c.strip()) for c in line.strip("|").split("|")]
                rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if rows:
            body.append("<table border=1 cellpadding=4>" + "".join(rows) + "</table>")
            rows = []
        img = re.match(r"!\[(.*)\]\((.*)\)", line)
        if img:
            body.append(f'<p><img alt="{h.escape(img.group(1))}" src="{h.escape(img.group(2))}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{h.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{h.escape(line)}</p>")
    out = md_path.with_suffix(".html")
    out.write_text("<!doctype html><meta charset=utf-8><title>domainfm report</title>\n" + "\n".join(body))
    return out
