"""The adapter's per-view augmentation (used by contrastive pretraining) acts on tokens exactly as
rotating and scaling the cloud before grouping would."""
from __future__ import annotations

import torch

from foundation.tokens import SampleTokens, collate
from modalities.base import adapter_class
from modalities.pointcloud.dataset import tokens_from_points


def batch_and_adapter(scale, rotate=True):
    ad = adapter_class("pointcloud")({"points": 64, "groups": 8, "group_size": 4, "scale": scale, "rotate": rotate,
                                      "features": ["intensity"]})
    g = torch.Generator().manual_seed(0)
    clouds = [(torch.randn(64, 3, generator=g), torch.rand(64, 1, generator=g)) for _ in range(3)]
    return ad, collate([SampleTokens(**tokens_from_points(x, f, 8, 4)) for x, f in clouds])


def absolute(batch):
    pts = batch.patches.reshape(*batch.coords.shape[:2], 4, 4)
    return pts[..., :3] + batch.coords.unsqueeze(2), pts[..., 3]


def test_view_rotation_turns_groups_and_centres_together_about_the_up_axis():
    ad, batch = batch_and_adapter([1.0, 1.0])
    view = ad.view_augment(batch, torch.Generator().manual_seed(1))
    (before, feat0), (after, feat1) = absolute(batch), absolute(view)
    assert torch.allclose(before[..., 2], after[..., 2], atol=1e-5)  # up axis untouched
    assert torch.allclose(before[..., :2].norm(dim=-1), after[..., :2].norm(dim=-1), atol=1e-5)  # a rotation
    assert not torch.allclose(before, after, atol=1e-2)  # and not the identity
    assert torch.equal(feat0, feat1)  # extra channels (intensity) stay
    # one rotation per sample: every point of a sample turns by the same angle
    ang = torch.atan2(after[..., 1], after[..., 0]) - torch.atan2(before[..., 1], before[..., 0])
    ang = torch.remainder(ang, 2 * torch.pi).reshape(3, -1)
    assert (ang.max(1).values - ang.min(1).values < 1e-3).all()


def test_view_scaling_stretches_each_axis_within_the_configured_range():
    ad, batch = batch_and_adapter([0.5, 2.0], rotate=False)
    view = ad.view_augment(batch, torch.Generator().manual_seed(2))
    ratio = (absolute(view)[0] / absolute(batch)[0]).reshape(3, -1, 3)
    per_axis = ratio.median(1).values  # [3 samples, 3 axes]
    assert torch.allclose(ratio, per_axis.unsqueeze(1).expand_as(ratio), atol=1e-3)
    assert ((per_axis >= 0.5) & (per_axis <= 2.0)).all() and per_axis.std() > 0.05
