"""Farthest point sampling, k-nearest neighbours and Chamfer distance in plain batched torch.

pyg-lib and torch-cluster do not install here (nor on many users' machines), so these are written
with ordinary tensor ops: FPS is a loop over the samples to pick (each step O(B*N)), kNN and
Chamfer use ``torch.cdist`` in query chunks so 32k-point clouds stay within a few hundred MB.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def farthest_point_sample(xyz: Tensor, m: int, valid: Tensor | None = None, start: Tensor | None = None) -> Tensor:
    """Indices [B, m] of ``m`` points picked greedily, each the farthest from those picked so far.

    ``xyz`` [B, N, 3]; ``valid`` [B, N] excludes padded points; ``start`` [B] is the first pick
    (default: the first valid point, so the evaluation view is deterministic). If a sample has
    fewer than ``m`` valid points, the picks repeat its points once all are taken.

    On the CPU (DataLoader workers) the picks come from a numpy loop with preallocated buffers,
    one cloud at a time: FPS is ``m`` dependent steps, so its cost is per-step overhead, and a
    torch step costs ~8x a numpy step on one core (a batched torch step is memory-bound on CPU).
    Other devices run the batched torch loop. Both give the same picks (float32, same sums, first
    maximum on ties); ``tests/modalities/pointcloud/test_pc_ops.py`` checks that.
    """
    if xyz.device.type == "cpu":
        return _fps_numpy(xyz, m, valid, start)
    return _fps_torch(xyz, m, valid, start)


def _first_valid(valid: Tensor | None, b: int) -> Tensor:
    return torch.zeros(b, dtype=torch.long) if valid is None else valid.float().argmax(dim=1)


def _fps_numpy(xyz: Tensor, m: int, valid: Tensor | None, start: Tensor | None) -> Tensor:
    b, n, _ = xyz.shape
    starts = (_first_valid(valid, b) if start is None else start.reshape(b)).tolist()
    coords = xyz.detach().float().numpy()
    picked = np.empty((b, m), dtype=np.int64)
    diff, step = np.empty((3, n), np.float32), np.empty(n, np.float32)
    for s in range(b):
        cloud = np.ascontiguousarray(coords[s].T)  # [3, N]: one broadcast subtract per step
        dist = np.full(n, np.inf, np.float32)
        if valid is not None:  # padded points sit at -1, below every real distance, so never picked
            dist[~valid[s].numpy()] = -1.0
        current = int(starts[s])
        for i in range(m):
            picked[s, i] = current
            np.subtract(cloud, cloud[:, current: current + 1], out=diff)
            np.multiply(diff, diff, out=diff)
            np.add(diff[0], diff[1], out=step)
            step += diff[2]  # (dx^2 + dy^2) + dz^2: the torch loop's order, so the same float32 sums
            np.minimum(dist, step, out=dist)
            current = int(dist.argmax())
    return torch.from_numpy(picked)


def _fps_torch(xyz: Tensor, m: int, valid: Tensor | None, start: Tensor | None) -> Tensor:
    b, n, _ = xyz.shape
    xyz = xyz.float()
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=xyz.device)
    if start is None:
        start = valid.float().argmax(dim=1)
    picked = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device)
    dist = dist.masked_fill(~valid, -1.0)
    batch = torch.arange(b, device=xyz.device)
    current = start.to(xyz.device).long()
    for i in range(m):
        picked[:, i] = current
        d = ((xyz - xyz[batch, current].unsqueeze(1)) ** 2).sum(-1)
        dist = torch.where(valid, torch.minimum(dist, d), dist)
        current = dist.argmax(dim=1)
    return picked


def knn(query: Tensor, ref: Tensor, k: int, ref_valid: Tensor | None = None, chunk: int = 1024) -> Tensor:
    """Indices [B, M, k] of the ``k`` nearest ``ref`` [B, N, 3] points of each ``query`` [B, M, 3], nearest first."""
    b, n, _ = ref.shape
    if k > n:
        raise ValueError(f"kNN with k={k} needs at least {k} reference points, got {n}")
    out = []
    for s in range(0, query.shape[1], chunk):
        d = torch.cdist(query[:, s: s + chunk].float(), ref.float())  # [B, m, N]
        if ref_valid is not None:
            d = d.masked_fill(~ref_valid.unsqueeze(1), float("inf"))
        out.append(d.topk(k, dim=-1, largest=False, sorted=True).indices)
    return torch.cat(out, 1)


def group_points(xyz: Tensor, groups: int, group_size: int, valid: Tensor | None = None,
                 start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Point-MAE grouping: FPS centres [B, G, 3] and the kNN indices [B, G, K] of each group."""
    centre_idx = farthest_point_sample(xyz, groups, valid, start)
    centres = torch.gather(xyz, 1, centre_idx.unsqueeze(-1).expand(-1, -1, 3))
    return centres, knn(centres, xyz, group_size, valid)


def chamfer_distance(a: Tensor, b: Tensor, a_valid: Tensor | None = None, b_valid: Tensor | None = None,
                     squared: bool = True) -> Tensor:
    """Symmetric Chamfer distance per set: mean over a of min over b, plus mean over b of min over a.

    ``a`` [S, Na, 3], ``b`` [S, Nb, 3]; invalid points take part in neither direction. With
    ``squared`` (Point-MAE's "L2" Chamfer) distances are squared. Returns [S].
    """
    a, b = a.float(), b.float()
    # squared distances by expansion: cdist's backward is NaN where two points coincide
    d = ((a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(1) - 2 * a @ b.transpose(1, 2)).clamp(min=0)
    if not squared:
        d = d.clamp(min=1e-12).sqrt()
    big = torch.finfo(d.dtype).max
    if b_valid is not None:
        d = d.masked_fill(~b_valid.unsqueeze(1), big)
    if a_valid is not None:
        d = d.masked_fill(~a_valid.unsqueeze(2), big)
    ab, ba = d.min(2).values, d.min(1).values  # [S, Na], [S, Nb]
    av = torch.ones_like(ab, dtype=torch.bool) if a_valid is None else a_valid
    bv = torch.ones_like(ba, dtype=torch.bool) if b_valid is None else b_valid
    ab = torch.where(av, ab, torch.zeros_like(ab)).sum(1) / av.sum(1).clamp(min=1)
    ba = torch.where(bv, ba, torch.zeros_like(ba)).sum(1) / bv.sum(1).clamp(min=1)
    return ab + ba
