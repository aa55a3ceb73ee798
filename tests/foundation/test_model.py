import pytest
import torch

from foundation.model import Encoder
from foundation.objectives.jepa import JEPA, ema_update, momentum_at
from foundation.objectives.mae import MAE
from foundation.tokens import SampleTokens, collate
from modalities.grid.adapter import GridAdapter


def tiny_encoder(**kw):
    torch.manual_seed(0)
    return Encoder(GridAdapter({"patch": [4, 4]}), width=32, depth=2, heads=4, **kw)


def batch_of(sizes):
    adapter = GridAdapter({"patch": [4, 4]})
    gens = [torch.Generator().manual_seed(i) for i in range(len(sizes))]
    return collate([adapter.to_patches(torch.randn(1, 4 * h, 4 * w, generator=g), id=f"s{i}") for i, ((h, w), g) in enumerate(zip(sizes, gens))])


def test_mae_tokenizes_and_encodes_only_visible_patches():
    enc = tiny_encoder()
    mae = MAE(enc, {"kind": "random", "ratio": 0.75}, decoder_width=16, decoder_depth=1, decoder_heads=2)
    batch = batch_of([(4, 4), (2, 3), (1, 1)])  # 16, 6 and 1 valid tokens
    seen = {}
    enc.tokenizer.register_forward_hook(lambda m, i, o: seen.__setitem__("tok", i[0].shape))
    enc.trunk.register_forward_pre_hook(lambda m, i: seen.__setitem__("trunk", (i[0].shape, int((~i[1]).sum()))))
    loss, info = mae(batch, torch.Generator().manual_seed(0))
    visible = [16 - 12, 6 - 4, 1]
    assert seen["tok"][1] == max(visible)  # the tokenizer got the largest visible count, not 16
    assert seen["trunk"][0][1] == 1 + max(visible)  # plus the register token
    assert seen["trunk"][1] == sum(visible) + 3  # non-padded rows: visible tokens + 3 register tokens
    assert info["visible_tokens"] == sum(visible) and info["masked_tokens"] == 16
    loss.backward()
    assert torch.isfinite(loss)


def test_mae_visible_weight_adds_the_loss_on_visible_real_tokens_only():
    """visible_weight w: loss = masked loss + w * the same loss on visible, non-padding tokens (same
    mask, same prediction); w = 0 is plain MAE."""
    batch = batch_of([(4, 4), (2, 3)])  # the second sample is padded
    losses = {}
    for w in (0.0, 0.5):
        mae = MAE(tiny_encoder(), {"kind": "random", "ratio": 0.5}, decoder_width=16, decoder_depth=1, decoder_heads=2, visible_weight=w)
        losses[w], _ = mae(batch, torch.Generator().manual_seed(0))
    hidden = mae.adapter.sample_mask(batch, mae.masking, torch.Generator().manual_seed(0))
    enc_out, keep = mae.forward_encoder(batch, hidden)
    pred = mae.forward_decoder(batch, enc_out, keep).float()
    visible = ~hidden & ~batch.padding
    assert visible.sum() > 0 and batch.padding.sum() > 0
    per_token = ((pred - batch.targets) ** 2).mean(-1)
    expect = per_token[hidden].mean() + 0.5 * per_token[visible].mean()
    torch.testing.assert_close(losses[0.5], expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses[0.0], per_token[hidden].mean(), atol=1e-5, rtol=1e-5)


def test_mae_with_mask_tokens_in_the_encoder_decodes_the_encoder_output_at_every_position():
    """GraphMAE's layout: masked tokens stay in the encoder as mask embeddings, and the decoder reads the
    encoder's output at hidden and visible positions alike (not its own mask token)."""
    enc = tiny_encoder()
    mae = MAE(enc, {"kind": "random", "ratio": 0.5}, decoder_width=16, decoder_depth=1, decoder_heads=2,
              mask_tokens_in_encoder=True)
    batch = batch_of([(4, 4), (2, 3)])
    seen = {}
    mae.decoder_positions.register_forward_hook(lambda m, i, o: seen.__setitem__("pos", o))
    mae.decoder.register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0][:, 1:]))
    hidden = mae.adapter.sample_mask(batch, mae.masking, torch.Generator().manual_seed(0))
    enc_out, keep = mae.forward_encoder(batch, hidden)
    mae.forward_decoder(batch, enc_out, keep)
    x = seen["x"] - seen["pos"]
    latent = mae.decoder_embed(enc_out.tokens)
    token = mae.mask_token.expand_as(x)
    assert hidden.sum() > 0 and (~hidden & ~batch.padding).sum() > 0
    assert torch.allclose(x[~hidden], latent[~hidden], atol=1e-5)
    assert torch.allclose(x[hidden], latent[hidden], atol=1e-5)
    assert not torch.allclose(x[hidden], token[hidden], atol=1e-5)


