"""Downstream helpers: SVM cross-validation, WL features, scaffold splits."""
from __future__ import annotations

import numpy as np
import torch
from graph_helpers import cycle_graph, path_graph
from torch_geometric.data import Data

from foundation.probes import kfold_accuracy
from modalities.graph.tasks import scaffold_split, wl_features


def test_kfold_accuracy_uses_the_same_folds_and_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 5))
    X[:, 0] += 3 * y
    noise = rng.normal(size=(80, 5))
    r1 = kfold_accuracy({"good": X, "noise": noise}, y, folds=5, seeds=(0, 1))
    r2 = kfold_accuracy({"good": X}, y, folds=5, seeds=(0, 1))
    assert r1["mean"] > 0.9 and len(r1["fold_accuracy"]) == 10 and r1["poolings"].get("good", 0) >= 8
    assert r1["fold_accuracy"] == r2["fold_accuracy"]  # inner CV picks "good" -> identical folds, identical scores
    assert kfold_accuracy(noise, y, folds=5, seeds=(0,))["mean"] < 0.75


def test_kfold_accuracy_on_a_precomputed_wl_kernel_learns_and_shuffled_labels_do_not():
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, size=(60, 40)).astype(float)
    y = np.repeat([0, 1], 30)
    counts[y == 1, :5] += 4  # class 1 graphs carry more of five subtree patterns
    good = kfold_accuracy({"wl": counts}, y, folds=5, seeds=(0,), kernel=True)
    shuffled = kfold_accuracy({"wl": counts}, rng.permutation(y), folds=5, seeds=(0,), kernel=True)
    assert good["mean"] > 0.9 and shuffled["mean"] < 0.75 and len(good["fold_accuracy"]) == 5


def test_wl_features_tell_cycles_from_paths_and_ignore_node_order():
    def data(ei, n, perm=None):
        x = torch.ones(n, 1)
        if perm is not None:
            ei = torch.argsort(perm)[ei]
        return Data(x=x, edge_index=torch.cat([ei, ei.flip(0)], 1), num_nodes=n)

    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    X = wl_features([data(cycle_graph(6), 6), data(cycle_graph(6), 6, perm), data(path_graph(6), 6)])
    assert np.array_equal(X[0], X[1]) and not np.array_equal(X[0], X[2])


def test_scaffold_split_keeps_scaffolds_together():
    smiles = ["c1ccccc1C", "c1ccccc1CC", "c1ccccc1O", "C1CCNCC1C", "C1CCNCC1O", "CCO", "CCCO", "c1ccncc1", "c1ccncc1C",
              "C1CC1C"]
    train, valid, test = scaffold_split(smiles, (0.6, 0.2, 0.2))
    assert sorted(train + valid + test) == list(range(10))
    from modalities.graph.tasks import murcko_scaffold

    scaf = [murcko_scaffold(s) for s in smiles]
    for a in (train, valid, test):
        for b in (train, valid, test):
            if a is not b:
                assert not ({scaf[i] for i in a} & {scaf[i] for i in b})
    assert set(train) >= {0, 1, 2}  # the largest scaffold group (benzene) fills train first
