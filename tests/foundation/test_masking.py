import torch

from foundation.masking import multiblock_mask, sample_mask, visible_tokens


def ragged_batch():
    coords = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij"), -1).reshape(1, 30, 2).repeat(4, 1, 1)
    padding = torch.zeros(4, 30, dtype=torch.bool)
    padding[1, 12:] = True  # 12 valid tokens
    padding[2, 1:] = True  # a one-token sample
    padding[3, ::3] = True  # padding in the middle (invalid tokens)
    return coords, padding


def test_every_kind_honours_per_sample_ratio_padding_and_keeps_a_visible_token():
    coords, padding = ragged_batch()
    valid = (~padding).sum(1)
    for kind in ("random", "block", "tube", "span"):
        for ratio in (0.0, 0.5, 0.75, 0.95):
            m = sample_mask(coords, padding, kind, ratio, torch.Generator().manual_seed(1), axis=1, span=2)
            assert not (m & padding).any(), kind
            expected = torch.minimum((valid * ratio).floor().long(), valid - 1)
            assert torch.equal(m.sum(1), expected), (kind, ratio)
            assert ((~m & ~padding).sum(1) >= 1).all()


def test_masks_are_seeded_and_block_masks_are_contiguous():
    coords, padding = ragged_batch()
    a = sample_mask(coords, padding, "block", 0.5, torch.Generator().manual_seed(3), blocks=1)
    b = sample_mask(coords, padding, "block", 0.5, torch.Generator().manual_seed(3), blocks=1)
    assert torch.equal(a, b)
    # one block: hidden tokens are the nearest to one seed, so their spread is small vs random masking
    r = sample_mask(coords, padding, "random", 0.5, torch.Generator().manual_seed(3))
    spread = lambda m: coords[0][m[0]].std(0).sum()  # noqa: E731
    assert spread(a) < spread(r)


def test_tube_masks_whole_lines_along_the_axis():
    coords, padding = ragged_batch()
    padding[:] = False
    m = sample_mask(coords, padding, "tube", 0.6, torch.Generator().manual_seed(0), axis=0)  # lines along axis 0
    grid = m[0].view(6, 5)
    assert all(col.all() or not col.any() for col in grid.T)  # 0.6 * 30 = 18 = 3 whole columns of 6


def test_visible_tokens_gather_only_unmasked_valid_tokens():
    coords, padding = ragged_batch()
    m = sample_mask(coords, padding, "random", 0.75, torch.Generator().manual_seed(0))
    v = visible_tokens(m, padding)
    for b in range(4):
        kept = v.index[b][~v.padding[b]]
        assert set(kept.tolist()) == set(torch.nonzero(~m[b] & ~padding[b]).flatten().tolist())


def test_multiblock_targets_and_context_are_disjoint_and_nonempty():
    coords, padding = ragged_batch()
    mb = multiblock_mask(coords, padding, generator=torch.Generator().manual_seed(0))
    context = ~mb.context_hidden
    assert not (context & padding).any() and not (mb.targets & padding.unsqueeze(1)).any()
    assert not (context.unsqueeze(1) & mb.targets).any()
    assert (context.sum(1) >= 1).all()
    assert (mb.targets[[0, 1, 3]].sum(-1) >= 1).all()
