"""Downstream pieces of the graph field: node-level embeddings, scaffold splits, and the classical
Weisfeiler-Lehman baseline every graph-classification result is compared with. The field's SVM
10-fold protocol is the core's ``foundation.probes.kfold_accuracy``.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import torch


def wl_features(graphs, iterations: int = 3) -> np.ndarray:
    """Weisfeiler-Lehman subtree label counts (Shervashidze et al. 2011), the classical baseline.

    Initial labels are the node's discrete (0/1) feature columns, e.g. one-hot atom types (all equal
    for featureless graphs or graphs with continuous attributes only);
    each round relabels a node by its label and the sorted multiset of its neighbours' labels.
    """
    vocab: dict = {}
    rows: list[Counter] = []
    xs = [getattr(g, "x", None) for g in graphs]
    binary = None
    if all(x is not None for x in xs) and xs:
        allx = torch.cat(xs)
        binary = ((allx == 0) | (allx == 1)).all(0)
        if not bool(binary.any()):
            binary = None  # only continuous columns: WL has no discrete labels, all nodes start equal
    for g, x in zip(graphs, xs):
        n = int(g.num_nodes)
        # discrete (0/1, e.g. one-hot label) columns only: continuous attributes (ENZYMES) would make every
        # node its own label and the kernel a lookup table of node ids
        lab = [("0",)] * n if x is None or binary is None else [(tuple(r),) for r in x[:, binary].to(torch.int8).tolist()]
        adj = defaultdict(list)
        for a, b in g.edge_index.t().tolist():
            adj[a].append(b)
        counts: Counter = Counter()
        cur = [vocab.setdefault(("init", lab[v]), len(vocab)) for v in range(n)]
        counts.update(cur)
        for it in range(iterations):
            cur = [vocab.setdefault((it, cur[v], tuple(sorted(cur[u] for u in adj[v]))), len(vocab)) for v in range(n)]
            counts.update(cur)
        rows.append(counts)
    X = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, c in enumerate(rows):
        for k, v in c.items():
            X[i, k] = v
    return X


# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def node_embeddings(encoder, dataset, batch_size: int = 64) -> dict:
    """Node-level embeddings from a :class:`~modalities.graph.dataset.NodeTokenDataset`: the output of
    each subgraph's centre token (token 0), and the mean over its subgraph, plus labels."""
    from foundation.data import eval_loader
    from foundation.trunk import masked_mean

    encoder.eval()
    centre, mean, labels = [], [], []
    for batch in eval_loader(dataset, batch_size):
        enc = encoder(batch)
        centre.append(enc.tokens[:, 0].float().numpy())
        mean.append(masked_mean(enc.tokens, enc.padding).float().numpy())
        labels += batch.labels.tolist() if batch.labels is not None else [-1] * batch.size
    return {"centre": np.concatenate(centre), "mean": np.concatenate(mean), "labels": np.array(labels)}


# ----------------------------------------------------------------------------------------------
def murcko_scaffold(smiles: str) -> str:
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_split(smiles: list[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> tuple[list[int], list[int], list[int]]:
    """Deterministic Bemis-Murcko scaffold split (MoleculeNet/OGB): whole scaffold groups, largest
    first, fill train, then validation, then test, so test molecules have scaffolds never trained on."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(smiles):
        groups[murcko_scaffold(s)].append(i)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    n = len(smiles)
    train, valid, test = [], [], []
    for g in ordered:
        if len(train) + len(g) <= fractions[0] * n:
            train += g
        elif len(valid) + len(g) <= fractions[1] * n:
            valid += g
        else:
            test += g
    return sorted(train), sorted(valid), sorted(test)
