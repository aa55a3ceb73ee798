"""Alignment losses and binding: the multi-positive floor, SigLIP's bias, the clamped temperature, learning
below the trivial loss down to the floor, and ImageBind-style emergence between never-paired views."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foundation.align_eval import chance_recall, retrieval, zero_shot
from foundation.engine import param_groups
from foundation.errors import DomainfmError
from foundation.objectives.align import MAX_LOGIT_SCALE, AlignLoss, AlignModel, arange_floor
from foundation.pairs import PairBatch
from foundation.towers import FeatureTower, TextTower


def test_multi_positive_targets_reach_their_floor_and_arange_targets_cannot():
    keys = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4])  # class-level texts repeated in one batch
    proto = F.normalize(torch.randn(5, 16), dim=-1)
    za = zb = proto[keys]  # the ideal model: every row exactly at its class
    loss = AlignLoss(["a|b"])
    with torch.no_grad():
        loss.logit_scale["a__b"].fill_(MAX_LOGIT_SCALE)
    floor = arange_floor(keys)
    assert floor == pytest.approx(float(torch.tensor([3, 3, 3, 1, 2, 2, 1, 1.0]).log().mean()))
    mp = float(loss(za, zb, "a|b", keys))
    arange = float(loss(za, zb, "a|b", None))  # CLIP's arange targets treat repeated texts as negatives
    assert mp < 1e-3 < floor - 0.3  # multi-positive: no floor
    assert arange == pytest.approx(floor, abs=1e-3)  # arange: stuck at mean log k even for the ideal model
    uniform = float(loss(torch.zeros(8, 16), torch.zeros(8, 16), "a|b", keys))
    assert uniform == pytest.approx(float(-(torch.tensor([3, 3, 3, 1, 2, 2, 1, 1.0]) / 8).log().mean()), abs=1e-5)


def test_siglip_bias_only_in_siglip_mode_temperature_clamped_and_never_decayed():
    info, sig = AlignLoss(["a|b", "a|c"]), AlignLoss(["a|b"], kind="siglip")
    assert info.logit_bias is None and set(info.logit_scale) == {"a__b", "a__c"}  # one temperature per pair type
    assert sig.logit_bias is not None and "a__b" in sig.logit_bias
    with torch.no_grad():
        info.logit_scale["a__b"].fill_(10.0)
    assert float(info.scale("a|b")) == pytest.approx(100.0)
    groups = param_groups(info, weight_decay=0.05)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in no_decay for p in info.parameters())
    with pytest.raises(ValueError):
        AlignLoss(["a|b"], kind="clip")


def test_missing_text_tower_directory_is_one_line(tmp_path):
    with pytest.raises(DomainfmError) as err:
        TextTower("text", tmp_path / "no_such_model", 16)
    assert "no_such_model" in str(err.value) and "\n" not in str(err.value) and "downloaded" in str(err.value)


def test_chance_recall_matches_simulation():
    rng = np.random.default_rng(0)
    match = np.zeros((400, 50), bool)
    match[:, :3] = True
    hits = [(rng.permutation(50)[:5] < 3).any() for _ in range(4000)]
    assert chance_recall(match.sum(1), 50, 5) == pytest.approx(np.mean(hits), abs=0.02)


def _fit(model, batches, steps: int, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """A few Adam steps on tiny feature towers (the engine's loop is exercised by the CLI test)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only waits on a busy machine
    try:
        for step in range(steps):
            loss, _ = model(batches(step))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    return losses


def test_class_level_text_learning_reaches_the_arange_floor_and_zero_shot_works():
    """Instances of 10 classes (a class direction buried in nuisance dimensions) against class-level
    'texts' repeated within each batch: the loss falls from the uniform predictor's value to well below
    the floor arange targets would have on the same batches, and held-out instances are classified
    zero-shot well above chance."""
    g = torch.Generator().manual_seed(0)
    classes, dim, n = 10, 24, 1200
    proto, text_feat = torch.randn(classes, 6, generator=g), torch.randn(classes, 8, generator=g)
    mix = torch.randn(6 + 18, dim, generator=g) / 5
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.cat([proto[labels] + 0.3 * torch.randn(n, 6, generator=g), torch.randn(n, 18, generator=g)], 1) @ mix
    train, test = torch.arange(0, 1000), torch.arange(1000, n)
    torch.manual_seed(0)
    model = AlignModel({"x": FeatureTower("x", dim, 16), "text": FeatureTower("text", 8, 16)}, ["x|text"])
    bs = 32

    def batch(step):
        idx = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(step))[:bs]]
        ids = [str(int(i)) for i in idx]
        return PairBatch(("x", "text"), (x[idx], text_feat[labels[idx]]), (ids, ids), labels[idx])

    losses = _fit(model, batch, 300)
    floors = [arange_floor(batch(s).keys) for s in range(250, 300)]
    final, floor = float(np.mean(losses[-50:])), float(np.mean(floors))
    uniform = float(np.mean([-(batch(s).keys[:, None] == batch(s).keys[None]).float().mean(1).log().mean() for s in range(5)]))
    assert losses[0] > 0.8 * uniform
    assert final < 0.5 * floor, (final, floor, uniform)
    with torch.no_grad():
        zx, zt = model.towers["x"](x[test]), model.towers["text"](text_feat)
    res = zero_shot(zx, labels[test].numpy(), zt, list(range(classes)))
    assert res["accuracy"] > 0.8 and res["chance"] == 0.1


