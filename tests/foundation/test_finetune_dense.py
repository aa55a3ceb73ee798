"""Dense fine-tuning (finetune.task=segmentation) through the one fine-tuning path: it learns (Dice and
mIoU above a constant predictor), and `predict` writes labels that overlay the source geometry exactly
(NIfTI affine, GeoTIFF transform and CRS), the same in a fresh process."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from foundation.dense import dense_evaluate, predict_dense, write_dense_predictions
from foundation.dense_metrics import segmentation_metrics
from foundation.finetune import (FINETUNE_DEFAULTS, Finetuned, FinetuneModel, LabelledView, Targets, finetune_indices, load_finetuned,
                                 run_finetune)
from foundation.model import Encoder
from foundation.tokens import collate
from modalities.earth.adapter import EarthAdapter
from modalities.earth.synthetic import write_synthetic
from modalities.medical.adapter import MedicalAdapter
from modalities.medical.synthetic import write_cohort
from tests.integration.test_finetune_cli import png_has_content

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 32, "depth": 2, "heads": 2}


def constant_predictor(ds, train: np.ndarray, test: np.ndarray, classes: int) -> dict:
    """The baseline a dense model must beat: every element of the test samples gets the training
    samples' most frequent class."""
    y_train = np.concatenate([ds[int(i)].dense.numpy().ravel() for i in train])
    top = np.bincount(y_train[y_train >= 0], minlength=classes).argmax()
    y = np.concatenate([ds[int(i)].dense.numpy().ravel() for i in test])
    return segmentation_metrics(y, np.full_like(y, top), classes)


# -- earth: per-pixel segmentation of chips --------------------------------------------------------
@pytest.fixture(scope="module")
def earth(tmp_path_factory):
    """16 synthetic 32x32 chips with per-pixel material maps (6 materials) and an exported encoder."""
    d = tmp_path_factory.mktemp("earth_dense")
    data = write_synthetic(d / "syn", 16, seed=0, size=32, with_sar=False, with_masks=True)
    adapter = EarthAdapter({"chip_size": 32, "patch_size": 8})
    adapter.fit(adapter.dataset(data, train=True))
    torch.manual_seed(0)
    Encoder.build(adapter, SMALL).save_pretrained(d / "enc")
    return d, data


@pytest.mark.parametrize("method", ["linear", pytest.param("lora", marks=pytest.mark.slow), pytest.param("full", marks=pytest.mark.slow)])
def test_earth_segmentation_learns(earth, method):
    d, data = earth
    enc = Encoder.from_pretrained(d / "enc")
    ds = enc.adapter.dense_dataset(data, train=True)
    targets = Targets("segmentation", np.zeros(len(ds), np.int64), ds.dense_classes)
    train, test = np.arange(12), np.arange(12, 16)
    cfg = {**FINETUNE_DEFAULTS, "task": "segmentation", "method": method, "steps": 100 if method == "full" else 40,
           "batch_size": 8}
    ft = finetune_indices(enc, ds, targets, train, cfg, seed=0)
    got = dense_evaluate(ft.model, LabelledView(ds, test), targets.names)
    base = constant_predictor(ds, train, test, len(targets.names))
    assert ft.history["final_loss"] < ft.history["first_loss"]
    assert got["miou"] > base["miou"] + 0.2, (got["miou"], base["miou"])
    assert got["mean_dice"] > base["mean_dice"] + 0.3, (got["mean_dice"], base["mean_dice"])


