"""FPS, kNN and Chamfer against straightforward references."""
from __future__ import annotations

import numpy as np
import torch

from modalities.pointcloud.ops import _fps_numpy, _fps_torch, chamfer_distance, farthest_point_sample, group_points, knn


def reference_fps(x: np.ndarray, m: int, start: int = 0) -> list[int]:
    picked, dist = [start], np.full(len(x), np.inf)
    for _ in range(m - 1):
        dist = np.minimum(dist, ((x - x[picked[-1]]) ** 2).sum(1))
        picked.append(int(dist.argmax()))
    return picked


def test_fps_matches_reference_and_is_distinct_and_spread():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 500, 3, generator=g, dtype=torch.float64).float()
    idx = farthest_point_sample(x, 32, start=torch.tensor([0, 7, 99]))
    for b, s in enumerate([0, 7, 99]):
        assert idx[b].tolist() == reference_fps(x[b].double().numpy(), 32, s)
        assert len(set(idx[b].tolist())) == 32
        # well spread: the closest pair of FPS picks is far apart compared with random picks
        picks = x[b, idx[b]]
        rand = x[b, torch.randperm(500, generator=g)[:32]]
        min_d = lambda p: torch.pdist(p).min().item()  # noqa: E731
        assert min_d(picks) > 2 * min_d(rand)


def test_fps_ignores_padding():
    x = torch.rand(1, 50, 3)
    valid = torch.zeros(1, 50, dtype=torch.bool)
    valid[0, 10:30] = True
    idx = farthest_point_sample(x, 20, valid)
    assert set(idx[0].tolist()) == set(range(10, 30))


def test_fps_cpu_kernel_picks_what_the_device_loop_picks():
    """The numpy kernel (CPU workers) and the batched torch loop (GPU) are one algorithm: same picks,
    with padding, with fewer valid points than picks, and on a grid full of tied distances."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 700, 3, generator=g) * torch.tensor([5.0, 1.0, 0.2])
    valid = torch.rand(4, 700, generator=g) > 0.3
    valid[3] = False
    valid[3, :40] = True  # 40 valid points, 64 picks: the picks repeat once all are taken
    start = torch.tensor([0, 5, 17, 2])
    for args in [(None, None), (valid, None), (None, start)]:
        assert torch.equal(_fps_numpy(x, 64, *args), _fps_torch(x, 64, *args))
    grid = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    assert torch.equal(_fps_numpy(grid, 50, None, None), _fps_torch(grid, 50, None, None))
    # negative control: the comparison can tell two different pick sequences apart
    assert not torch.equal(_fps_numpy(x, 64, None, start), _fps_torch(x, 64, None, start.roll(1)))


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    q, r = torch.rand(2, 40, 3, generator=g), torch.rand(2, 300, 3, generator=g)
    idx = knn(q, r, 8, chunk=16)
    for b in range(2):
        d = ((q[b, :, None].double() - r[b, None].double()) ** 2).sum(-1).numpy()
        ref = np.argsort(d, axis=1, kind="stable")[:, :8]
        np.testing.assert_allclose(np.take_along_axis(d, idx[b].numpy(), 1), np.take_along_axis(d, ref, 1), rtol=1e-5, atol=1e-9)


def test_group_points_shapes_and_membership():
    x = torch.rand(2, 256, 3)
    centres, nbr = group_points(x, 16, 8)
    assert centres.shape == (2, 16, 3) and nbr.shape == (2, 16, 8)
    # each centre is its own nearest neighbour
    assert torch.allclose(torch.gather(x, 1, nbr[:, :, 0:1].expand(-1, -1, 3)), centres)


def reference_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = ((a[:, None] - b[None]) ** 2).sum(-1)
    return float(d.min(1).mean() + d.min(0).mean())


def test_chamfer_matches_reference_with_masks_and_has_finite_gradients():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(4, 30, 3, generator=g), torch.rand(4, 25, 3, generator=g)
    bv = torch.rand(4, 25, generator=g) > 0.3
    got = chamfer_distance(a, b, b_valid=bv)
    for s in range(4):
        assert abs(got[s].item() - reference_chamfer(a[s].double().numpy(), b[s][bv[s]].double().numpy())) < 1e-5
    # identical sets (coincident points) give zero distance and finite gradients
    p = a.clone().requires_grad_(True)
    d = chamfer_distance(p, a[:, torch.randperm(30)])
    assert d.abs().max() < 1e-5
    d.sum().backward()
    assert torch.isfinite(p.grad).all()
