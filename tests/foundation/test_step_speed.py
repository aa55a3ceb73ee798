"""The step's speed options change nothing but speed: an unpadded batch runs attention with no mask
(flash kernels allowed) and gives the same numbers; activation checkpointing gives the same gradients
while storing less. Each equivalence has a negative control showing the check can fail."""
import dataclasses

import pytest
import torch

import foundation.trunk as trunk
from foundation.masking import visible_tokens
from foundation.model import Encoder
from foundation.objectives.jepa import JEPA
from foundation.objectives.mae import MAE
from foundation.tokens import collate
from foundation.trunk import set_activation_checkpointing
from modalities.grid.adapter import GridAdapter

ADAPTER = GridAdapter({"patch": [4, 4]})


def batch_of(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return collate([ADAPTER.to_patches(torch.randn(1, 4 * h, 4 * w, generator=g), id=f"s{i}") for i, (h, w) in enumerate(sizes)])


def mae(**kw):
    torch.manual_seed(0)
    enc = Encoder(ADAPTER, width=32, depth=2, heads=4)
    return MAE(enc, {"kind": "random", "ratio": 0.75}, decoder_width=16, decoder_depth=1, decoder_heads=2, **kw)


def forced_mask(batch):
    """The same batch with its 'no padding' knowledge dropped, so every attention gets a mask."""
    return dataclasses.replace(batch, unpadded=None)


@pytest.fixture
def sdpa_masks(monkeypatch):
    seen = []
    real = trunk.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask is None)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(trunk.F, "scaled_dot_product_attention", spy)
    return seen


def test_collate_records_padding_and_forgets_it_when_padding_is_replaced():
    full, ragged = batch_of([(3, 3), (3, 3)]), batch_of([(3, 3), (2, 3)])
    assert not full.has_padding and ragged.has_padding
    assert not full.to("cpu").has_padding
    # a view or augmentation that rebuilds the padding must not inherit "no padding"
    assert dataclasses.replace(full, padding=full.padding.clone()).has_padding
    assert not dataclasses.replace(full, patches=full.patches * 2).has_padding  # other fields: still known unpadded


