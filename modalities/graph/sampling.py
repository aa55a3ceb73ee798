"""k-hop subgraph sampling in plain torch, for graphs too large to be one sample.

torch-geometric's neighbour loaders need pyg-lib or torch-sparse; this needs only a CSR index
(``rowptr``, ``col``: two int64 arrays, which can be memory-mapped for graphs larger than memory).
A sample is the seed node plus up to ``fanout`` random neighbours per node per hop, cut at
``max_nodes``, with the induced edges among the chosen nodes.
"""
from __future__ import annotations

import torch
from torch import Tensor


class CSRGraph:
    """Compressed sparse rows of an undirected graph; neighbours of ``v`` are ``col[rowptr[v]:rowptr[v+1]]``."""

    def __init__(self, edge_index: Tensor, num_nodes: int, edge_type: Tensor | None = None) -> None:
        src = torch.cat([edge_index[0], edge_index[1]])
        dst = torch.cat([edge_index[1], edge_index[0]])
        typ = torch.cat([edge_type, edge_type]) if edge_type is not None else None
        key = src * num_nodes + dst
        key = torch.unique(key)  # sorted by (src, dst), duplicates from symmetrising dropped
        src, dst = key // num_nodes, key % num_nodes
        if typ is not None:
            full = torch.cat([edge_index[0], edge_index[1]]) * num_nodes + torch.cat([edge_index[1], edge_index[0]])
            lookup = torch.full_like(key, -1)
            pos = torch.searchsorted(key, full)
            lookup[pos] = typ
            typ = lookup
        keep = src != dst
        self.col = dst[keep]
        self.types = typ[keep] if typ is not None else None
        counts = torch.bincount(src[keep], minlength=num_nodes)
        self.rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.rowptr[1:] = counts.cumsum(0)
        self.num_nodes = num_nodes

    def degree(self) -> Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]


def k_hop_sample(
    g: CSRGraph, seed: int, hops: int, fanout: int, max_nodes: int, rng: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Nodes (seed first, then by hop), induced ``edge_index`` in local ids, and its edge types."""
    nodes = [torch.tensor([seed])]
    seen = torch.tensor([seed])
    frontier = nodes[0]
    total = 1
    for _ in range(hops):
        if total >= max_nodes or frontier.numel() == 0:
            break
        picked = []
        for v in frontier.tolist():
            lo, hi = int(g.rowptr[v]), int(g.rowptr[v + 1])
            if hi - lo <= fanout:
                picked.append(g.col[lo:hi])
            else:
                picked.append(g.col[lo + torch.randperm(hi - lo, generator=rng)[:fanout]])
        cand = torch.unique(torch.cat(picked)) if picked else torch.zeros(0, dtype=torch.long)
        cand = cand[~torch.isin(cand, seen)]
        cand = cand[torch.randperm(cand.numel(), generator=rng)][: max_nodes - total]
        if cand.numel() == 0:
            break
        nodes.append(cand)
        seen = torch.cat([seen, cand])
        total += cand.numel()
        frontier = cand
    order = torch.cat(nodes)
    return (order, *induced_edges(g, order))


def induced_edges(g: CSRGraph, nodes: Tensor) -> tuple[Tensor, Tensor | None]:
    """Edges of ``g`` among ``nodes``, relabelled to positions in ``nodes`` (searchsorted, no O(N) map)."""
    sorted_nodes, perm = torch.sort(nodes)
    starts, ends = g.rowptr[nodes], g.rowptr[nodes + 1]
    lengths = ends - starts
    if int(lengths.sum()) == 0:
        return torch.zeros(2, 0, dtype=torch.long), None if g.types is None else torch.zeros(0, dtype=torch.long)
    src_local = torch.repeat_interleave(torch.arange(nodes.numel()), lengths)
    offsets = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    idx = torch.arange(int(lengths.sum())) + offsets
    nbr = g.col[idx]
    pos = torch.searchsorted(sorted_nodes, nbr).clamp(max=nodes.numel() - 1)
    inside = sorted_nodes[pos] == nbr
    ei = torch.stack([src_local[inside], perm[pos[inside]]])
    types = g.types[idx][inside] if g.types is not None else None
    return ei, types
