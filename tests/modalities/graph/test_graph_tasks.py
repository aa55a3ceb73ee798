"""Downstream helpers: SVM cross-validation, WL features, scaffold splits."""
from __future__ import annotations

import numpy as np
import torch
from graph_helpers import cycle_graph, path_graph
from torch_geometric.data import Data

from modalities.graph.tasks import scaffold_split, svm_cv, wl_features


def test_svm_cv_uses_the_same_folds_and_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 5))
    X[:, 0] += 3 * y
    noise = rng.normal(size=(80, 5))
    r1 = svm_cv({"good": X, "noise": noise}, y, folds=5, seeds=(0, 1))
    r2 = svm_cv({"good": X}, y, folds=5, seeds=(0, 1))
    assert r1["mean"] > 0.9 and len(r1["fold_accuracy"]) == 10 and r1["poolings"].get("good", 0) >= 8
    assert r1["fold_accuracy"] == r2["fold_accuracy"]  # inner CV picks "good" -> identical folds, identical scores
    assert svm_cv(noise, y, folds=5, seeds=(0,))["mean"] < 0.75


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