def test_retrieval_counts_identical_gallery_items_once():
    """Class-level text repeats on every row of its class: the copies are one gallery item, so a query whose
    nearest class is wrong still finds its own class at rank 2 of 3, not behind every copy of the other."""
    classes = np.eye(3, 4).astype(np.float32)
    labels = np.repeat([0, 1, 2], 5)
    text = classes[labels]  # 15 rows, 3 distinct texts
    query = classes[labels] + 0.01
    query[0] = classes[1] * 0.9 + classes[0] * 0.5  # nearest to class 1, then its own class 0
    r = retrieval(query, text, labels, labels, ks=(1, 2), names=("x", "t"))
    assert r["x->t recall@1"] == pytest.approx(14 / 15) and r["x->t recall@2"] == 1.0
    assert r["x->t chance@1"] == pytest.approx(1 / 3) and r["x->t chance@2"] == pytest.approx(2 / 3)
    # the same text embedded in two batches differs in the last bits: its identity (ids) still makes it one item
    jitter = text + np.random.default_rng(0).normal(0, 1e-7, text.shape).astype(np.float32)
    ids = [f"class {c}" for c in labels]
    assert retrieval(query, jitter, labels, labels, ks=(1, 2), names=("x", "t"), ids_a=list(range(15)), ids_b=ids)["x->t recall@2"] == 1.0
    # negative control: counting every copy, the wrong class's five copies push rank 2 down to rank 6
    from foundation.align_eval import ranks
    match = labels[:, None] == labels[None, :]
    assert (ranks(query, text, match) <= 2).mean() < 1.0


def test_emergent_retrieval_between_two_views_never_paired():
    """ImageBind-style binding on three synthetic views of one latent: A is paired with the anchor B on
    some samples, C with B on disjoint samples; A and C (never paired) then retrieve each other on
    held-out samples far above chance, while the same towers before training sit at chance."""
    g = torch.Generator().manual_seed(1)
    n, latent = 1400, 6
    u = torch.randn(n, latent, generator=g)

    def view(dim):
        w1, w2 = torch.randn(latent, 64, generator=g), torch.randn(64, dim, generator=g) / 8
        v = torch.tanh(u @ w1) @ w2 + 0.05 * torch.randn(n, dim, generator=g)
        return (v - v.mean(0)) / v.std(0)

    views = {"a": view(32), "b": view(32), "c": view(32)}
    ab, cb, held = torch.arange(0, 600), torch.arange(600, 1200), torch.arange(1200, n)
    torch.manual_seed(0)
    model = AlignModel({k: FeatureTower(k, 32, 16) for k in views}, ["a|b", "c|b"])

    def emergent():
        with torch.no_grad():
            za, zc = model.towers["a"](views["a"][held]), model.towers["c"](views["c"][held])
        return retrieval(za, zc, names=("a", "c"))

    before = emergent()

    def batch(step):
        src, rows = (("a", ab) if step % 2 == 0 else ("c", cb))
        idx = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(step))[:64]]
        ids = [str(int(i)) for i in idx]
        return PairBatch((src, "b"), (views[src][idx], views["b"][idx]), (ids, ids), None)

    _fit(model, batch, 400)
    after = emergent()
    chance = after["a->c chance@1"]
    assert chance == pytest.approx(1 / len(held))
    assert before["a->c recall@5"] < 5 * after["a->c chance@5"]
    for d in ("a->c", "c->a"):
        assert after[f"{d} recall@1"] > 10 * chance and after[f"{d} recall@5"] > 0.3, after


def test_lora_tower_targets_trunk_blocks_only_and_exports_merged(tmp_path):
    from foundation.align_task import export_towers, load_towers
    from foundation.model import Encoder
    from foundation.tokens import collate
    from foundation.towers import EncoderTower
    from modalities.grid.adapter import GridAdapter

    torch.manual_seed(0)
    adapter = GridAdapter({"patch": [4, 4]})
    tower = EncoderTower("image", Encoder(adapter, 32, 2, 2), 16, mode="lora")
    lora = [n for n, p in tower.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert lora and all("lora_" in n and ".trunk.blocks." in n for n in lora)  # never the tokenizer or positions
    with torch.no_grad():
        for n, p in tower.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a trained adapter (B starts at zero)
    x = collate([adapter.to_patches(torch.randn(1, 12, 12), id=str(i)) for i in range(3)])
    want = tower.eval()(x)
    model = AlignModel({"image": tower, "other": EncoderTower("other", Encoder(adapter, 32, 1, 2), 16)}, ["image|other"])
    export_towers(model, tmp_path / "towers")
    got = load_towers(tmp_path)["image"](x)  # plain encoder, strict load, LoRA merged into its weights
    assert torch.allclose(want, got, atol=1e-5)


@pytest.mark.parametrize("name", ["align-speech-text", "align-speech-text-gpu", "align-s1s2", "align-s1s2-gpu", "align-pointcloud-depth",
                                  "align-pointcloud-depth-gpu", "bind-text", "bind-text-gpu",
                                  "align-medical-report", "align-medical-report-gpu", "align-graph-text"])
def test_align_recipes_resolve_and_refuse_unknown_tower_keys(name):
    from foundation.recipes import RecipeError, load_recipe

    r = load_recipe(name, ["towers." + next(iter(load_recipe(name)["towers"])) + ".lr=0.001"])
    assert r["objective"] == "align" and len(r["towers"]) >= 2
    assert all(t["mode"] in ("frozen", "train", "lora") for t in r["towers"].values())
    if r["align"]["anchor"]:
        assert all(r["align"]["anchor"] in p.split("|") for p in r["align"]["pairs"])  # every pair goes through the anchor
    with pytest.raises(RecipeError):
        load_recipe(name, ["towers." + next(iter(r["towers"])) + ".lrr=0.001"])
