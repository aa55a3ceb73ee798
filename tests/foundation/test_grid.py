import pytest
import torch

from foundation.grid import normalized_targets, patchify, sincos_embedding, unpatchify


@pytest.mark.parametrize("shape,patch", [((3, 17), (4,)), ((2, 10, 13), (4, 5)), ((1, 9, 8, 7), (4, 4, 2))])
def test_patchify_roundtrip_and_edge_padding(shape, patch):
    x = torch.randn(shape)
    g = patchify(x, patch)
    back = unpatchify(g.patches, g.grid_shape, patch, shape[0])
    crop = back[(slice(None),) + tuple(slice(0, s) for s in shape[1:])]
    assert torch.equal(crop, x)
    # the padded edge is marked invalid, the rest valid
    valid = unpatchify(g.valid.float(), g.grid_shape, patch, shape[0])
    assert valid.sum() == x.numel()
    assert g.coords.shape == (g.patches.shape[0], len(patch))
    assert g.coords.max(0).values.tolist() == [s - 1 for s in g.grid_shape]


def test_invalid_values_are_excluded_and_wholly_invalid_tokens_are_padding():
    x = torch.randn(2, 8, 8)
    x[:, :4, :4] = float("nan")  # one whole patch of both channels
    x[0, 4, 4] = float("inf")
    g = patchify(x, (4, 4))
    assert g.token_padding.tolist() == [True, False, False, False]
    assert torch.isfinite(g.patches).all()
    assert not g.valid[3].all() and g.valid[3].sum() == 31


def test_normalized_targets_use_only_valid_values():
    p = torch.tensor([[1.0, 2.0, 3.0, 1000.0]])
    valid = torch.tensor([[True, True, True, False]])
    t = normalized_targets(p, valid)
    ref = (torch.tensor([1.0, 2.0, 3.0]) - 2.0) / torch.tensor([1.0, 2.0, 3.0]).var(unbiased=False).add(1e-6).sqrt()
    assert torch.allclose(t[0, :3], ref, atol=1e-5) and t[0, 3] == 0


def test_sincos_positions_work_for_any_grid_size():
    a = sincos_embedding(torch.tensor([[0.0, 1.0], [5.0, 7.0]]), 64)
    b = sincos_embedding(torch.tensor([[5.0, 7.0], [100.0, 3.0]]), 64)
    assert a.shape == (2, 64) and torch.allclose(a[1], b[0])
