"""The classical baseline's descriptors: right against direct computations, and able to tell shapes apart."""
from __future__ import annotations

import math

import numpy as np
import torch

from modalities.pointcloud.descriptors import classical_features, occupancy, shape_distributions


def sphere(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def cube(n: int, seed: int) -> torch.Tensor:
    """Points on the surface of the cube [-a, a]^3 inscribed in the unit sphere."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1)
    face = torch.randint(3, (n,), generator=g)
    x[torch.arange(n), face] = torch.sign(x[torch.arange(n), face])
    return x / math.sqrt(3)


def test_d2_is_the_histogram_of_all_pairwise_distances_and_ignores_point_order():
    xyz = sphere(300, 0)
    d2 = shape_distributions(xyz, bins=16)["d2"]
    dist = np.linalg.norm(xyz.numpy()[:, None] - xyz.numpy()[None], axis=-1)[np.triu_indices(300, 1)]
    ref, _ = np.histogram(dist, bins=16, range=(0, 2))
    np.testing.assert_allclose(d2.numpy(), np.sqrt(ref / ref.sum()), atol=1e-6)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(shape_distributions(xyz[perm], bins=16)["d2"].numpy(), d2.numpy(), atol=1e-12)


def test_radial_histogram_of_a_unit_sphere_sits_in_its_last_bin_and_occupancy_sums_to_one():
    sd = shape_distributions(sphere(500, 0), bins=10)
    assert sd["radial"][-1] > 0.99
    occ = occupancy(cube(2000, 0).float(), grid=4)
    assert occ.shape == (64,) and torch.isclose((occ ** 2).sum(), torch.tensor(1.0))
    assert occ.view(4, 4, 4)[1:3, 1:3, 1:3].sum() == 0  # a hollow cube leaves the inner cells empty


def test_descriptors_separate_spheres_from_cubes_of_the_same_size():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    clouds = [sphere(512, s) for s in range(20)] + [cube(512, s) for s in range(20)]
    y = np.array([0] * 20 + [1] * 20)
    feats = classical_features(clouds, grid=4, bins=16)
    assert {k: v.shape[0] for k, v in feats.items()} == {"histograms": 40, "occupancy": 40, "all": 40}
    assert cross_val_score(LogisticRegression(max_iter=1000), feats["histograms"], y, cv=5).mean() > 0.95
