"""`domainfm finetune | predict | evaluate | report` end to end on files, the predictions of a fresh
process, and reports whose PNGs have real content."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from foundation.cli import build_parser, main
from foundation.finetune import LabelledView, run_finetune
from foundation.model import Encoder
from tests.foundation.finetune_data import factor_tokens, grid_adapter

ROOT = Path(__file__).resolve().parents[2]


def png_has_content(path: Path) -> bool:
    """A plot, not a blank canvas: a real share of pixels differ from the background colour."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    background = np.median(img.reshape(-1, 3), axis=0)
    differ = np.abs(img - background).max(-1) > 0.1
    return bool(differ.mean() > 0.01 and len(np.unique(img.reshape(-1, 3).round(2), axis=0)) > 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """60 labelled .npy images in class folders, an id pattern giving 12 groups, and an exported encoder."""
    d = tmp_path_factory.mktemp("ft")
    ds = factor_tokens(60, "classification")
    for i, item in enumerate(ds.items):
        folder = d / "data" / ds.classes[ds.y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        img = item.patches.reshape(2, 4, 2, 2).permute(0, 2, 1, 3).reshape(1, 4, 8).numpy()  # back to the image
        np.save(folder / f"g{i % 12:02d}_{i:03d}.npy", img)
    torch.manual_seed(0)
    Encoder(grid_adapter(), width=32, depth=1, heads=2).save_pretrained(d / "enc")
    return d


def test_finetune_then_predict_in_a_fresh_process(files):
    run = files / "run"
    out, ft = run_finetune(files / "enc", str(files / "data"), ["data.labels=folder", "data.groups=pattern:^(g\\d+)_",
                                                                  "finetune.method=linear", "finetune.steps=40", "finetune.lr=0.01",
                                                                  "finetune.val_fraction=0.25", f"run.dir={run}"], progress=False)
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["split"] == "validation" and ev["metrics"]["accuracy"] > 0.8  # 3 classes: chance 1/3
    cfg = json.loads((out / "finetuned.json").read_text())
    assert cfg["names"] == ["level0", "level1", "level2"] and cfg["task"] == "classification"
    assert (out / "encoder" / "model.safetensors").exists() and (out / "head.safetensors").exists()
    assert (out / "head.safetensors").stat().st_mode & 0o044 == 0o044  # readable by teammates under umask 022
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    pred = files / "pred.csv"
    subprocess.run([sys.executable, "-m", "foundation.cli", "predict", str(out), str(files / "data"), "--out", str(pred)],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    with open(pred) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["id", "path", "prediction"] and list(rows[0])[3:] == [f"score_{n}" for n in cfg["names"]]
    dataset = ft.model.encoder.adapter.dataset({"root": str(files / "data")}, train=False)
    here = ft.scores(LabelledView(dataset, np.arange(len(dataset))))
    fresh = np.array([[float(r[f"score_{n}"]) for n in cfg["names"]] for r in rows])
    assert [r["path"] for r in rows] == list(here["paths"])
    assert np.abs(fresh - here["scores"]).max() < 1e-5
    assert [r["prediction"] for r in rows] == [cfg["names"][i] for i in here["scores"].argmax(1)]
    # negative control: another model's head gives other scores (the comparison can fail)
    with torch.no_grad():
        ft.model.head.fc.weight.mul_(1.01)
    assert np.abs(ft.scores(LabelledView(dataset, np.arange(len(dataset))))["scores"] - fresh).max() > 1e-5
    # the report and its PNGs
    report = (out / "report.md").read_text()
    assert "learning_curves.png" in report and "confusion_matrix.png" in report
    assert png_has_content(out / "learning_curves.png") and png_has_content(out / "confusion_matrix.png")
    # `domainfm report` regenerates it from the logs
    (out / "learning_curves.png").unlink()
    assert main(["report", str(run), "--html"]) == 0
    assert png_has_content(out / "learning_curves.png") and (out / "report.html").exists()


def test_regression_from_a_manifest_predicts_values(files, tmp_path):
    rows = []
    for p in sorted((files / "data").rglob("*.npy")):
        rows.append({"path": str(p), "y": f"{float(np.load(p).mean()) * 10:.4f}"})
    man = tmp_path / "m.csv"
    with open(man, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "y"])
        w.writeheader()
        w.writerows(rows)
    out, ft = run_finetune(files / "enc", str(man), ["data.labels=column:y", "finetune.task=regression", "finetune.method=linear",
                                                      "finetune.steps=60", "finetune.lr=0.01", f"run.dir={tmp_path / 'run'}"], progress=False)
    assert main(["predict", str(out), str(man), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as f:
        pred = list(csv.DictReader(f))
    assert list(pred[0]) == ["id", "path", "prediction"]
    y, p = np.array([float(r["y"]) for r in rows]), np.array([float(r["prediction"]) for r in pred])
    assert 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.7  # values in the label's unit


def test_evaluate_writes_results_and_per_class_plots(files):
    out = files / "eval" / "result.json"
    assert main(["evaluate", str(files / "enc"), str(files / "data"), "data.labels=folder", "probe.k=[5]", "probe.seeds=3",
                 "--baselines", "classical", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    row = res["rows"][0]
    assert res["arms"] == ["model", "classical"] and row["model"]["accuracy"]["mean"] > 0.7
    assert set(row["model"]["per_class"]) == {"level0", "level1", "level2"}
    assert {"diff", "ci_low", "ci_high"} <= set(row["classical"]["vs_model"])
    assert png_has_content(files / "eval" / "per_class_k5.png")


def test_pretrain_report_from_logs(tmp_path):
    with open(tmp_path / "metrics.csv", "w") as f:
        f.write("step,epoch,loss,lr,grad_norm,samples_per_s,peak_mem_mb,ema_momentum\n")
        for s in range(10, 210, 10):
            f.write(f"{s},0,{1.0 / (1 + s / 50):.4f},{1e-3 * min(1, s / 50):.3e},{0.5 + 0.1 * np.sin(s):.3f},{900 + s},100,\n")
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 200, "final_loss": 0.2}))
    assert main(["report", str(tmp_path)]) == 0
    assert "training_curves.png" in (tmp_path / "report.md").read_text()
    assert png_has_content(tmp_path / "training_curves.png")


def test_blank_png_is_not_content(tmp_path):
    """Negative control of the PNG check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.savefig(tmp_path / "blank.png")
    plt.close(fig)
    assert not png_has_content(tmp_path / "blank.png")


@pytest.mark.parametrize("command", ["finetune", "predict", "evaluate", "report"])
def test_help_is_complete_with_examples(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and f"domainfm {command}" in text.split("examples:")[1]


def test_quality_is_label_free_and_sees_collapse(files):
    """RankMe of a collapsed encoder (final norm zeroed: every sample embeds to the same vector) falls
    to about 1; the random encoder's is well above it."""
    from foundation.evaluate import quality_task
    from foundation.model import Encoder

    enc = Encoder.from_pretrained(files / "enc")
    dataset = enc.adapter.dataset({"root": str(files / "data")}, train=True)
    ok = quality_task(enc, dataset, {}, [])["signals"]["model"]
    with torch.no_grad():
        enc.trunk.norm.weight.zero_()
    collapsed = quality_task(enc, dataset, {}, [])["signals"]["model"]
    assert ok["rankme"] > 3 and collapsed["rankme"] < 1.5, (ok, collapsed)
    assert main(["evaluate", str(files / "enc"), str(files / "data"), "--task", "quality", "--out", str(files / "q" / "r.json")]) == 0
    assert "rankme" in (files / "q" / "report.md").read_text()


def test_a_finetuning_run_exports_with_its_head_and_predicts_the_same(files, tmp_path):
    """`domainfm export` of a fine-tuning run writes the encoder (checked like any export) with its head and
    finetuned.json; `predict` on the export equals `predict` on the run. Control: the export of the plain encoder
    has no head, and predict refuses it."""
    run = tmp_path / "run"
    out, _ = run_finetune(files / "enc", str(files / "data"), ["data.labels=folder", "finetune.method=linear",
                                                               "finetune.steps=20", "finetune.lr=0.01", f"run.dir={run}"], progress=False)
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported"
    config = json.loads((exported / "config.json").read_text())
    assert config["modules"]["head"] == "head.safetensors" and (exported / "model.onnx").exists()
    a, b = tmp_path / "run.csv", tmp_path / "export.csv"
    assert main(["predict", str(out), str(files / "data"), "--out", str(a)]) == 0
    assert main(["predict", str(exported), str(files / "data"), "--out", str(b)]) == 0
    rows_a, rows_b = (list(csv.DictReader(open(p))) for p in (a, b))
    assert [r["prediction"] for r in rows_a] == [r["prediction"] for r in rows_b]
    score = [k for k in rows_a[0] if k.startswith("score_")]
    assert max(abs(float(x[k]) - float(y[k])) for x, y in zip(rows_a, rows_b) for k in score) < 1e-5
    assert main(["export", str(files / "enc"), str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "head.safetensors").exists()
    assert main(["predict", str(tmp_path / "plain"), str(files / "data"), "--out", str(tmp_path / "x.csv")]) == 1
