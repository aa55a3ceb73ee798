"""The graph adapter inside the core's encoder: permutation invariance, no padding leaks, SCE loss,
token-local tokenizer, k-hop sampling and hop-block masking."""
from __future__ import annotations

import networkx as nx
import pytest
import torch
from graph_helpers import path_graph, random_graph
from torch_geometric.data import Data

from foundation.model import Encoder
from foundation.tokens import collate
from modalities.graph.adapter import GraphAdapter
from modalities.graph.masking import hop_block_mask
from modalities.graph.sampling import CSRGraph, k_hop_sample
from modalities.graph.tokenizer import scaled_cosine_error

MODEL = {"width": 32, "depth": 2, "heads": 4}


def build(graphs, **cfg):
    a = GraphAdapter(cfg)
    ds = a.dataset({"graphs": graphs}, train=True)
    a.fit(ds)
    torch.manual_seed(0)
    return a, ds, Encoder.build(a, MODEL).eval()


def typed_graph(n, seed):
    ei = random_graph(n, 0.25, seed)
    g = torch.Generator().manual_seed(seed)
    half = ei.shape[1] // 2
    t = torch.randint(0, 3, (half,), generator=g)
    return Data(x=torch.randn(n, 5, generator=g), edge_index=ei, edge_type=torch.cat([t, t]))


def permuted(d: Data, perm: torch.Tensor) -> Data:
    """Node perm[j] of ``d`` becomes node j."""
    inv = torch.argsort(perm)
    return Data(x=d.x[perm], edge_index=inv[d.edge_index], edge_type=d.edge_type)


def test_graph_embedding_is_invariant_to_node_order():
    g = typed_graph(13, 1)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(3))
    a, ds, enc = build([g, permuted(g, perm)])
    e = enc.pooled(collate([ds[0], ds[1]]))
    for pool in ("mean", "meanstd", "max", "cls"):
        assert torch.allclose(e[pool][0], e[pool][1], atol=1e-4), pool
    # negative control: a different graph with the same size and features is told apart
    other = Data(x=g.x, edge_index=random_graph(13, 0.25, 99), edge_type=None)
    a2, ds2, enc2 = build([g, other])
    e2 = enc2.pooled(collate([ds2[0], ds2[1]]))
    assert not torch.allclose(e2["mean"][0], e2["mean"][1], atol=1e-3)


def test_padding_never_leaks_across_graphs_in_a_batch():
    small, big = typed_graph(5, 2), typed_graph(30, 4)
    a, ds, enc = build([small, big])
    alone = enc.pooled(collate([ds[0]]))
    batched = enc.pooled(collate([ds[0], ds[1]]))
    assert collate([ds[0], ds[1]]).padding[0].sum() == 25
    for pool in ("mean", "meanstd", "max", "cls", "mid_meanstd"):
        assert torch.allclose(alone[pool][0], batched[pool][0], atol=1e-5), pool
    # negative control: if padding were not marked, the padded rows would change the small graph's embedding
    b = collate([ds[0], ds[1]])
    b.padding[0] = False
    assert not torch.allclose(alone["mean"][0], enc.pooled(b)["mean"][0], atol=1e-3)


def test_scaled_cosine_error():
    t = torch.randn(2, 6, 4)
    valid = torch.ones_like(t, dtype=torch.bool)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    assert scaled_cosine_error(3.0 * t, t, valid, mask) < 1e-6  # scale-invariant: perfect direction costs 0
    assert torch.isclose(scaled_cosine_error(-t, t, valid, mask), torch.tensor(4.0))  # (1 - (-1))^2
    # only masked tokens count
    pred = t.clone()
    pred[:, 3:] = -t[:, 3:]
    assert scaled_cosine_error(pred, t, valid, mask) < 1e-6
    # alpha > 1 down-weights easy nodes relative to alpha = 1
    noisy = t + 0.3 * torch.randn_like(t)
    assert scaled_cosine_error(noisy, t, valid, mask, alpha=3) < scaled_cosine_error(noisy, t, valid, mask, alpha=1)


def test_tokenizer_is_token_local():
    a, ds, enc = build([typed_graph(8, 5)])
    p = torch.randn(1, 8, a.patch_dim)
    out = enc.tokenizer(p, {})
    p2 = p.clone()
    p2[0, 3] += 1.0
    out2 = enc.tokenizer(p2, {})
    changed = (out2 - out).abs().sum(-1)[0] > 0
    assert changed.tolist() == [i == 3 for i in range(8)]


def test_k_hop_sampling_matches_bfs_and_respects_limits():
    g = nx.barabasi_albert_graph(300, 3, seed=0)
    ei = torch.tensor(list(g.edges)).t()
    csr = CSRGraph(ei, 300)
    gen = torch.Generator().manual_seed(0)
    nodes, sub_ei, _ = k_hop_sample(csr, 7, hops=2, fanout=10**6, max_nodes=10**6, rng=gen)
    assert set(nodes.tolist()) == set(nx.ego_graph(g, 7, radius=2).nodes) and nodes[0] == 7
    ref = nx.subgraph(g, nodes.tolist())
    got = {tuple(sorted((int(nodes[a]), int(nodes[b])))) for a, b in sub_ei.t().tolist()}
    assert got == {tuple(sorted(e)) for e in ref.edges}
    nodes, sub_ei, _ = k_hop_sample(csr, 0, hops=2, fanout=3, max_nodes=8, rng=gen)
    assert len(nodes) <= 8 and len(set(nodes.tolist())) == len(nodes)
    # at most 3 first-hop neighbours of the seed are drawn
    first = {int(v) for v in nodes[1:]} & set(g.neighbors(0))
    assert len(first) <= 3 + 8  # second-hop nodes may also be neighbours of the seed


