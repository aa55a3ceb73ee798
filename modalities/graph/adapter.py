"""The graph adapter: torch-geometric graphs in, one token per node out.

Preprocessing that travels with an exported encoder (``config``): feature width and per-column
standardisation, degree one-hots for featureless graphs, the sizes of the structural encodings,
the hop-distance clip and edge-type count behind the ``attn_bias`` codes, and the subgraph sampling
of large graphs. See ``modalities/graph/README.md`` for the layouts ``data.root`` may point at.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from foundation.errors import DataError
from foundation.recipes import RecipeError
from modalities.base import Adapter, TokenDataset
from modalities.graph.dataset import GraphTokenDataset, NodeTokenDataset, node_features
from modalities.graph.encodings import num_codes
from modalities.graph.io import load_graphs
from modalities.graph.masking import hop_block_scores
from modalities.graph.tokenizer import NodeTokenizer, scaled_cosine_error

log = logging.getLogger(__name__)


class GraphAdapter(Adapter):
    """Graph classification (many graphs) and node-level work (one large graph, ``task: node``)."""

    name = "graph"
    position_kind = "linear"
    # GraphMAE masks random nodes at a high ratio; ``masking.kind: hop`` hides hop-distance balls.
    default_masking: ClassVar[dict[str, Any]] = {"kind": "random", "ratio": 0.5}
    mask_kinds = ("hop",)
    defaults: ClassVar[dict[str, Any]] = {
        "task": "graph",  # graph: one sample per graph; node: k-hop subgraph per node of one graph
        "feature_dim": 0,  # width P of the node features; 0 = take it from the training data
        "degree_features": 0,  # >0: append one-hot of min(degree, K-1); set to 16 for featureless graphs
        "feature_mean": None,  # per-column standardisation, set by fit() (binary columns keep 0/1)
        "feature_std": None,
        "lap_dims": 8,  # Laplacian eigenvectors in coords (zero-padded on smaller graphs)
        "lap_invariant": True,  # zero eigenvectors of repeated eigenvalues (basis-ambiguous, node-order dependent)
        "rw_steps": 8,  # random-walk return probabilities in coords
        "rw_features": False,  # True: random-walk encodings are node features (masked, reconstructed), not coords
        "max_distance": 5,  # shortest-path distance clip for attn_bias codes
        "edge_types": 4,  # edge/bond type codes on direct edges
        "max_nodes": 1024,  # graphs above this are cut to a k-hop neighbourhood
        "num_hops": 2,  # node task: hops and neighbours per hop of each node's subgraph
        "fanout": 10,
        "sce_alpha": 2.0,  # GraphMAE scaled-cosine exponent
        "smiles_column": "smiles",
        "cache_dir": None,  # where TUDataset's processed/ goes (default ~/.cache/domainfm or $DOMAINFM_CACHE)
    }

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        c = self.config
        if c["task"] not in ("graph", "node"):
            raise RecipeError(f"adapter.task must be 'graph' or 'node', got {c['task']!r}")
        self.attn_bias_buckets = num_codes(int(c["max_distance"]), int(c["edge_types"]))

    # -- shapes --------------------------------------------------------------------------------
    @property
    def patch_dim(self) -> int:
        if not self.config["feature_dim"]:
            raise RuntimeError("graph adapter: feature_dim is not known yet; build a dataset first (or set adapter.feature_dim)")
        return int(self.config["feature_dim"])

    @property
    def coord_dims(self) -> int:
        c = self.config
        return int(c["lap_dims"]) + (0 if c.get("rw_features") else int(c["rw_steps"]))

    # -- data ----------------------------------------------------------------------------------
    def dataset(self, data: dict, train: bool) -> TokenDataset:
        """Read ``data`` (see :func:`modalities.graph.io.load_graphs`); the first dataset fixes the
        feature width (and turns on degree one-hots for graphs without features)."""
        c = self.config
        graphs = load_graphs(data, c["cache_dir"], c["smiles_column"])
        has_x = [getattr(g, "x", None) is not None for g in graphs.graphs]
        if not any(has_x) and not c["degree_features"]:
            graphs.inputs.note(f"graphs in {graphs.source} have no node features: using degree one-hots (adapter.degree_features=16)")
            c["degree_features"] = 16
        if any(has_x) and not all(has_x):
            missing = graphs.names[has_x.index(False)]
            raise DataError(f"graph {missing}", "has no node features while others do (inconsistent feature widths)", "give every graph node features, or none")
        raw_width = self._raw_width(graphs.graphs[0])
        if not c["feature_dim"]:
            c["feature_dim"] = raw_width
        if raw_width == 0:
            raise DataError(graphs.source, "graphs have zero-width node features", "set adapter.degree_features=16 for featureless graphs")
        ds = NodeTokenDataset(graphs, c) if c["task"] == "node" else GraphTokenDataset(graphs, c)
        ds.inputs = graphs.inputs  # the data summary and summary.json read the bad-input counts here
        return ds

    def fit(self, dataset: TokenDataset) -> None:
        """Standardise continuous feature columns on the training graphs (ENZYMES' attributes span
        orders of magnitude); 0/1 columns such as one-hot labels are left as they are."""
        c = self.config
        saved = c["feature_mean"], c["feature_std"]
        c["feature_mean"] = c["feature_std"] = None
        graphs = dataset.set.graphs
        try:
            x = torch.cat([node_features(g, {**c, "feature_dim": self._raw_width(g)}, n)
                           for g, n in zip(graphs, dataset.set.names)])
        except Exception:
            c["feature_mean"], c["feature_std"] = saved
            raise
        x = x.double()
        binary = ((x == 0) | (x == 1)).all(0)
        mean = torch.where(binary, torch.zeros_like(x[0]), x.mean(0))
        std = torch.where(binary, torch.ones_like(x[0]), x.std(0, unbiased=False).clamp(min=1e-6))
        c["feature_mean"], c["feature_std"] = mean.tolist(), std.tolist()

    def _raw_width(self, g) -> int:
        c = self.config
        return ((g.x.shape[1] if getattr(g, "x", None) is not None else 0) + int(c["degree_features"])
                + (int(c["rw_steps"]) if c.get("rw_features") else 0))

    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        """Network families (SBM, small-world, scale-free) with matched node and edge counts, as TU files."""
        from modalities.graph.synthetic import write_network_families

        root = write_network_families(Path(out_dir), n, seed)
        return {"root": str(root), "labels": "dataset"}

    # -- model parts ---------------------------------------------------------------------------
    def mask_scores(self, kind: str, coords: Tensor, padding: Tensor, attn_bias: Tensor | None,
                    generator: torch.Generator | None, blocks: int = 2, **_) -> Tensor:
        """``hop``: hop distance (from the ``attn_bias`` codes) to the nearest of ``blocks`` seed nodes."""
        if kind != "hop" or attn_bias is None:
            return super().mask_scores(kind, coords, padding, attn_bias, generator)
        return hop_block_scores(attn_bias, padding, int(self.config["max_distance"]), blocks, generator)

    def make_tokenizer(self, width: int) -> nn.Module:
        return NodeTokenizer(self.patch_dim, width)

    def reconstruction_loss(self, pred: Tensor, targets: Tensor, target_valid: Tensor, mask: Tensor) -> Tensor:
        """GraphMAE's scaled cosine error; with ``rw_features`` the node features and the random-walk
        encoding (the last ``rw_steps`` columns) are two targets, each with its own cosine, so the
        structure columns cannot drown a one-hot atom type."""
        c, alpha = self.config, float(self.config["sce_alpha"])
        k = int(c["rw_steps"]) if c.get("rw_features") else 0
        if not k or k >= pred.shape[-1]:
            return scaled_cosine_error(pred, targets, target_valid, mask, alpha)
        return (scaled_cosine_error(pred[..., :-k], targets[..., :-k], target_valid[..., :-k], mask, alpha)
                + scaled_cosine_error(pred[..., -k:], targets[..., -k:], target_valid[..., -k:], mask, alpha))