def test_earth_dense_targets_follow_the_training_views(earth):
    """A rotated/mirrored training view rotates the labels with the pixels: the labelled material's
    spectrum stays the same per class (negative control: labels of the unrotated chip do not fit)."""
    d, data = earth
    ds = Encoder.from_pretrained(d / "enc").adapter.dense_dataset(data, train=True)

    def spread(s, dense) -> float:  # how far pixels of one class are from their class's mean spectrum
        pix = s.patches.reshape(s.patches.shape[0], len(ds.channels), -1).transpose(1, 2).reshape(-1, len(ds.channels))
        y = dense.reshape(-1)
        return float(sum(((pix[y == c] - pix[y == c].mean(0)) ** 2).sum() for c in y.unique() if c >= 0) / (y >= 0).sum())

    moved = [seed for seed in range(20) if not torch.equal(ds[(0, seed)].patches, ds[0].patches)]
    assert moved, "no training view differs from the evaluation view"
    view = ds[(0, moved[0])]
    assert spread(view, view.dense) < 0.5 * spread(view, ds[0].dense)


def test_earth_predict_overlays_the_scene_grid_in_a_fresh_process(earth, tmp_path):
    d, data = earth
    run = tmp_path / "run"
    out, ft = run_finetune(d / "enc", data["root"], ["finetune.task=segmentation", "finetune.method=linear", "finetune.steps=30",
                                                     f"data.masks={data['masks']}", "finetune.val_fraction=0.25", f"run.dir={run}"],
                           progress=False)
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["split"] == "validation" and {"mean_dice", "miou", "dice"} <= set(ev["metrics"])
    report = (out / "report.md").read_text()
    assert "Fine-tuning report" in report and "| class | Dice | IoU |" in report and png_has_content(out / "per_class_dice.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "foundation.cli", "predict", str(out), data["root"], "--out", str(tmp_path / "pred")],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and list(rows[0])[:3] == ["id", "path", "prediction"]
    # the same labels here, from the saved model
    here = write_dense_predictions(load_finetuned(out), ft.model.encoder.adapter.dense_dataset({"root": data["root"]}, train=False),
                                   tmp_path / "here")
    agree, shifted = [], []
    for row in rows:
        written = Path(row["prediction"])
        with rasterio.open(row["path"]) as src, rasterio.open(written) as pred, rasterio.open(here.parent / written.name) as same:
            assert pred.transform == src.transform and pred.crs == src.crs and pred.shape == src.shape
            # negative control of the check: a grid one pixel off is caught
            assert pred.transform != src.transform * Affine.translation(1, 0)
            labels = pred.read(1)
            assert np.array_equal(labels, same.read(1))
        with rasterio.open(row["path"].replace("/s2/", "/masks/").replace("_S2.tif", "_mask.tif")) as m:
            truth = m.read(1)
        ok = truth != 255
        agree.append((labels == truth)[ok].mean())
        shifted.append((np.roll(labels, 5, axis=1) == truth)[ok].mean())
    # the labels sit where their pixels are: moved by 5 pixels they fit the mask worse
    assert np.mean(agree) > np.mean(shifted) + 0.1, (np.mean(agree), np.mean(shifted))


def test_earth_writer_puts_every_label_back_on_its_pixel(earth, tmp_path):
    """The true labels through the writer give back the mask file (nodata where it has none); a
    label map moved by one patch does not."""
    d, data = earth
    adapter = Encoder.from_pretrained(d / "enc").adapter
    ds = adapter.dense_dataset(data, train=False)
    ds_truth = adapter.dense_dataset(data, train=True)
    names = ds_truth.dense_classes
    files = dict(adapter.write_dense(ds, ((i, ds_truth[i].dense.numpy()) for i in range(len(ds))), tmp_path, names))
    moved = dict(adapter.write_dense(ds, ((i, np.roll(ds_truth[i].dense.numpy(), 1, axis=0)) for i in range(len(ds))), tmp_path / "moved", names))
    for i in range(len(ds)):
        mask = ds.masks[ds.chips[i].scene]
        with rasterio.open(mask) as m, rasterio.open(files[i]) as w, rasterio.open(moved[i]) as v:
            truth = m.read(1)
            assert np.array_equal(w.read(1), truth)
            assert not np.array_equal(v.read(1), truth)


# -- medical: voxel segmentation of volumes ----------------------------------------------------------
@pytest.fixture(scope="module")
def medical(tmp_path_factory):
    """8 synthetic 32^3 volumes with 4-class masks, stored with a flipped axis and an offset origin (so
    writing predictions back must undo the reorientation), and an exported encoder (8^3 patches)."""
    d = tmp_path_factory.mktemp("medical_dense")
    data = write_cohort(d / "cohort", 8, seed=0, size=(32, 32, 32))
    affine = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -12.0], [0, 0, 1.5, 7.5], [0, 0, 0, 1]])
    for path in sorted((d / "cohort").rglob("*.nii.gz")):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(path))
    adapter = MedicalAdapter({"patch": [8, 8, 8], "roi": [16, 16, 16], "sw_roi": [16, 16, 16], "cache": "memory"})
    torch.manual_seed(0)
    Encoder.build(adapter, SMALL).save_pretrained(d / "enc")
    return d, data, affine


