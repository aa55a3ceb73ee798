"""The fine-tuning report of a dense run names what it plots: the validation score is mean Dice (not
"accuracy, per-label accuracy or R²"), Dice and IoU per class in a table and a plot, and the confusion
matrix as fractions of each true class; its PNGs have real content."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foundation.dense_metrics import segmentation_metrics
from foundation.report import finetune_report
from tests.integration.test_finetune_cli import png_has_content


def write_run(run: Path, task: str, metrics: dict, names: list[str]) -> Path:
    """A fine-tuning run as ``run_finetune`` leaves it: metrics.csv, the validation scores in TensorBoard
    (``monitor/val_score``, as ``foundation.finetune.fit`` logs them), finetuned.json and evaluation.json."""
    from torch.utils.tensorboard import SummaryWriter

    ft = run / "finetuned"
    ft.mkdir(parents=True)
    with open(run / "metrics.csv", "w") as f:
        f.write("step,epoch,loss,lr,grad_norm\n")
        for s in range(1, 41):
            f.write(f"{s},0,{1.5 / (1 + s / 10):.4f},{1e-3 * min(1, s / 5):.3e},{0.5 + 0.1 * np.sin(s):.3f}\n")
    writer = SummaryWriter(str(run / "tensorboard"))
    for s in range(10, 41, 10):
        writer.add_scalar("monitor/val_score", 0.2 + s / 100, s)
    writer.close()
    (ft / "finetuned.json").write_text(json.dumps({"task": task, "method": "linear", "names": names, "n_train": 12,
                                                   "finetune": {"steps": 40}}))
    (ft / "evaluation.json").write_text(json.dumps({"split": "validation", "metrics": metrics}))
    return ft


def dense_metrics() -> dict:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 5000)
    pred = np.where(rng.random(5000) < 0.7, y, rng.integers(0, 3, 5000))
    m = segmentation_metrics(y, pred, 3, ["background", "liver", "lesion"])
    m["elements"], m["n"] = m["n"], 4
    return m


def test_dense_report_names_mean_dice_and_renders_its_plots(tmp_path):
    pytest.importorskip("tensorboard")
    ft = write_run(tmp_path / "run", "segmentation", dense_metrics(), ["background", "liver", "lesion"])
    text = finetune_report(ft).read_text()
    assert "Validation score over steps (mean Dice over the foreground classes)" in text
    assert "accuracy, per-label accuracy or R²" not in text and "accuracy)" not in text
    assert "| class | Dice | IoU |" in text and "| lesion |" in text
    for png in ("learning_curves.png", "validation.png", "per_class_dice.png", "confusion_matrix.png"):
        assert f"({png})" in text and png_has_content(ft / png), png


def test_classification_report_keeps_accuracy(tmp_path):
    """Negative control: the caption follows the task, so a classification run still says accuracy
    and has no Dice table."""
    pytest.importorskip("tensorboard")
    metrics = {"accuracy": 0.8, "n": 10, "confusion_matrix": [[4, 1], [1, 4]], "per_class_accuracy": {"a": 0.8, "b": 0.8}}
    ft = write_run(tmp_path / "run", "classification", metrics, ["a", "b"])
    text = finetune_report(ft).read_text()
    assert "Validation score over steps (accuracy)" in text and "Dice" not in text
    assert png_has_content(ft / "validation.png") and png_has_content(ft / "confusion_matrix.png")
