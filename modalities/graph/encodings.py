"""Structural encodings of one graph: what the trunk sees of its shape.

Node tokens carry only node features, so structure reaches the model through two channels of the
token contract: per-node positional encodings in ``coords`` (Laplacian eigenvectors and random-walk
return probabilities) and pairwise integer codes in ``attn_bias`` (clipped shortest-path distance,
with the edge type on direct edges). Everything here is plain dense torch on one graph: graphs are
small, and large graphs are cut into subgraphs first (see :mod:`modalities.graph.sampling`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def dense_adjacency(edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Symmetric 0/1 adjacency without self loops (direction and multi-edges are dropped on purpose)."""
    a = torch.zeros(num_nodes, num_nodes, dtype=dtype)
    if edge_index.numel():
        a[edge_index[0], edge_index[1]] = 1
        a[edge_index[1], edge_index[0]] = 1
    a.fill_diagonal_(0)
    return a


def canonical_signs(vectors: Tensor) -> Tensor:
    """Fix each eigenvector's arbitrary sign so that the same graph, in any node order, gets the same one.

    The sign making the third moment positive is chosen (a node-order-free statistic); vectors whose
    third moment is ~0 fall back to making the largest-magnitude entry positive.
    """
    if vectors.numel() == 0:
        return vectors
    skew = (vectors**3).sum(0)
    idx = vectors.abs().argmax(0)
    top = vectors.gather(0, idx.unsqueeze(0)).squeeze(0)
    sign = torch.where(skew.abs() > 1e-6, skew.sign(), top.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return vectors * sign


def laplacian_pe(edge_index: Tensor, num_nodes: int, dims: int, invariant: bool = True) -> tuple[Tensor, Tensor]:
    """The ``dims`` eigenvectors of the symmetric normalised Laplacian after the trivial one.

    Returns (vectors [n, dims], eigenvalues [dims]); graphs with fewer than ``dims + 1`` nodes are
    padded with zero columns (torch-geometric's ``AddLaplacianEigenvectorPE`` refuses them, and such
    graphs are common in MUTAG, ENZYMES and PROTEINS). Signs are canonical; training flips them.
    With ``invariant``, eigenvectors of repeated eigenvalues are zeroed: any basis of such an
    eigenspace is as valid as another, so keeping one would make a graph's embedding depend on the
    order its nodes are listed in (symmetric molecules, leaf twins and cycles have such spaces).
    """
    out = torch.zeros(num_nodes, dims, dtype=torch.float64)
    vals = torch.zeros(dims, dtype=torch.float64)
    if dims == 0 or num_nodes < 2:
        return out, vals
    a = dense_adjacency(edge_index, num_nodes)
    deg = a.sum(1)
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
    lap = torch.eye(num_nodes, dtype=torch.float64) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    w, v = torch.linalg.eigh(lap)
    k = min(dims, num_nodes - 1)
    vecs = canonical_signs(v[:, 1 : k + 1])
    if invariant:
        gap = (w[:, None] - w[None, :]).abs() < 1e-6
        repeated = gap.sum(1) > 1
        vecs = vecs * (~repeated[1 : k + 1]).to(vecs.dtype)
    out[:, :k] = vecs
    vals[:k] = w[1 : k + 1]
    return out, vals


def random_walk_pe(edge_index: Tensor, num_nodes: int, steps: int) -> Tensor:
    """Return probabilities diag((D^-1 A)^k) for k = 1..steps, [n, steps] (RWSE, Dwivedi et al. 2022).

    Permutation-equivariant and sign-free, so it complements the Laplacian eigenvectors.
    """
    if steps == 0:
        return torch.zeros(num_nodes, 0, dtype=torch.float64)
    dtype = torch.float64 if num_nodes <= 512 else torch.float32
    a = dense_adjacency(edge_index, num_nodes, dtype)
    deg = a.sum(1, keepdim=True)
    p = torch.where(deg > 0, a / deg.clamp(min=1), torch.zeros_like(a))
    out = torch.zeros(num_nodes, steps, dtype=torch.float64)
    m = p
    for k in range(steps):
        out[:, k] = m.diagonal().double()
        if k + 1 < steps:
            m = m @ p
    return out


def hop_distances(edge_index: Tensor, num_nodes: int, max_distance: int) -> Tensor:
    """Shortest-path hop counts clipped at ``max_distance + 1`` (also for unreachable pairs), int64 [n, n]."""
    far = max_distance + 1
    dist = torch.full((num_nodes, num_nodes), far, dtype=torch.long)
    dist.fill_diagonal_(0)
    if num_nodes == 0:
        return dist
    a = dense_adjacency(edge_index, num_nodes, torch.float32)
    reached = torch.eye(num_nodes, dtype=torch.bool)
    frontier = reached.float()
    for d in range(1, max_distance + 1):
        nxt = (frontier @ a) > 0
        new = nxt & ~reached
        if not new.any():
            break
        dist[new] = d
        reached |= new
        frontier = new.float()
    return dist


def structure_codes(
    edge_index: Tensor, num_nodes: int, max_distance: int, edge_type: Tensor | None = None
) -> Tensor:
    """Integer ``attn_bias`` codes [n, n]: the clipped hop distance, or ``max_distance + 2 + type`` on a typed edge.

    Codes lie in ``[0, max_distance + 2 + edge_types)``; the trunk learns one bias per code and head.
    """
    codes = hop_distances(edge_index, num_nodes, max_distance)
    if edge_type is not None and edge_index.numel():
        t = max_distance + 2 + edge_type.long()
        codes[edge_index[0], edge_index[1]] = t
        codes[edge_index[1], edge_index[0]] = t
    return codes


def num_codes(max_distance: int, edge_types: int) -> int:
    """How many distinct ``attn_bias`` codes :func:`structure_codes` can produce."""
    return max_distance + 2 + edge_types