@pytest.mark.slow
def test_medical_segmentation_learns(medical):
    d, data, _ = medical
    enc = Encoder.from_pretrained(d / "enc")
    ds = enc.adapter.dense_dataset(data, train=True)
    assert ds.dense_classes == ["0", "1", "2", "3"]
    targets = Targets("segmentation", np.zeros(len(ds), np.int64), ds.dense_classes)
    train, test = np.arange(6), np.arange(6, 8)
    cfg = {**FINETUNE_DEFAULTS, "task": "segmentation", "method": "linear", "steps": 20, "batch_size": 4}
    ft = finetune_indices(enc, ds, targets, train, cfg, seed=0)
    got = dense_evaluate(ft.model, LabelledView(ds, test), targets.names)
    base = constant_predictor(ds, train, test, 4)
    assert got["miou"] > base["miou"] + 0.15, (got["miou"], base["miou"])
    assert got["mean_dice"] > base["mean_dice"] + 0.3, (got["mean_dice"], base["mean_dice"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_medical_segmentation_learns_when_the_encoder_trains(medical, method):
    d, data, _ = medical
    enc = Encoder.from_pretrained(d / "enc")
    ds = enc.adapter.dense_dataset(data, train=True)
    targets = Targets("segmentation", np.zeros(len(ds), np.int64), ds.dense_classes)
    cfg = {**FINETUNE_DEFAULTS, "task": "segmentation", "method": method, "steps": 40, "batch_size": 4}
    ft = finetune_indices(enc, ds, targets, np.arange(6), cfg, seed=0)
    got = dense_evaluate(ft.model, LabelledView(ds, np.arange(6, 8)), targets.names)
    base = constant_predictor(ds, np.arange(6), np.arange(6, 8), 4)
    assert got["mean_dice"] > base["mean_dice"] + 0.3 and got["miou"] > base["miou"] + 0.15


def test_medical_writer_restores_the_source_space(medical, tmp_path):
    """The true labels of the preprocessed (reoriented, cropped) volumes, written back, equal the source
    masks voxel for voxel with the source affine; moved by one patch they do not."""
    d, data, affine = medical
    adapter = Encoder.from_pretrained(d / "enc").adapter
    ds = adapter.dense_dataset({**data, "masks": "column:seg"}, train=False)
    labels = [ds[i].dense.numpy().clip(min=0) for i in range(len(ds))]
    files = dict(adapter.write_dense(ds, enumerate(labels), tmp_path, ds.dense_classes))
    moved = dict(adapter.write_dense(ds, ((i, np.roll(x, 1, axis=0)) for i, x in enumerate(labels)), tmp_path / "moved", ds.dense_classes))
    for i, item in enumerate(ds.items):
        src, out = nib.load(item["image"]), nib.load(files[i])
        assert out.shape == src.shape
        assert np.allclose(out.affine, src.affine, atol=1e-5) and np.allclose(out.affine, affine, atol=1e-5)
        shifted = affine.copy()
        shifted[0, 3] += 1.5  # negative control of the check: one voxel off is caught
        assert not np.allclose(out.affine, shifted, atol=1e-5)
        truth = np.asarray(nib.load(item["seg"]).dataobj)
        assert np.array_equal(np.asarray(out.dataobj), truth)
        assert not np.array_equal(np.asarray(nib.load(moved[i]).dataobj), truth)


def _random_dense_model(d: Path) -> FinetuneModel:
    """The fixture's encoder under a fresh, narrow UNETR head (4 features: fast on CPU): untrained, but
    its logits vary voxel by voxel."""
    from modalities.medical.tasks import UNETRHead

    enc = Encoder.from_pretrained(d / "enc")
    torch.manual_seed(0)
    model = FinetuneModel(enc, "full", "segmentation", 4)
    model.head = UNETRHead(enc, 4, features=4)
    return model.eval()


def test_medical_sliding_windows_equal_the_single_pass_on_a_volume_that_fits(medical):
    """A volume inside one ``sw_roi`` window is that window: the sliding-window logits equal the whole
    volume's single pass (within 1e-5); negative control: windows smaller than the volume, unblended, differ."""
    from modalities.medical.tasks import window_logits

    d, data, _ = medical
    model = _random_dense_model(d)
    ds = model.encoder.adapter.dense_dataset(data, train=False)
    sample = ds[0]
    with torch.no_grad():
        single = model.outputs(collate([sample]))[0]
    assert sample.patches.shape[0] > 8, "the volume must be larger than the 16^3 window of the control"
    ds.cfg["sw_roi"] = [64, 64, 64]  # larger than the volume: one window, clamped to it
    fits = window_logits(model.outputs, ds, 0)
    assert fits.shape == single.shape, (fits.shape, single.shape)
    assert torch.allclose(fits, single, atol=1e-5), float((fits - single).abs().max())
    ds.cfg["sw_roi"], ds.cfg["sw_overlap"] = [16, 16, 16], 0.0
    windows = window_logits(model.outputs, ds, 0)
    assert windows.shape == single.shape and float((windows - single).abs().max()) > 1e-2


def test_medical_prediction_sees_one_window_at_a_time_and_keeps_the_source_space(medical, tmp_path):
    """Evaluation and `predict` run a volume larger than ``sw_roi`` by windows: the encoder never sees
    more than prod(sw_roi / patch) tokens per sample (a forward hook counts them), the labels cover every
    token of the volume, and the written NIfTI has the source's shape and affine."""
    d, data, affine = medical
    model = _random_dense_model(d)
    with open(data["manifest"]) as f:  # one volume keeps the test fast
        rows = list(csv.DictReader(f))[:1]
    manifest = tmp_path / "one.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": str(Path(data["manifest"]).parent / r["path"]), "seg": str(Path(data["manifest"]).parent / r["seg"])}
                    for r in rows)
    ds = model.encoder.adapter.dense_dataset({"manifest": str(manifest)}, train=False)
    window_tokens = math.prod(r // p for r, p in zip(ds.cfg["sw_roi"], ds.cfg["patch"]))  # 8
    seen: list[int] = []
    handle = model.encoder.register_forward_hook(lambda m, args, out: seen.append(int(args[0].patches.shape[1])))
    try:
        csv_path = write_dense_predictions(Finetuned(model, "segmentation", "full", ["0", "1", "2", "3"]), ds, tmp_path / "pred")
    finally:
        handle.remove()
    assert seen and max(seen) <= window_tokens, seen
    assert all(ds[i].patches.shape[0] > window_tokens for i in range(len(ds)))  # a single pass would exceed it
    with open(csv_path) as f:
        written = list(csv.DictReader(f))
    assert len(written) == 1
    for row in written:
        out, src = nib.load(row["prediction"]), nib.load(row["path"])
        assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-5) and np.allclose(out.affine, affine, atol=1e-5)
        assert abs(sum(float(row[f"fraction_{c}"]) for c in "0123") - 1) < 1e-5


