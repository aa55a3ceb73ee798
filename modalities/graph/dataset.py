"""Graphs as token samples: one token per node, structure in ``coords`` and ``attn_bias``.

``GraphTokenDataset`` serves many small graphs (molecules, proteins) one graph per sample;
``NodeTokenDataset`` serves one large graph as k-hop subgraphs around each node (node-level tasks,
graphs too large to attend over at once). Both compute a graph's encodings once and cache them;
the training view only flips Laplacian eigenvector signs (their sign is arbitrary, so the model must
not depend on it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Data

from foundation.tokens import SampleTokens
from modalities.base import TokenDataset
from modalities.graph.encodings import laplacian_pe, random_walk_pe, structure_codes
from modalities.graph.io import GraphInputError, GraphSet
from modalities.graph.sampling import CSRGraph, k_hop_sample

log = logging.getLogger(__name__)


@dataclass
class Structure:
    """A graph's cached encodings: Laplacian PE [n, L], random-walk PE [n, R], codes [n, n] (uint8)."""

    lap: Tensor
    rw: Tensor
    codes: Tensor


def degree_onehot(edge_index: Tensor, num_nodes: int, buckets: int) -> Tensor:
    """One-hot of min(degree, buckets - 1): the usual node features of featureless graphs (GraphMAE on IMDB)."""
    deg = torch.zeros(num_nodes, dtype=torch.long)
    if edge_index.numel():
        a = torch.zeros(num_nodes, num_nodes, dtype=torch.bool) if num_nodes <= 4096 else None
        if a is not None:
            a[edge_index[0], edge_index[1]] = True
            a[edge_index[1], edge_index[0]] = True
            a.fill_diagonal_(False)
            deg = a.sum(1)
        else:
            deg = torch.bincount(edge_index[0], minlength=num_nodes)
    return torch.nn.functional.one_hot(deg.clamp(max=buckets - 1), buckets).float()


def node_features(g: Data, config: dict, name: str, degree: Tensor | None = None, rw: Tensor | None = None) -> Tensor:
    """The node feature matrix the tokenizer sees: raw x (+ degree one-hot) (+ random-walk return
    probabilities with ``rw_features``), standardised, zero-padded.

    ``degree`` overrides the degrees counted in ``g`` (a sampled subgraph's nodes keep their full degree);
    ``rw`` passes the graph's cached random-walk encoding.
    """
    parts = []
    if getattr(g, "x", None) is not None:
        parts.append(g.x.float())
    if config["degree_features"]:
        k = config["degree_features"]
        parts.append(degree_onehot(g.edge_index, g.num_nodes, k) if degree is None
                     else torch.nn.functional.one_hot(degree.clamp(max=k - 1), k).float())
    if config.get("rw_features") and config["rw_steps"]:
        parts.append((rw if rw is not None else random_walk_pe(g.edge_index, g.num_nodes, config["rw_steps"])).float())
    if not parts:
        raise GraphInputError(f"graph {name}: has no node features; set adapter.degree_features=K to use degree one-hots")
    x = torch.cat(parts, 1)
    if config["feature_mean"] is not None:
        mean, std = torch.tensor(config["feature_mean"]), torch.tensor(config["feature_std"])
        if mean.numel() != x.shape[1]:
            raise GraphInputError(
                f"graph {name}: {x.shape[1]} node features, but this model was fitted on {mean.numel()} (inconsistent feature widths)"
            )
        x = (x - mean) / std
    width = config["feature_dim"]
    if x.shape[1] > width:
        raise GraphInputError(f"graph {name}: {x.shape[1]} node features, more than adapter.feature_dim={width}")
    if x.shape[1] < width:
        x = torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], 1)
    return x


def compute_structure(g: Data, config: dict, name: str) -> Structure:
    et = getattr(g, "edge_type", None)
    if et is not None and et.numel() and int(et.max()) >= config["edge_types"]:
        raise GraphInputError(
            f"graph {name}: edge type {int(et.max())} but adapter.edge_types={config['edge_types']}; raise adapter.edge_types"
        )
    lap, _ = laplacian_pe(g.edge_index, g.num_nodes, config["lap_dims"], config["lap_invariant"])
    rw = random_walk_pe(g.edge_index, g.num_nodes, config["rw_steps"])
    codes = structure_codes(g.edge_index, g.num_nodes, config["max_distance"], et)
    return Structure(lap.float(), rw.float(), codes.to(torch.uint8))


