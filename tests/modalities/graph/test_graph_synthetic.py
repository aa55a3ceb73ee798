"""Synthetic families: labelled by structure, and not given away by node or edge counts or feature averages."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modalities.graph.adapter import GraphAdapter
from modalities.graph.io import read_csv_folder, read_tu
from modalities.graph.synthetic import write_community_graph, write_ring_molecules


def trivial_accuracy(gs) -> float:
    """Node count, edge count and per-graph feature mean/std: what must not predict the class."""
    X = np.array([[g.num_nodes, g.edge_index.shape[1], *g.x.mean(0).tolist(), *g.x.std(0).tolist()] for g in gs.graphs])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, X, gs.labels, cv=5).mean())


def structure_accuracy(gs) -> float:
    """Degree spread and largest degree (scale-free hubs) and shortest cycle length (ring size): the
    structure the classes live in must predict them, or "counts say nothing" would hold for random labels."""
    rows = []
    for g in gs.graphs:
        deg = np.bincount(g.edge_index[0].numpy(), minlength=g.num_nodes)
        rows.append([deg.std(), deg.max(), girth(g.edge_index.numpy(), g.num_nodes)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, np.array(rows), gs.labels, cv=5).mean())


def girth(edge_index: np.ndarray, n: int) -> int:
    """Length of the shortest cycle (BFS from every node)."""
    adj = [[] for _ in range(n)]
    for a, b in edge_index.T:
        adj[a].append(b)
    best = n + 1
    for s in range(n):
        dist, parent, queue = {s: 0}, {s: -1}, [s]
        for v in queue:
            for w in adj[v]:
                if w not in dist:
                    dist[w], parent[w] = dist[v] + 1, v
                    queue.append(w)
                elif parent[v] != w:
                    best = min(best, dist[v] + dist[w] + 1)
    return best


def test_network_families_live_in_structure_and_counts_say_nothing(tmp_path):
    data = GraphAdapter().synthetic(tmp_path, 300, seed=0)
    gs = read_tu(data["root"], tmp_path / "cache")
    assert len(gs.graphs) == 300 and sorted(set(gs.labels)) == [0, 1, 2]
    assert all(g.edge_index.shape[1] == 4 * g.num_nodes for g in gs.graphs)  # exactly 2n undirected edges
    acc = trivial_accuracy(gs)
    assert acc < 0.5, acc  # chance is 1/3
    assert structure_accuracy(gs) > 0.8


def test_ring_molecules_live_in_ring_size_and_counts_say_nothing(tmp_path):
    gs = read_tu(write_ring_molecules(tmp_path, 200, seed=0), tmp_path / "cache")
    assert len(gs.graphs) == 200 and all(hasattr(g, "edge_type") for g in gs.graphs)
    assert all(g.edge_index.shape[1] == 2 * (g.num_nodes + 1) for g in gs.graphs)  # two rings: n + 1 bonds
    acc = trivial_accuracy(gs)
    assert acc < 0.65, acc  # chance is 1/2
    assert structure_accuracy(gs) > 0.9


def test_community_graph_for_node_classification(tmp_path):
    """One graph whose node classes are its communities: most edges stay inside a community (a quarter
    would with 4 communities drawn independently of the edges), and the node dataset serves them."""
    root = write_community_graph(tmp_path, nodes=600, communities=4, seed=0)
    gs = read_csv_folder(root)
    g = gs.graphs[0]
    assert len(gs.graphs) == 1 and g.num_nodes == 600
    community = np.array(g.node_labels)
    src, dst = g.edge_index.numpy()
    assert (community[src] == community[dst]).mean() > 0.6
    a = GraphAdapter({"task": "node", "max_nodes": 32})
    ds = a.dataset({"root": str(root)}, train=True)
    a.fit(ds)
    assert len(ds) == 600 and len(ds.classes) == 4
    s = ds[0]
    assert s.patches.shape[0] <= 32 and s.label == ds.label(0)


def test_node_embeddings_of_subgraphs_beat_the_nodes_own_features(tmp_path):
    """Node classification on one large community graph: embeddings of each node's sampled 2-hop
    neighbourhood (even from an untrained encoder) carry the community, which a node's own weak
    features do not; paired over 5 random splits."""
    import torch

    from foundation.model import Encoder
    from foundation.probes import linear_probe, paired_interval
    from modalities.graph.tasks import node_embeddings

    root = write_community_graph(tmp_path, nodes=400, communities=4, degree=8, seed=1)
    a = GraphAdapter({"task": "node", "max_nodes": 24, "fanout": 8, "lap_dims": 4, "rw_steps": 4})
    ds = a.dataset({"root": str(root)}, train=True)
    a.fit(ds)
    torch.manual_seed(0)
    enc = Encoder.build(a, {"width": 32, "depth": 2, "heads": 4})
    e = node_embeddings(enc, ds, batch_size=100)
    own = torch.stack([ds[i].patches[0] for i in range(len(ds))]).numpy()
    y = e["labels"]
    emb_acc, own_acc = [], []
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(y))
        tr, te = perm[:200], perm[200:]
        emb_acc.append(linear_probe({"centre": e["centre"][tr], "mean": e["mean"][tr]}, y[tr],
                                    {"centre": e["centre"][te], "mean": e["mean"][te]}, y[te], seed)["accuracy"])
        own_acc.append(linear_probe(own[tr], y[tr], own[te], y[te], seed)["accuracy"])
    diff, lo, hi = paired_interval(emb_acc, own_acc)
    assert lo > 0, (np.mean(emb_acc), np.mean(own_acc), lo, hi)
