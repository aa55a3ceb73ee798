"""Contrastive pretraining over masked views: the loss pairs the two views of each sample, learns to
tell samples apart (well below the chance loss log(2B - 1)), and trains through the engine."""
import math

import torch

from foundation.model import Encoder
from foundation.objectives.contrast import Contrast
from foundation.recipes import load_recipe
from foundation.tokens import collate
from modalities.grid.adapter import GridAdapter


def batch_of(n, size=(4, 4)):
    adapter = GridAdapter({"patch": [4, 4]})
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return collate([adapter.to_patches(torch.randn(1, 4 * size[0], 4 * size[1], generator=g), id=f"s{i}") for i, g in enumerate(gens)])


def test_contrast_learns_to_match_the_views_of_each_sample():
    torch.manual_seed(0)
    enc = Encoder(GridAdapter({"patch": [4, 4]}), width=32, depth=1, heads=4)
    obj = Contrast(enc, {"kind": "random", "ratio": 0.5}, proj_dim=16, temperature=0.1)
    batch = batch_of(8)
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first, _ = obj(batch, gen)
    assert abs(first.item() - math.log(15)) < 1.0  # untrained: near chance among 2B - 1 candidates
    for _ in range(40):
        loss, info = obj(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, info = obj(batch, gen)
    assert loss.item() < 0.5 * math.log(15) and info["view_match"] >= 0.9
    # negative control: shuffle which sample each second view belongs to, and matching fails
    with torch.no_grad():
        z1, z2 = obj.embed_view(batch, gen), obj.embed_view(batch, gen)
    right = (z1 @ z2.T).argmax(1) == torch.arange(8)
    wrong = (z1 @ z2[torch.arange(8).roll(1)].T).argmax(1) == torch.arange(8)
    assert right.float().mean() >= 0.75 and wrong.float().mean() <= 0.25


def test_contrast_recipe_trains_and_exports(tmp_path):
    from foundation.engine import pretrain

    grid_contrast = tmp_path / "grid-contrast.yaml"  # no shipped grid recipe trains contrast; grid-mae's mae: would be refused
    grid_contrast.write_text("modality: grid\nobjective: contrast\nadapter: {channels: 1, patch: [4, 4]}\n")
    r = load_recipe(str(grid_contrast), ["train.steps=3", "model.width=32", "model.depth=1", "model.heads=2",
                                 "train.batch_size=4", f"data.root={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}",
                                 "train.log_every=1", "data.num_workers=0"])
    GridAdapter(r["adapter"]).synthetic(tmp_path / "data", 8, seed=0)
    run = pretrain(r, progress=False)
    enc = Encoder.from_pretrained(run / "encoder")
    assert enc.width == 32 and (run / "metrics.csv").read_text().count("\n") >= 3
