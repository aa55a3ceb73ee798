"""Fine-tuning: the mechanism (interactions need a trained trunk), LoRA's wiring, every task and
method learning, and the saved directory predicting the same in a fresh process."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from foundation.evaluate import task_metrics
from foundation.finetune import (FINETUNE_DEFAULTS, LabelledView, apply_lora, build_model, dataset_targets, finetune_indices,
                                 fit, load_finetuned, lora_adapted_modules, merge_lora, predict_outputs, save_finetuned)
from foundation.model import Encoder
from tests.foundation.finetune_data import factor_tokens, grid_adapter, interaction_tokens


def tiny_encoder(seed: int = 0, depth: int = 1) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(grid_adapter(), width=32, depth=depth, heads=2)


def cfg(**kw) -> dict:
    return {**FINETUNE_DEFAULTS, **kw}


@pytest.mark.slow
def test_mechanism_interactions_need_the_trunk():
    """Label = do the first and last tokens share a sign (per-token and pooled statistics carry nothing):
    the linear probe of a frozen random encoder stays near chance, full fine-tuning and LoRA reach 0.9."""
    ds = interaction_tokens(600)
    t = dataset_targets(ds, "classification")
    tr, te = np.arange(400), np.arange(400, 600)
    enc = tiny_encoder()
    acc = {}
    for method, lr in (("linear", 3e-3), ("full", 3e-3), ("lora", 1e-2)):
        ft = finetune_indices(enc, ds, t, tr, cfg(method=method, steps=250, lr=lr), seed=0)
        acc[method] = float((ft.scores(LabelledView(ds, te))["scores"].argmax(1) == t.values[te]).mean())
    assert acc["linear"] < 0.65, acc
    assert acc["full"] >= 0.9 and acc["lora"] >= 0.9, acc


def test_lora_wiring():
    ds = factor_tokens(96, "classification")
    t = dataset_targets(ds, "classification")
    idx = np.arange(96)
    model = build_model(tiny_encoder(depth=2), cfg(method="lora"), t, idx)
    base = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    peft_model = apply_lora(model, rank=4, alpha=8)
    adapted = lora_adapted_modules(peft_model)
    # every adapted module is a trunk block's linear layer; the tokenizer's own `proj` is not hit
    assert adapted and all(re.fullmatch(r"(base_model\.model\.)?encoder\.trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", n)
                           for n in adapted), adapted
    assert len(adapted) == 2 * 4
    fit(peft_model, LabelledView(ds, idx, t.values), cfg(method="lora", steps=30, lr=1e-2))
    # base weights bitwise unchanged (peft keeps them under base_layer)
    inner = peft_model.get_base_model().encoder.state_dict()
    for k, v in base.items():
        key = k if k in inner else re.sub(r"\.(weight|bias)$", r".base_layer.\1", k)
        assert torch.equal(inner[key], v), k
    view = LabelledView(ds, idx)
    unmerged = predict_outputs(peft_model, view)["scores"]
    merged = merge_lora(peft_model)
    out = predict_outputs(merged, view)["scores"]
    assert np.abs(out - unmerged).max() < 1e-5
    # the adapters did something: merged weights differ from the base
    assert not torch.equal(merged.encoder.trunk.blocks[0].attn.qkv.weight, base["trunk.blocks.0.attn.qkv.weight"])
    # the merged encoder keeps the encoder's names: strict loading into a fresh Encoder works
    fresh = tiny_encoder(seed=1, depth=2)
    fresh.load_state_dict(merged.encoder.state_dict(), strict=True)
    assert set(merged.state_dict()) >= {f"head.{k}" for k in merged.head.state_dict()}


def test_lora_bare_name_would_hit_the_tokenizer():
    """Negative control of the anchoring: peft's bare-name target `proj` also adapts the tokenizer."""
    from peft import LoraConfig, get_peft_model

    ds = factor_tokens(12, "classification")
    t = dataset_targets(ds, "classification")
    model = build_model(tiny_encoder(), cfg(method="lora"), t, np.arange(12))
    bare = get_peft_model(model, LoraConfig(r=2, target_modules=["proj"]))
    assert any("tokenizer" in n for n in lora_adapted_modules(bare))


@pytest.mark.parametrize("method", ["linear", "knn", "attentive", "layers", "full", "lora"])
def test_every_method_learns_classification(method):
    ds = factor_tokens(180, "classification")
    t = dataset_targets(ds, "classification")
    tr, te = np.arange(120), np.arange(120, 180)
    lr = {"full": 3e-3, "lora": 1e-2}.get(method, 1e-2)
    ft = finetune_indices(tiny_encoder(), ds, t, tr, cfg(method=method, steps=60, lr=lr), seed=0)
    m = task_metrics("classification", t.values[te], ft.scores(LabelledView(ds, te))["scores"], t.names)
    assert m["accuracy"] > 0.8, (method, m)  # 3 balanced classes: chance is 1/3