def graph_tokens(x: Tensor, s: Structure, rng: torch.Generator | None, rw_in_features: bool = False, **fields) -> SampleTokens:
    """Assemble one sample; the training view flips each Laplacian eigenvector's sign at random.
    With ``rw_in_features`` the random-walk encoding is already in ``x`` (a feature, so it is masked
    and reconstructed), and ``coords`` hold the Laplacian eigenvectors only."""
    lap = s.lap
    if rng is not None and lap.shape[1]:
        signs = torch.randint(0, 2, (lap.shape[1],), generator=rng).float() * 2 - 1
        lap = lap * signs
    coords = lap if rw_in_features else torch.cat([lap, s.rw], 1)
    return SampleTokens(
        patches=x, coords=coords, targets=x.clone(),
        target_valid=torch.ones_like(x, dtype=torch.bool), attn_bias=s.codes.long(), **fields,
    )


class GraphTokenDataset(TokenDataset):
    """Many graphs, one per sample. Graphs above ``max_nodes`` are cut to a k-hop neighbourhood
    (a random centre when training, node 0 otherwise) so one outlier cannot blow up attention."""

    def __init__(self, graphs: GraphSet, config: dict) -> None:
        self.set, self.config = graphs, config
        self.classes = graphs.classes
        self._cache: dict[int, Structure] = {}
        self.lengths = [min(g.num_nodes, config["max_nodes"]) for g in graphs.graphs]

    def __len__(self) -> int:
        return len(self.set.graphs)

    def label(self, index: int) -> int | None:
        return None if self.set.labels is None else self.set.labels[index]

    def _crop(self, g: Data, rng: torch.Generator | None, index: int) -> Data:
        csr = CSRGraph(g.edge_index, g.num_nodes, getattr(g, "edge_type", None))
        gen = rng if rng is not None else torch.Generator().manual_seed(index)
        centre = int(torch.randint(g.num_nodes, (1,), generator=gen)) if rng is not None else 0
        nodes, ei, et = k_hop_sample(csr, centre, self.config["max_nodes"], 10**9, self.config["max_nodes"], gen)
        sub = Data(edge_index=ei, num_nodes=nodes.numel())
        if getattr(g, "x", None) is not None:
            sub.x = g.x[nodes]
        if et is not None:
            sub.edge_type = et
        return sub

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens:
        g, name = self.set.graphs[index], self.set.names[index]
        if g.num_nodes > self.config["max_nodes"]:
            g = self._crop(g, rng, index)
            s = compute_structure(g, self.config, name)
        else:
            s = self._cache.get(index)
            if s is None:
                s = self._cache[index] = compute_structure(g, self.config, name)
        x = node_features(g, self.config, name, rw=s.rw)
        return graph_tokens(x, s, rng, bool(self.config.get("rw_features")), id=name, path=self.set.source, label=self.label(index))


class NodeTokenDataset(TokenDataset):
    """One large graph; sample ``i`` is the k-hop neighbourhood of node ``i`` (node ``i`` is token 0).

    Neighbourhoods are drawn with ``fanout`` neighbours per node per hop, up to ``max_nodes``; the
    evaluation view draws with a generator seeded by the node, so it is the same every time.
    """

    def __init__(self, graphs: GraphSet, config: dict) -> None:
        if len(graphs.graphs) != 1:
            raise GraphInputError(f"{graphs.source}: node-level tasks need one graph, got {len(graphs.graphs)}")
        self.set, self.config = graphs, config
        self.graph = graphs.graphs[0]
        self.csr = CSRGraph(self.graph.edge_index, self.graph.num_nodes, getattr(self.graph, "edge_type", None))
        names = getattr(self.graph, "node_labels", None)
        if names is None and getattr(self.graph, "node_y", None) is not None:
            names = [str(int(v)) for v in self.graph.node_y]
        from foundation.sources import class_index

        self.labels, self.classes = class_index(list(names)) if names is not None else (None, [])
        self.lengths = [config["max_nodes"]] * self.graph.num_nodes

    def __len__(self) -> int:
        return int(self.graph.num_nodes)

    def label(self, index: int) -> int | None:
        return None if self.labels is None else self.labels[index]

    def subgraph(self, index: int, rng: torch.Generator | None) -> tuple[Data, Tensor]:
        gen = rng if rng is not None else torch.Generator().manual_seed(index)
        c = self.config
        nodes, ei, et = k_hop_sample(self.csr, index, c["num_hops"], c["fanout"], c["max_nodes"], gen)
        sub = Data(edge_index=ei, num_nodes=nodes.numel())
        if getattr(self.graph, "x", None) is not None:
            sub.x = self.graph.x[nodes]
        if et is not None:
            sub.edge_type = et
        return sub, nodes

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens:
        sub, nodes = self.subgraph(index, rng)
        name = f"{self.set.names[0]}:node {index}"
        s = compute_structure(sub, self.config, name)
        x = node_features(sub, self.config, name, degree=self.csr.degree()[nodes], rw=s.rw)
        return graph_tokens(x, s, rng, bool(self.config.get("rw_features")), id=name,
                            path=self.set.source, label=self.label(index))