def test_padding_never_leaks_into_valid_tokens():
    enc = tiny_encoder().eval()
    small = batch_of([(2, 2)])
    padded = batch_of([(2, 2), (4, 4)])
    a = enc(small).tokens[0]
    b = enc(padded).tokens[0, :4]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(enc.pooled(small)["meanstd"][0], enc.pooled(padded)["meanstd"][0], atol=1e-5)


def test_positions_follow_coords_for_any_grid_size():
    enc = tiny_encoder().eval()
    for size in [(2, 2), (3, 7), (9, 5)]:
        out = enc(batch_of([size])).tokens
        assert out.shape == (1, size[0] * size[1], 32)


def test_integer_structure_codes_become_learned_per_head_biases():
    class Coded(GridAdapter):
        attn_bias_buckets = 3
    enc = Encoder(Coded({"patch": [4, 4]}), width=32, depth=1, heads=4)
    adapter = Coded({"patch": [4, 4]})
    s = adapter.to_patches(torch.randn(1, 8, 8))
    s.attn_bias = torch.randint(0, 3, (4, 4))
    batch = collate([s])
    with torch.no_grad():
        enc.trunk.bias_tables[0].weight.normal_()
    out1 = enc(batch).tokens
    batch.attn_bias = (batch.attn_bias + 1) % 3
    assert not torch.allclose(out1, enc(batch).tokens)


def test_jepa_step_and_ema_update_in_place():
    enc = tiny_encoder()
    jepa = JEPA(enc, {"targets": 2}, predictor_width=16, predictor_depth=1, predictor_heads=2)
    teacher = jepa.make_teacher()
    batch = batch_of([(4, 4), (3, 3), (1, 1)])
    loss, info = jepa(batch, torch.Generator().manual_seed(0), teacher=teacher)
    loss.backward()
    assert torch.isfinite(loss) and info["target_tokens"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    ptrs = [p.data_ptr() for p in teacher.parameters()]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    ema_update(teacher, enc, 0.9)
    for b, t, s in zip(before, teacher.parameters(), enc.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-6)
    assert ptrs == [p.data_ptr() for p in teacher.parameters()]
    assert momentum_at(0, 10) == pytest.approx(0.996) and momentum_at(10, 10) == pytest.approx(1.0)


def test_jepa_instance_targets_are_per_channel_normalised_over_real_tokens_only():
    enc = tiny_encoder().eval()
    jepa = JEPA(enc, {"targets": 2}, predictor_width=16, predictor_depth=1, predictor_heads=2, target_layers=2, target_norm="instance")
    small, padded = batch_of([(3, 3)]), batch_of([(3, 3), (4, 4)])
    with torch.no_grad():
        t = jepa.targets(enc, small)[0]  # the mean of 2 per-channel normalised blocks per token, [9, 32]
    assert torch.allclose(t.mean(0), torch.zeros(32), atol=1e-5)
    assert t.std(0, unbiased=False).max() <= 1.0 + 1e-4
    ln = JEPA(enc, {"targets": 2}, predictor_width=16, predictor_depth=1, predictor_heads=2)
    with torch.no_grad():  # the I-JEPA default keeps the part every token shares: large channel means
        assert ln.targets(enc, small)[0].mean(0).abs().max() > 0.1
        # padding does not enter the statistics: the same sample padded gives the same targets
        assert torch.allclose(jepa.targets(enc, padded)[0, :9], t, atol=1e-4)
    with pytest.raises(ValueError, match="target_norm"):
        JEPA(enc, {"targets": 2}, target_norm="batch")


def test_save_and_load_pretrained_is_strict_and_exact(tmp_path):
    enc = tiny_encoder().eval()
    batch = batch_of([(3, 3)])
    enc.save_pretrained(tmp_path / "m")
    back = Encoder.from_pretrained(tmp_path / "m")
    assert torch.equal(enc(batch).tokens, back(batch).tokens)
    import json
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version"):
        Encoder.from_pretrained(tmp_path / "m")


def test_sampleTokens_rejects_inconsistent_rows():
    with pytest.raises(ValueError, match="coords"):
        SampleTokens(torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(3, 2), torch.ones(3, 2, dtype=torch.bool), id="bad")


def test_mean_std_pooling_has_finite_gradients_on_one_token_and_constant_samples():
    """A one-node graph (or a sample whose tokens are identical) has std 0; its gradient must stay
    finite, or one step of a supervised head turns every parameter NaN (PROTEINS_full has graphs whose node tokens are all alike)."""
    from foundation.trunk import masked_mean_std

    x = torch.randn(3, 4, 5)
    x.data[1] = x.data[1, :1]  # identical tokens
    padding = torch.tensor([[False, True, True, True], [False, False, False, True], [False, False, False, False]])
    x.requires_grad_(True)
    pooled = masked_mean_std(x, padding)
    pooled.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert pooled[0, 5:].abs().max() < 1e-5 and pooled[1, 5:].abs().max() < 1e-5
    # everywhere else it is the population std over real tokens
    torch.testing.assert_close(pooled[2, 5:], x[2].std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled[2, :5], x[2].mean(0))
