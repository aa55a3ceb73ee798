"""Pretraining through the core: the recipes run end to end, and MAE learns masked groups far
better than the best constant guess (a learned fixed point set), on held-out objects."""
from __future__ import annotations

import numpy as np
import torch

from foundation.embed import embed_dataset
from foundation.engine import pretrain
from foundation.model import Encoder
from foundation.objectives.mae import MAE
from foundation.recipes import load_recipe
from foundation.tokens import collate
from modalities.base import adapter_class, sample_seed
from modalities.pointcloud.ops import chamfer_distance

SMALL = ["adapter.points=256", "adapter.groups=16", "adapter.group_size=16", "model.width=32", "model.depth=1", "model.heads=2",
         "train.batch_size=8", "train.log_every=2", "train.checkpoint_every=4", "data.num_workers=0"]


def test_recipes_pretrain_export_and_embed(tmp_path):
    for name, extra in [("pointcloud-mae", ["mae.decoder_width=32", "mae.decoder_depth=1"]),
                        ("pointcloud-jepa", ["jepa.predictor_width=32", "jepa.predictor_depth=1"])]:
        recipe = load_recipe(name, SMALL + extra + [f"data.root={tmp_path / 'data'}", "train.steps=4", f"run.dir={tmp_path / name}"])
        if not (tmp_path / "data").exists():
            adapter_class("pointcloud")(recipe["adapter"]).synthetic(tmp_path / "data", 20, seed=1)
        run = pretrain(recipe, progress=False)
        enc = Encoder.from_pretrained(run / "encoder")
        assert enc.adapter.config["groups"] == 16  # the preprocessing travelled with the encoder
        ds = enc.adapter.dataset({"root": str(tmp_path / "data"), "labels": "folder"}, train=False)
        out = embed_dataset(enc, ds, batch_size=8)
        assert out["max"].shape == (20, 32) and np.isfinite(out["meanstd"]).all() and len(set(out["labels"])) == 10


def test_mae_beats_best_constant_prediction_on_held_out_objects(tmp_path):
    torch.manual_seed(0)
    ad = adapter_class("pointcloud")({"points": 256, "groups": 16, "group_size": 16, "sampling": "random"})
    data = ad.synthetic(tmp_path, 100, seed=0)
    ds = ad.dataset(data, train=True)
    train_idx, test_idx = list(range(80)), list(range(80, 100))
    model = MAE(Encoder.build(ad, {"width": 64, "depth": 2, "heads": 4}), {"kind": "block", "ratio": 0.6, "blocks": 4},
                decoder_width=64, decoder_depth=1, decoder_heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(80):
        pick = torch.randperm(80, generator=g)[:16].tolist()
        batch = collate([ds[(i, sample_seed(0, step, i))] for i in pick])
        loss, _ = model(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    held = collate([ds[i] for i in test_idx])
    model.eval()
    with torch.no_grad():
        mae_loss = model(held, torch.Generator().manual_seed(1))[0].item()
    # the best constant: one point set shared by every group, fitted to the training groups
    train_groups = collate([ds[i] for i in train_idx]).targets.reshape(-1, 16, 3)
    const = torch.zeros(1, 16, 3).normal_(std=0.05).requires_grad_(True)
    copt = torch.optim.Adam([const], lr=1e-2)
    for _ in range(300):
        c = chamfer_distance(const.expand(len(train_groups), -1, -1), train_groups).mean()
        copt.zero_grad()
        c.backward()
        copt.step()
    test_groups = held.targets.reshape(-1, 16, 3)
    const_loss = chamfer_distance(const.detach().expand(len(test_groups), -1, -1), test_groups).mean().item()
    print(f"held-out Chamfer: MAE {mae_loss:.4f}, best constant {const_loss:.4f}")
    assert mae_loss < 0.75 * const_loss, (mae_loss, const_loss)