@pytest.mark.parametrize("method", ["linear", "knn"])
def test_multilabel_learns(method):
    ds = factor_tokens(160, "multilabel")
    t = dataset_targets(ds, "multilabel")
    assert t.names == ["bright", "wide"]
    tr, te = np.arange(120), np.arange(120, 160)
    ft = finetune_indices(tiny_encoder(), ds, t, tr, cfg(method=method, steps=80, lr=1e-2), seed=0)
    m = task_metrics("multilabel", t.values[te], ft.scores(LabelledView(ds, te))["scores"])
    assert m["accuracy"] > 0.85 and m["auroc"] > 0.9, m  # chance: 0.5 per label


@pytest.mark.parametrize("method", ["linear", "full"])
def test_regression_learns(method):
    ds = factor_tokens(160, "regression")
    t = dataset_targets(ds, "regression")
    tr, te = np.arange(120), np.arange(120, 160)
    ft = finetune_indices(tiny_encoder(), ds, t, tr, cfg(method=method, steps=80, lr=3e-3), seed=0)
    m = task_metrics("regression", t.values[te], ft.scores(LabelledView(ds, te))["scores"])
    baseline = np.abs(t.values[te] - t.values[tr].mean()).mean()  # predicting the training mean
    assert m["r2"] > 0.7 and m["mae"] < 0.5 * baseline, (m, baseline)


def test_saved_directory_reloads_exactly(tmp_path):
    ds = factor_tokens(60, "classification")
    t = dataset_targets(ds, "classification")
    ft = finetune_indices(tiny_encoder(), ds, t, np.arange(60), cfg(method="attentive", steps=10), seed=0)
    save_finetuned(ft, tmp_path / "ft")
    back = load_finetuned(tmp_path / "ft")
    view = LabelledView(ds, np.arange(60))
    a, b = ft.scores(view)["scores"], back.scores(view)["scores"]
    assert np.abs(a - b).max() < 1e-6 and back.names == t.names
    # negative control: a head changed after saving no longer matches
    with torch.no_grad():
        back.model.head.fc.weight[0].add_(1e-3)
    assert np.abs(back.scores(view)["scores"] - a).max() > 1e-5


def test_group_split_keeps_groups_whole_and_classes_on_both_sides():
    from foundation.finetune import group_split

    groups = np.repeat([f"spk{i}" for i in range(10)], 6)
    classes = np.repeat(np.arange(2), 30)
    tr, te = group_split(groups, 0.3, 0, classes)
    assert not set(groups[tr]) & set(groups[te])
    assert set(classes[te]) == set(classes[tr]) == {0, 1}


def test_early_stopping_needs_a_validation_set():
    from foundation.finetune import finetune_spec
    from foundation.recipes import RecipeError

    with pytest.raises(RecipeError, match="validation"):
        finetune_spec("data/", ["finetune.patience=3"])
    spec = finetune_spec("data/", ["finetune.patience=3", "finetune.val_fraction=0.2", "data.groups=folder"])
    assert spec["finetune"]["patience"] == 3 and spec["data"]["groups"] == "folder"


def test_early_stopping_keeps_the_best_validation_weights():
    ds = factor_tokens(90, "classification")
    t = dataset_targets(ds, "classification")
    ft = finetune_indices(tiny_encoder(), ds, t, np.arange(60), cfg(method="linear", steps=400, lr=1e-2, patience=2, eval_every=10),
                          seed=0, val_idx=np.arange(60, 90))
    assert ft.history["early_stopped"] and ft.history["steps"] < 400
    val = ft.scores(LabelledView(ds, np.arange(60, 90)))["scores"].argmax(1)
    assert float((val == t.values[60:90]).mean()) == ft.history["best_val_score"]


def test_class_weights_balance_a_rare_class():
    from foundation.finetune import Targets, class_weights

    t = Targets("classification", np.array([0] * 90 + [1] * 10), ["common", "rare"])
    w = class_weights(t, np.arange(100))
    assert torch.allclose(w * torch.tensor([90.0, 10.0]), torch.full((2,), 50.0))


def test_paired_bootstrap_sees_a_real_gap_and_not_a_null_one():
    from foundation.evaluate import paired_bootstrap

    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.9
    b = rng.random(200) < 0.6
    assert paired_bootstrap(a, b)["beats"]
    assert not paired_bootstrap(a, a.copy())["beats"]  # negative control: the same method scores no gap