@pytest.mark.slow
def test_medical_finetune_then_predict_in_a_fresh_process(medical, tmp_path):
    d, data, affine = medical
    out, ft = run_finetune(d / "enc", data["manifest"], ["finetune.task=segmentation", "finetune.method=linear", "finetune.steps=6",
                                                         "finetune.batch_size=4", f"run.dir={tmp_path / 'run'}"], progress=False)
    cfg = json.loads((out / "finetuned.json").read_text())
    assert cfg["task"] == "segmentation" and cfg["names"] == ["0", "1", "2", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "foundation.cli", "predict", str(out), data["manifest"], "--out", str(tmp_path / "pred.csv")],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    with open(tmp_path / "pred.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    ds = ft.model.encoder.adapter.dense_dataset({"manifest": data["manifest"]}, train=False)
    here = {r["path"]: r["labels"] for r in predict_dense(load_finetuned(out).model, LabelledView(ds, np.arange(len(ds))))}
    for row in rows:
        written = nib.load(row["prediction"])
        assert Path(row["prediction"]).parent == tmp_path / "pred"
        assert np.allclose(written.affine, nib.load(row["path"]).affine, atol=1e-5)
        assert written.shape == nib.load(row["path"]).shape
        fractions = np.array([float(row[f"fraction_{c}"]) for c in cfg["names"]])
        assert np.allclose(fractions, np.bincount(here[row["path"]].ravel(), minlength=4) / here[row["path"]].size, atol=1e-5)


# -- point clouds: per-point segmentation ----------------------------------------------------------
@pytest.fixture(scope="module")
def lidar(tmp_path_factory):
    """12 small airborne-LiDAR-like tiles (.npz with per-point LAS classes 2 ground, 5 vegetation,
    6 building) and an exported encoder."""
    from modalities.pointcloud.adapter import PointCloudAdapter
    from modalities.pointcloud.synthetic import scan_scene

    d = tmp_path_factory.mktemp("pc_dense")
    rng = np.random.default_rng(0)
    (d / "tiles").mkdir()
    for i in range(12):
        xyz, lab = scan_scene(rng, points=1024)
        np.savez(d / "tiles" / f"tile_{i:02d}.npz", points=xyz, labels=lab)
    torch.manual_seed(0)
    Encoder.build(PointCloudAdapter({"points": 512, "groups": 32, "group_size": 16}), SMALL).save_pretrained(d / "enc")
    return d


@pytest.mark.slow
def test_pointcloud_segmentation_learns(lidar):
    enc = Encoder.from_pretrained(lidar / "enc")
    ds = enc.adapter.dense_dataset({"root": str(lidar / "tiles")}, train=True)
    assert ds.dense_classes == ["2", "5", "6"]  # LAS class values, in order
    targets = Targets("segmentation", np.zeros(len(ds), np.int64), ds.dense_classes)
    cfg = {**FINETUNE_DEFAULTS, "task": "segmentation", "method": "linear", "steps": 40, "batch_size": 8}
    ft = finetune_indices(enc, ds, targets, np.arange(9), cfg, seed=0)
    got = dense_evaluate(ft.model, LabelledView(ds, np.arange(9, 12)), targets.names)
    base = constant_predictor(ds, np.arange(9), np.arange(9, 12), 3)
    assert got["miou"] > base["miou"] + 0.15, (got["miou"], base["miou"])


def test_pointcloud_labels_are_written_in_the_input_point_order(lidar, tmp_path):
    """The true labels of the groups' points, written back, give each file's own labels in its own point
    order (points no group holds: their nearest labelled neighbour's); a file holding the same points
    in another order gets its labels in that order (negative control: not in the first file's)."""
    adapter = Encoder.from_pretrained(lidar / "enc").adapter
    tile = np.load(lidar / "tiles" / "tile_00.npz")
    order = np.random.default_rng(1).permutation(len(tile["labels"]))
    (tmp_path / "in").mkdir()
    np.savez(tmp_path / "in" / "a.npz", points=tile["points"], labels=tile["labels"])
    np.savez(tmp_path / "in" / "b.npz", points=tile["points"][order], labels=tile["labels"][order])
    truth = adapter.dense_dataset({"root": str(tmp_path / "in")}, train=True)  # labelled, for the true labels
    ds = adapter.dense_dataset({"root": str(tmp_path / "in")}, train=False)
    written = dict(adapter.write_dense(ds, ((i, truth[i].dense.numpy()) for i in range(len(ds))), tmp_path / "out", truth.dense_classes))
    a, b = np.load(written[0]), np.load(written[1])
    assert a.shape == b.shape == tile["labels"].shape
    covered = np.zeros(len(a), bool)
    covered[np.unique(ds.grouped(0, None)[1])] = True
    assert covered.sum() > 100 and np.array_equal(a[covered], tile["labels"][covered])
    assert (a == tile["labels"]).mean() > 0.9 and (b == tile["labels"][order]).mean() > 0.9
    assert (b == tile["labels"]).mean() < 0.8


# -- refusals: one line naming the key or file and the way out ----------------------------------------
def test_dense_refusals_name_the_way_out(tmp_path):
    from foundation.dense import DenseTaskError, label_files, mask_file
    from foundation.finetune import finetune_spec
    from foundation.recipes import RecipeError
    from modalities.speech.adapter import SpeechAdapter

    with pytest.raises(RecipeError, match="linear, full, lora"):
        finetune_spec(str(tmp_path), ["finetune.task=segmentation", "finetune.method=knn"])
    with pytest.raises(DenseTaskError, match="no dense task"):
        SpeechAdapter().dense_dataset({"root": str(tmp_path)}, train=True)
    (tmp_path / "a_S2.tif").touch()
    (tmp_path / "a_mask.tif").touch()
    rule = r"regex:_S2\.tif$=>_mask.tif"
    assert mask_file(str(tmp_path / "a_S2.tif"), rule) == str(tmp_path / "a_mask.tif")
    assert label_files([str(tmp_path / "a_S2.tif"), str(tmp_path / "a_mask.tif")], rule) == {str(tmp_path / "a_mask.tif")}
    with pytest.raises(DenseTaskError, match="does not match"):
        mask_file(str(tmp_path / "b.tif"), rule)
    with pytest.raises(DenseTaskError, match="do not exist"):
        mask_file(str(tmp_path / "c_S2.tif"), rule)
    with pytest.raises(DenseTaskError, match="column:<name> or regex"):
        mask_file(str(tmp_path / "a_S2.tif"), "masks/")
    assert mask_file("x.nii.gz", "column:seg", {"seg": "m/x.nii.gz"}, tmp_path) == str(tmp_path / "m" / "x.nii.gz")


@pytest.mark.slow
def test_evaluate_runs_the_few_label_protocol_on_a_dense_task(earth, tmp_path):
    """`domainfm evaluate --task finetune finetune.task=segmentation`: k labelled chips per draw, paired
    seeds, mean Dice per arm with the random-init twin as baseline, per-structure Dice intervals."""
    from foundation.evaluate import run_evaluate

    d, data = earth
    out = run_evaluate(str(d / "enc"), data["root"], "finetune",
                       ["finetune.task=segmentation", "finetune.method=linear", "finetune.steps=15", f"data.masks={data['masks']}",
                        "probe.k=[4]", "probe.seeds=2", "probe.test_fraction=0.25"], ["random"], tmp_path / "result.json")
    res = json.loads(out.read_text())
    row = res["rows"][0]
    assert res["metric"] == "mean_dice" and res["arms"] == ["model", "random_init"] and res["n_test"] == 4
    assert set(row["model"]["per_class_dice"]) == set(res["names"]) and "vs_model" in row["random_init"]
    assert row["model"]["mean_dice"]["mean"] > 0.2 and "train_mean_dice" in row["model"]
    assert "mean_dice" in (tmp_path / "report.md").read_text()
