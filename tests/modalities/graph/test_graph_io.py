"""Readers: real TU datasets, CSV, SMILES, networkx and Data objects, and clear errors on bad input."""
from __future__ import annotations

import logging

import networkx as nx
import pytest
import torch
from graph_helpers import shared_data
from torch_geometric.data import Data

from modalities.graph.adapter import GraphAdapter
from modalities.graph.io import GraphInputError, load_graphs, read_csv_folder, read_smiles, read_tu, smiles_to_graph


def raw_counts(folder, name):
    """Counts straight from the TU text files, independent of torch-geometric."""
    raw = folder / "raw"
    lines = lambda f: [ln for ln in (raw / f"{name}_{f}.txt").read_text().splitlines() if ln.strip()]  # noqa: E731
    ind = [int(v) for v in lines("graph_indicator")]
    edges = {tuple(sorted(map(int, ln.split(",")))) for ln in lines("A")}
    return {"graphs": max(ind), "nodes": len(ind), "undirected_edges": len({e for e in edges if e[0] != e[1]}),
            "labels": [int(v) for v in lines("graph_labels")]}


@pytest.mark.parametrize("name,graphs,node_dim,edge_types", [
    ("MUTAG", 188, 7, 4), ("ENZYMES", 600, 21, 0), ("PROTEINS_full", 1113, 3, 0)])
def test_tu_datasets_load_with_the_right_counts(name, graphs, node_dim, edge_types, tu_cache):
    folder = shared_data(f"graphs/{name}")
    ref = raw_counts(folder, name)
    gs = read_tu(folder, tu_cache)
    assert len(gs.graphs) == ref["graphs"] == graphs
    assert sum(g.num_nodes for g in gs.graphs) == ref["nodes"]
    und = sum(int((g.edge_index[0] < g.edge_index[1]).sum()) for g in gs.graphs)
    assert und == ref["undirected_edges"]
    assert {g.x.shape[1] for g in gs.graphs} == {node_dim}
    # labels: same partition as the file's (torch-geometric renumbers them 0..C-1)
    raw_labels = ref["labels"]
    assert len(set(raw_labels)) == len(gs.classes)
    mapping = dict(zip(raw_labels, gs.labels))
    assert all(mapping[r] == y for r, y in zip(raw_labels, gs.labels))
    if edge_types:
        assert all(hasattr(g, "edge_type") for g in gs.graphs)
        assert int(max(g.edge_type.max() for g in gs.graphs)) == edge_types - 1
    # the shared folder stays untouched (read-only for CI): processed/ went to the cache
    assert not (folder / "processed").exists()
    assert any(tu_cache.rglob("processed"))


def test_mutag_samples_through_the_adapter(tu_cache):
    folder = shared_data("graphs/MUTAG")
    a = GraphAdapter({"cache_dir": str(tu_cache)})
    ds = a.dataset({"root": str(folder), "labels": "dataset"}, train=True)
    a.fit(ds)
    assert a.patch_dim == 7 and a.coord_dims == 16 and a.attn_bias_buckets == 5 + 2 + 4
    s = ds[0]
    n = ds.set.graphs[0].num_nodes
    assert s.patches.shape == (n, 7) and s.coords.shape == (n, 16) and s.attn_bias.shape == (n, n)
    assert s.attn_bias.dtype == torch.long and int(s.attn_bias.max()) < a.attn_bias_buckets
    assert s.label == ds.label(0) and s.id == "MUTAG[0]"
    # training views flip Laplacian signs only; random-walk encodings and features stay
    t1, t2 = ds[(0, 1)], ds[(0, 2)]
    assert torch.equal(t1.coords[:, 8:], s.coords[:, 8:]) and torch.equal(t1.patches, s.patches)
    assert torch.allclose(t1.coords[:, :8].abs(), s.coords[:, :8].abs())
    assert not torch.equal(t1.coords[:, :8], t2.coords[:, :8]) or not torch.equal(t1.coords[:, :8], s.coords[:, :8])


def test_enzymes_continuous_attributes_are_standardised(tu_cache):
    a = GraphAdapter({"cache_dir": str(tu_cache)})
    ds = a.dataset({"root": str(shared_data("graphs/ENZYMES"))}, train=True)
    a.fit(ds)
    x = torch.cat([ds[i].patches for i in range(len(ds))])
    cont = torch.tensor(a.config["feature_std"]) != 1.0
    assert cont.sum() >= 15  # the 18 attributes (some may be binary), not the 3 one-hot labels
    assert torch.allclose(x[:, cont].mean(0), torch.zeros(int(cont.sum())), atol=1e-3)
    assert torch.allclose(x[:, cont].std(0, unbiased=False), torch.ones(int(cont.sum())), atol=1e-3)
    assert set(x[:, ~cont].unique().tolist()) <= {0.0, 1.0}


