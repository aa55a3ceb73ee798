"""Preprocessing and tokens: views, budgets, blocks, channels, bad input, the adapter's model parts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foundation.tokens import collate
from modalities.base import adapter_class
from modalities.pointcloud.io import PointCloudError, write_ply
from modalities.pointcloud.preprocess import augment, normalize

PC = adapter_class("pointcloud")


def _write(tmp_path, name, xyz, **feats):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply(path, np.asarray(xyz, np.float32), feats or None)
    return path


def test_tokens_are_groups_relative_to_centres(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path, "a/x.ply", rng.normal(size=(3000, 3)) * 50 + 1000)
    ad = PC({"points": 512, "groups": 32, "group_size": 16})
    ds = ad.dataset({"root": str(tmp_path), "labels": "folder"}, train=True)
    s = ds[0]
    assert s.patches.shape == (32, ad.patch_dim) and s.targets.shape == (32, ad.target_dim) and s.coords.shape == (32, 3)
    assert s.coords.norm(dim=1).max() <= 1.0 + 1e-5  # centres inside the unit sphere
    pts = s.patches.reshape(32, 16, 3) + s.coords[:, None]
    assert pts.norm(dim=-1).max() <= 1.0 + 1e-5 and pts.norm(dim=-1).max() > 0.99  # normalised to the unit sphere
    # a group's points are its centre's nearest neighbours: the centre itself is in the group
    assert torch.allclose(s.patches.reshape(32, 16, 3)[:, 0], torch.zeros(32, 3), atol=1e-6)
    assert s.label == 0 and ds.classes == ["a"]


def test_views_deterministic_and_seeded(tmp_path):
    _write(tmp_path, "a/x.ply", np.random.default_rng(1).normal(size=(2000, 3)))
    ds = PC({"points": 256, "groups": 16, "group_size": 16, "dropout": 0.3}).dataset({"root": str(tmp_path)}, train=True)
    assert torch.equal(ds[0].patches, ds[0].patches)
    assert torch.equal(ds[(0, 5)].patches, ds[(0, 5)].patches)
    assert not torch.allclose(ds[(0, 5)].coords, ds[(0, 6)].coords)
    # evaluation datasets never augment, whatever the seed
    ev = PC({"points": 256, "groups": 16, "group_size": 16}).dataset({"root": str(tmp_path)}, train=False)
    assert torch.equal(ev[(0, 5)].patches, ev[0].patches)


def test_augment_rotates_about_up_axis_and_keeps_heights():
    x = torch.randn(100, 3)
    g = torch.Generator().manual_seed(0)
    y, _ = augment(x, None, {"rotate": True, "scale": (1.0, 1.0), "jitter": 0.0}, g, "z")
    assert torch.allclose(y[:, 2], x[:, 2]) and torch.allclose(y[:, :2].norm(dim=1), x[:, :2].norm(dim=1), atol=1e-5)
    assert not torch.allclose(y, x)
    n, c, s = normalize(torch.randn(50, 3) * 7 + 3, "sphere")
    assert abs(n.norm(dim=1).max().item() - 1) < 1e-6 and n.mean(0).abs().max() < 1e-5


def test_fewer_points_than_budget_are_topped_up_and_too_few_fail(tmp_path):
    _write(tmp_path, "few.ply", np.random.default_rng(2).normal(size=(100, 3)))
    ds = PC({"points": 256, "groups": 16, "group_size": 16}).dataset({"root": str(tmp_path)}, train=True)
    assert ds[0].patches.shape == (16, 48)
    with pytest.raises(PointCloudError, match=r"few\.ply: 100 points, fewer than the 200"):
        PC({"points": 256, "groups": 16, "group_size": 16, "min_points": 200}).dataset({"root": str(tmp_path)}, True)[0]


def test_nan_coordinates_error_names_file_or_are_skipped_and_counted(tmp_path):
    good = np.random.default_rng(3).normal(size=(500, 3))
    bad = good.copy()
    bad[7] = np.nan
    _write(tmp_path, "good.ply", good)
    _write(tmp_path, "bad.ply", bad)
    (tmp_path / "empty.pcd").write_bytes(b"")
    cfg = {"points": 128, "groups": 8, "group_size": 16}
    ds = PC(cfg).dataset({"root": str(tmp_path)}, True)
    with pytest.raises(PointCloudError, match=r"bad\.ply: 1 of 500 points have NaN/inf"):
        [ds[i] for i in range(len(ds))]
    skipping = PC(cfg).dataset({"root": str(tmp_path), "on_error": "skip"}, True)
    assert len(skipping) == 1 and len(skipping.skipped) == 2
    assert {p.rsplit("/", 1)[1] for p, _ in skipping.skipped} == {"bad.ply", "empty.pcd"}
    dropping = PC({**cfg, "nonfinite": "drop"}).dataset({"root": str(tmp_path), "on_error": "skip"}, True)
    assert len(dropping) == 2 and len(dropping.skipped) == 1
    assert all(torch.isfinite(dropping[i].patches).all() for i in range(len(dropping)))


def test_feature_channels_travel_with_points(tmp_path):
    rng = np.random.default_rng(4)
    xyz = rng.normal(size=(600, 3))
    _write(tmp_path, "f.ply", xyz, intensity=(xyz[:, 2] > 0) * 200.0)
    ad = PC({"points": 256, "groups": 16, "group_size": 16, "features": ["intensity"]})
    assert ad.patch_dim == 16 * 4 and ad.target_dim == 16 * 3
    s = ad.dataset({"root": str(tmp_path)}, True)[0]
    p = s.patches.reshape(16, 16, 4)
    height = p[..., 2] + s.coords[:, None, 2]
    # intensity was a step in raw z, so after centring/scaling it still follows the height sign (up to the mean shift)
    assert set(torch.unique(p[..., 3]).tolist()) <= {0.0, 1.0}
    assert torch.corrcoef(torch.stack([height.flatten(), p[..., 3].flatten()]))[0, 1] > 0.7
    with pytest.raises(PointCloudError, match=r"f\.ply: no per-point channel\(s\) \['ring'\]"):
        PC({"points": 256, "groups": 16, "group_size": 16, "features": ["ring"]}).dataset({"root": str(tmp_path)}, True)[0]


def test_lidar_tile_cut_into_blocks_with_ids(scans, tmp_path):
    ad = PC({"columns": "kitti", "features": ["intensity"], "block_size": 10.0, "block_min_points": 512})
    ds = ad.dataset({"root": str(scans / "kitti_000008.bin")}, train=True)
    assert len(ds) >= 4
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert len(set(ids)) == len(ids) and all(i.startswith(str(scans / "kitti_000008.bin") + "#block@") for i in ids)
    s = ds[(0, 1)]
    assert s.patches.shape == (64, 32 * 4) and torch.isfinite(s.patches).all()


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="unknown setting"):
        PC({"point": 1024})


def test_tokenizer_is_token_local_and_permutation_invariant():
    ad = PC({"groups": 8, "group_size": 16})
    tok = ad.make_tokenizer(32).eval()
    x = torch.randn(2, 8, ad.patch_dim)
    y = tok(x, {})
    x2 = x.clone()
    x2[0, 3] = torch.randn(ad.patch_dim)
    y2 = tok(x2, {})
    changed = (y2 - y).abs().amax(-1) > 1e-6
    assert changed[0, 3] and changed.sum() == 1
    perm = x.reshape(2, 8, 16, 3)[:, :, torch.randperm(16)].reshape(2, 8, -1)
    assert torch.allclose(tok(perm, {}), y, atol=1e-5)


def test_chamfer_reconstruction_loss_only_on_masked_groups():
    ad = PC({"groups": 8, "group_size": 16})
    targets = torch.randn(2, 8, 48)
    valid = torch.ones_like(targets, dtype=torch.bool)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :4] = True
    shuffled = targets.reshape(2, 8, 16, 3)[:, :, torch.randperm(16)].reshape(2, 8, 48)
    pred = shuffled.clone()
    pred[:, 4:] = 100.0  # visible groups' predictions do not count
    assert ad.reconstruction_loss(pred, targets, valid, mask) < 1e-5
    pred[:, :4] += 0.1
    assert ad.reconstruction_loss(pred, targets, valid, mask) > 1e-3


def test_collate_pads_and_dataloader_workers(tmp_path):
    for i in range(4):
        _write(tmp_path, f"c{i % 2}/{i}.ply", np.random.default_rng(i).normal(size=(400, 3)))
    ds = PC({"points": 256, "groups": 16, "group_size": 16}).dataset({"root": str(tmp_path), "labels": "folder"}, True)
    loader = torch.utils.data.DataLoader([(i, i) for i in range(4)], batch_size=4, num_workers=1,
                                         collate_fn=lambda keys: collate([ds[k] for k in keys]))
    b = next(iter(loader))
    assert b.patches.shape == (4, 16, 48) and b.labels.tolist() == [0, 0, 1, 1] and not b.padding.any()


def test_synthetic_objects_labelled_and_varied(tmp_path):
    ad = PC({"points": 512, "groups": 32, "group_size": 16})
    data = ad.synthetic(tmp_path, 200, seed=0)
    ds = ad.dataset(data, train=False)
    assert len(ds) == 200 and len(ds.classes) >= 8
    sizes = [len(ds._load(ds.items[i][0].path)) for i in range(0, 200, 7)]
    assert min(sizes) < max(sizes)  # partial views remove points
    a, b = ds[0], ds[len(ds.classes)]  # two instances of the same class differ
    assert ds.label(0) == ds.label(len(ds.classes)) and not torch.allclose(a.coords, b.coords)
    assert math.isclose(float(torch.stack([ds[i].coords.norm(dim=1).max() for i in range(5)]).max()), 1.0, abs_tol=0.2)
