"""Downstream tasks: probes report OA and class-balanced accuracy, few-shot episodes follow the
protocol, and a segmentation head learns LAS classes and writes them back into a LAS file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.probes import accuracies
from modalities.base import adapter_class
from modalities.pointcloud.io import read_cloud
from modalities.pointcloud.tasks import PointSegHead, few_shot_episodes, few_shot_eval, probe, write_point_labels


def test_balanced_accuracy_differs_from_overall_on_imbalanced_classes():
    y = np.array([0] * 90 + [1] * 10)
    pred = np.zeros(100, int)  # majority vote
    acc = accuracies(y, pred)
    assert acc["oa"] == pytest.approx(0.9) and acc["macc"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["linear", "svm", "knn"])
def test_probes_beat_chance_on_separable_features_and_stay_at_chance_on_noise(kind):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 40)
    signal = rng.normal(size=(200, 16)) + 3.0 * np.eye(16)[y]
    noise = rng.normal(size=(200, 16))
    tr, te = np.arange(200) % 2 == 0, np.arange(200) % 2 == 1
    good = probe(kind, signal[tr], y[tr], signal[te], y[te])
    bad = probe(kind, noise[tr], y[tr], noise[te], y[te])
    assert good["oa"] > 0.8 and good["macc"] > 0.8 and bad["oa"] < 0.45
    assert 0 <= good["train_acc"] <= 1


def test_few_shot_episodes_follow_protocol():
    labels = np.repeat(np.arange(12), 50)
    eps = few_shot_episodes(labels, n_way=5, k_shot=10, n_query=20, episodes=10, seed=3)
    assert len(eps) == 10
    for sup, qry, classes in eps:
        assert len(classes) == 5 and len(sup) == 50 and len(qry) == 100
        assert not set(sup) & set(qry)
        assert set(labels[sup]) == set(labels[qry]) == set(classes)
        assert all((labels[sup] == c).sum() == 10 for c in classes)
    assert len({tuple(c) for _, _, c in eps}) > 1  # episodes draw different classes
    with pytest.raises(ValueError, match="10-way 20-shot"):
        few_shot_episodes(np.repeat(np.arange(12), 30), n_way=10, k_shot=20)
    feats = np.random.default_rng(0).normal(size=(600, 8)) + 3 * np.eye(12)[labels][:, :8]
    res = few_shot_eval(feats, labels, 5, 10, episodes=3)
    assert res["episodes"] == 3 and 0 <= res["std"] <= res["mean"] <= 1


def _train_and_predict(ad, las_files, steps=150):
    """Train tokenizer + head on the first tile's budget points, predict the others' (no shared points)."""
    torch.manual_seed(0)
    views = []
    for f in las_files:
        ds = ad.dataset({"root": str(f)}, train=False)
        xyz, _, cloud, chosen = ds.points(0)
        s = ds[0]
        views.append((xyz, s, cloud, chosen, torch.as_tensor(cloud.point_labels[chosen.numpy()])))
    classes = sorted({int(c) for v in views for c in v[4].unique()})
    lut = {c: i for i, c in enumerate(classes)}
    tok = ad.make_tokenizer(32)
    head = PointSegHead(32, len(classes))
    opt = torch.optim.Adam([*tok.parameters(), *head.parameters()], lr=3e-3)

    def logits(v):
        xyz, s = v[0], v[1]
        return head(xyz[None], xyz[None], s.coords[None], tok(s.patches[None], {}))[0]

    xyz, s, cloud, chosen, truth = views[0]
    target = torch.tensor([lut[int(c)] for c in truth])
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(logits(views[0]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return [(v, np.array(classes)[logits(v).argmax(-1).numpy()]) for v in views[1:]]


def test_segmentation_head_generalises_to_a_new_tile_and_writes_las(tmp_path):
    """Ground / building / tree on synthetic airborne tiles: trained on one tile, the head beats the
    majority class on another, and its labels land in a LAS copy (every point, header kept)."""
    from modalities.pointcloud.io import write_las
    from modalities.pointcloud.synthetic import scan_scene

    files = []
    for i in range(2):
        xyz, cls = scan_scene(np.random.default_rng(10 + i), points=4096)
        write_las(tmp_path / f"tile{i}.las", xyz, classification=cls)
        files.append(tmp_path / f"tile{i}.las")
    ad = adapter_class("pointcloud")({"points": 2048, "groups": 64, "group_size": 32})
    (v, pred), = _train_and_predict(ad, files)
    truth = v[4].numpy()
    majority = np.bincount(truth).max() / len(truth)
    assert (pred == truth).mean() > majority + 0.1, ((pred == truth).mean(), majority)
    out = tmp_path / "pred.las"
    written = write_point_labels(files[1], out, v[2].xyz[v[3].numpy()], pred)
    back = read_cloud(out)
    assert len(back) == len(v[2]) and np.array_equal(back.point_labels, written)
    np.testing.assert_allclose(back.xyz, v[2].xyz, atol=1e-3)
    assert (back.point_labels == v[2].point_labels).mean() > majority + 0.05


def test_write_point_labels_into_real_las(scans, tmp_path):
    cloud = read_cloud(scans / "simple.las")
    flipped = np.where(cloud.point_labels == 1, 2, 1)
    written = write_point_labels(scans / "simple.las", tmp_path / "out.las", cloud.xyz[::3], flipped[::3])
    back = read_cloud(tmp_path / "out.las")
    assert np.array_equal(back.point_labels, written) and (written[::3] == flipped[::3]).all()
    np.testing.assert_allclose(back.xyz, cloud.xyz, atol=1e-3)
    np.testing.assert_allclose(back.feature(["intensity"]), cloud.feature(["intensity"]))