def test_hop_block_mask_hides_neighbourhoods():
    a = GraphAdapter()
    ds = a.dataset({"graphs": [Data(x=torch.ones(20, 1), edge_index=path_graph(20))]}, train=True)
    b = collate([ds[0]])
    g = torch.Generator().manual_seed(0)
    m = hop_block_mask(b.attn_bias, b.padding, 0.3, a.config["max_distance"], blocks=1, generator=g)
    hidden = m[0].nonzero().flatten()
    assert len(hidden) == 6
    assert (hidden.max() - hidden.min()) == 5  # one contiguous stretch of the path


def test_large_graph_cropping_keeps_samples_bounded():
    big = Data(x=torch.randn(400, 3), edge_index=torch.tensor(list(nx.barabasi_albert_graph(400, 2, seed=1).edges)).t())
    a, ds, enc = build([big], max_nodes=64)
    s = ds[0]
    assert s.patches.shape[0] == 64 and s.attn_bias.shape == (64, 64)
    assert torch.equal(ds[0].patches, s.patches)
    assert ds[(0, 5)].patches.shape[0] == 64


def test_hop_masking_is_a_recipe_mask_kind_of_the_core_mae():
    from foundation.objectives.mae import MAE
    from foundation.recipes import RecipeError, load_recipe

    a, ds, enc = build([Data(x=torch.randn(20, 5), edge_index=path_graph(20)), typed_graph(12, 1)])
    mae = MAE(enc.train(), {"kind": "hop", "ratio": 0.3, "blocks": 1}, 16, 1, 2)
    seen = {}
    enc.tokenizer.register_forward_hook(lambda m, i, o: seen.__setitem__("n", i[0].shape[1]))
    loss, info = mae(collate([ds[0], ds[1]]), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and info["masked_tokens"] == 6 + 3 and seen["n"] == 14
    assert load_recipe("graph-mae", ["masking.kind=hop"])["masking"]["kind"] == "hop"
    with pytest.raises(RecipeError, match="masking.kind='hop' is not one of"):
        load_recipe("grid-mae", ["masking.kind=hop"])


def test_rw_features_are_masked_node_features_and_coords_keep_the_laplacian():
    from modalities.graph.encodings import random_walk_pe

    g = typed_graph(12, 5)
    a, ds, enc = build([g, typed_graph(9, 6)], rw_features=True, lap_dims=4, rw_steps=6)
    assert a.patch_dim == 5 + 6 and a.coord_dims == 4
    s = ds[0]
    assert s.coords.shape == (12, 4) and s.patches.shape == (12, 11)
    rw = random_walk_pe(g.edge_index, 12, 6).float()
    std = torch.tensor(a.config["feature_std"][-6:]).float()
    mean = torch.tensor(a.config["feature_mean"][-6:]).float()
    assert torch.allclose(s.patches[:, -6:] * std + mean, rw, atol=1e-4)
    assert torch.equal(s.targets, s.patches)
    # the SCE is split per target group: a perfect structure part and a wrong feature part cost 1, not ~0
    t = torch.cat([torch.eye(5)[:1], torch.ones(1, 6)], 1).expand(1, 3, 11).clone()
    pred = t.clone()
    pred[..., :5] = -pred[..., :5]
    loss = a.reconstruction_loss(pred, t, torch.ones_like(t, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool))
    assert abs(float(loss) - 4.0) < 1e-4  # (1 - cos(-u, u)) ** 2 = 4 on the feature group, 0 on the structure group
    # the default (rw in coords) keeps the old layout
    a0, ds0, _ = build([g], lap_dims=4, rw_steps=6)
    assert a0.coord_dims == 10 and ds0[0].patches.shape == (12, 5)


def test_layerwise_readout_is_order_invariant_and_never_sees_padding():
    from modalities.graph.evaluation import graph_embeddings

    g = typed_graph(13, 1)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(3))
    a, ds, enc = build([g, permuted(g, perm), typed_graph(30, 4)], rw_features=True)
    e = graph_embeddings(enc, ds, batch_size=3)
    alone = graph_embeddings(enc, torch.utils.data.Subset(ds, [0]), batch_size=1)
    assert e["layers_meanmax"].shape[1] == 2 * 32 * (MODEL["depth"] + 1)
    for pool in ("layers_mean", "layers_meanmax", "mean", "max"):
        assert abs(e[pool][0] - e[pool][1]).max() < 1e-4, pool  # permuted copy: same embedding
        assert abs(e[pool][0] - alone[pool][0]).max() < 1e-4, pool  # batched with a bigger graph: same embedding
    assert abs(e["layers_mean"][0] - e["layers_mean"][2]).max() > 1e-2  # a different graph differs