def test_visible_tokens_knows_when_every_sample_keeps_the_same_count():
    pad = torch.zeros(2, 8, dtype=torch.bool)
    even = torch.tensor([[1, 1, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert not visible_tokens(even, pad).has_padding
    uneven = even.clone()
    uneven[1, 2] = False
    assert visible_tokens(uneven, pad).has_padding


def test_unpadded_batch_runs_attention_without_mask_and_same_numbers(sdpa_masks):
    model, batch = mae(), batch_of([(4, 4), (4, 4), (4, 4)])
    fast, _ = model(batch, torch.Generator().manual_seed(0))
    assert sdpa_masks and all(sdpa_masks)  # encoder and decoder: no mask anywhere
    sdpa_masks.clear()
    masked, _ = model(forced_mask(batch), torch.Generator().manual_seed(0))
    assert sdpa_masks[:2] == [True, True] and sdpa_masks[2:] == [False]  # visible counts still equal; the decoder masks
    torch.testing.assert_close(fast, masked, rtol=1e-6, atol=1e-6)
    enc = model.encoder
    sdpa_masks.clear()
    torch.testing.assert_close(enc(batch).tokens, enc(forced_mask(batch)).tokens, rtol=1e-6, atol=1e-6)
    assert sdpa_masks == [True, True, False, False]


def test_negative_control_padding_wrongly_marked_absent_changes_the_output(sdpa_masks):
    """If a padded batch were flagged unpadded, real tokens would attend to padding: the equivalence
    check above would catch that bug."""
    enc, batch = mae().encoder, batch_of([(4, 4), (2, 2)])
    right = enc(batch).tokens
    wrong = enc(dataclasses.replace(batch, unpadded=batch.padding)).tokens  # lie: "no padding"
    real = ~batch.padding[1]
    assert not torch.allclose(right[1, real], wrong[1, real], atol=1e-4)
    torch.testing.assert_close(right[0], wrong[0], rtol=1e-5, atol=1e-5)  # the full sample is unaffected


def test_jepa_unpadded_predictor_mask_only_when_needed():
    torch.manual_seed(0)
    model = JEPA(Encoder(ADAPTER, width=32, depth=2, heads=4), {"targets": 2}, 16, 1, 2)
    teacher = model.make_teacher()
    batch = batch_of([(4, 4), (4, 4)])
    a, _ = model(batch, torch.Generator().manual_seed(1), teacher=teacher)
    b, _ = model(forced_mask(batch), torch.Generator().manual_seed(1), teacher=teacher)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = model(batch, torch.Generator().manual_seed(0))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model, batch):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model(batch, torch.Generator().manual_seed(0))
    loss.backward()
    return total


def test_activation_checkpointing_gives_the_same_gradients_and_stores_less():
    model, batch = mae(), batch_of([(4, 4), (3, 4)])
    plain, plain_saved = grads(model, batch), saved_bytes(model, batch)
    assert set_activation_checkpointing(model) == 2  # encoder trunk and decoder
    ckpt, ckpt_saved = grads(model, batch), saved_bytes(model, batch)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert ckpt_saved < 0.7 * plain_saved


def test_negative_control_checkpointing_really_recomputes():
    """Changing a block's weights between forward and backward changes the gradients only when the
    blocks are recomputed, so the test above compares two different mechanisms, not one path twice."""
    batch = batch_of([(4, 4), (3, 4)])
    out = {}
    for on in (False, True):
        model = mae()
        set_activation_checkpointing(model, on)
        loss, _ = model(batch, torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.encoder.trunk.blocks[0].mlp.fc1.weight.mul_(1.5)
        if not on:
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                loss.backward()
            continue
        loss.backward()
        out[on] = model.encoder.trunk.blocks[0].attn.qkv.weight.grad.clone()
    reference = mae()
    reference_grad = grads(reference, batch)["encoder.trunk.blocks.0.attn.qkv.weight"]
    assert not torch.allclose(out[True], reference_grad, atol=1e-6)


def test_masked_mse_equals_the_plain_weighted_formula_and_ignores_what_it_must():
    from foundation.grid import masked_mse

    g = torch.Generator().manual_seed(0)
    pred, targets = torch.randn(3, 10, 7, generator=g, requires_grad=True), torch.randn(3, 10, 7, generator=g)
    valid, mask = torch.rand(3, 10, 7, generator=g) > 0.2, torch.rand(3, 10, generator=g) > 0.4
    w = valid.float() * mask.unsqueeze(-1).float()
    reference = (((pred - targets) ** 2) * w).sum() / w.sum()
    loss = masked_mse(pred, targets, valid, mask)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    (g_new,) = torch.autograd.grad(loss, pred)
    (g_ref,) = torch.autograd.grad(reference, pred)
    torch.testing.assert_close(g_new, g_ref, rtol=1e-6, atol=1e-7)
    # values that are invalid or on visible tokens do not count: NaN there changes nothing
    poisoned = targets.masked_fill(~valid | ~mask.unsqueeze(-1), float("nan"))
    torch.testing.assert_close(masked_mse(pred, poisoned, valid, mask), loss)
    # negative control: dropping the validity mask does change the loss
    assert not torch.allclose(masked_mse(pred, targets, torch.ones_like(valid), mask), loss)


@pytest.mark.slow
def test_compiled_trunks_train_like_eager_and_recompile_a_bounded_number_of_times():
    """torch.compile on every block: the same losses as eager over a few optimiser steps with varying
    token counts (ragged batches), and recompiles stay bounded (dynamo marks the length dynamic)."""
    from torch._dynamo.utils import counters

    from foundation.trunk import compile_trunks

    torch._dynamo.reset()
    counters.clear()
    batches = [batch_of([(4, 4), (3, 4)], seed=0), batch_of([(4, 3), (2, 4)], seed=1), batch_of([(3, 3), (4, 4)], seed=2),
               batch_of([(2, 2), (4, 2)], seed=3)]
    losses = {}
    for compiled in (False, True):
        model = mae()
        if compiled:
            assert compile_trunks(model) == 3  # two encoder blocks, one decoder block
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        losses[compiled] = []
        for b in batches:
            loss, _ = model(b, gen)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[compiled].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-5)
    assert sum(counters["stats"].values()) > 0  # dynamo really ran
    recompiles = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    assert recompiles <= 8, dict(counters["recompiles"])