def write_csv(folder, nodes, edges, graphs=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nodes.csv").write_text(nodes)
    (folder / "edges.csv").write_text(edges)
    if graphs:
        (folder / "graphs.csv").write_text(graphs)
    return folder


def test_csv_folder_many_graphs_with_categorical_features(tmp_path):
    root = write_csv(tmp_path / "g",
                     "graph,node,atom,charge\na,1,C,0.5\na,2,O,-1\na,3,C,0\nb,x,N,1\nb,y,C,2\n",
                     "graph,src,dst,type\na,1,2,1\na,2,3,0\nb,x,y,2\n",
                     "graph,label\na,active\nb,inactive\n")
    gs = read_csv_folder(root)
    assert [g.num_nodes for g in gs.graphs] == [3, 2]
    assert gs.classes == ["active", "inactive"] and gs.labels == [0, 1]
    g = gs.graphs[0]
    # atom one-hot over sorted categories (C, N, O) + continuous charge
    assert torch.equal(g.x, torch.tensor([[1, 0, 0, 0.5], [0, 0, 1, -1], [1, 0, 0, 0]]))
    assert g.edge_index.shape == (2, 4) and g.edge_type.tolist() == [1, 0, 1, 0]


def test_csv_single_graph_node_labels_and_node_dataset(tmp_path):
    root = write_csv(tmp_path / "big", "node,f,label\n" + "".join(f"{i},{i % 3},{'ab'[i % 2]}\n" for i in range(30)),
                     "src,dst\n" + "".join(f"{i},{(i + 1) % 30}\n" for i in range(30)))
    a = GraphAdapter({"task": "node", "num_hops": 2, "fanout": 5, "max_nodes": 16})
    ds = a.dataset({"root": str(root)}, train=True)
    a.fit(ds)
    assert len(ds) == 30 and ds.classes == ["a", "b"] and ds.label(3) == 1
    s = ds[7]
    assert s.patches.shape[0] == 5  # node 7 and its 2-hop ring neighbourhood
    assert s.id.endswith("node 7")
    assert torch.equal(ds[7].patches, s.patches)  # evaluation view is deterministic


def test_edges_to_missing_nodes_name_the_graph(tmp_path):
    root = write_csv(tmp_path / "bad", "graph,node,f\ng1,1,0\ng1,2,1\n", "graph,src,dst\ng1,1,3\n")
    with pytest.raises(GraphInputError, match=r"graph bad:graph g1: edge \(1, 3\) points at node '3'"):
        read_csv_folder(root)
    bad = Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0, 1], [1, 5]]))
    with pytest.raises(GraphInputError, match=r"memory\[0\]: edge \(1, 5\) points at a missing node"):
        load_graphs({"graphs": [bad]})


def test_nan_empty_and_ragged_inputs_raise_or_are_counted(caplog):
    good = Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0, 1], [1, 2]]))
    nan = Data(x=torch.tensor([[1.0, 0], [float("nan"), 1]]), edge_index=torch.tensor([[0], [1]]))
    empty = Data(x=torch.zeros(0, 2), edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=0)
    ragged = Data(x=torch.ones(2, 3), edge_index=torch.tensor([[0], [1]]))
    with pytest.raises(GraphInputError, match=r"memory\[1\]: node 1 has NaN"):
        load_graphs({"graphs": [good, nan]})
    with pytest.raises(GraphInputError, match=r"memory\[1\]: has no nodes"):
        load_graphs({"graphs": [good, empty]})
    with pytest.raises(GraphInputError, match=r"memory\[1\]: node features have width 3, earlier graphs have 2"):
        load_graphs({"graphs": [good, ragged]})
    with caplog.at_level(logging.WARNING):
        gs = load_graphs({"graphs": [good, nan, empty, ragged, good], "on_error": "skip"})
    assert len(gs.graphs) == 2 and gs.skipped == 3
    assert "skipped 3 of 5 graphs" in caplog.text


def test_smiles_atoms_bonds_and_invalid_input(tmp_path, caplog):
    g = smiles_to_graph("c1ccccc1O", "phenol")
    assert g.num_nodes == 7 and g.edge_index.shape[1] == 14
    assert sorted(set(g.edge_type.tolist())) == [0, 3]  # one single C-O bond, aromatic ring bonds
    assert g.x[:, 2].sum() == 1  # one oxygen
    f = tmp_path / "mols.csv"
    f.write_text("smiles,activity\nCCO,1\nnot_a_smiles,0\nc1ccncc1,0\n")
    with pytest.raises(GraphInputError, match=r"mols.csv line 3: invalid SMILES 'not_a_smiles'"):
        read_smiles(f, "column:activity")
    with caplog.at_level(logging.WARNING):
        gs = read_smiles(f, "column:activity", on_error="skip")
    assert len(gs.graphs) == 2 and gs.skipped == 1 and gs.labels == [1, 0] and gs.smiles == ["CCO", "c1ccncc1"]
    a = GraphAdapter()
    ds = a.dataset({"manifest": str(f), "labels": "column:activity", "on_error": "skip"}, train=True)
    assert len(ds) == 2 and a.patch_dim == g.x.shape[1]


def test_networkx_and_data_objects():
    ring = nx.cycle_graph(6)
    star = nx.star_graph(4)
    for n in ring.nodes:
        ring.nodes[n]["x"] = [1.0, float(n % 2)]
    for n in star.nodes:
        star.nodes[n]["x"] = [0.0, 1.0]
    gs = load_graphs({"graphs": [ring, star], "graph_labels": [0, 1]})
    assert [g.num_nodes for g in gs.graphs] == [6, 5] and gs.labels == [0, 1]
    assert gs.graphs[0].x.shape == (6, 2)
    d = Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]),
             edge_attr=torch.eye(3)[[0, 2, 1]], y=torch.tensor([1]))
    gs = load_graphs({"graphs": [d]})
    assert gs.graphs[0].edge_type.tolist() == [0, 2, 1] and gs.labels == [1]
    # featureless graphs get degree one-hots through the adapter
    a = GraphAdapter()
    ds = a.dataset({"graphs": [nx.path_graph(5), nx.star_graph(3)], "graph_labels": [0, 1]}, train=True)
    assert a.config["degree_features"] == 16 and ds[1].patches[0, 3] == 1  # star centre has degree 3
