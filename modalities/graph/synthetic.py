"""Synthetic graph datasets whose classes live in structure, not in counts or feature averages.

- ``write_network_families``: stochastic block models, small-world (Watts-Strogatz) and scale-free
  (preferential attachment) graphs, every graph with n ~ U[20, 40] nodes and exactly 2n edges, so
  node and edge counts say nothing; node types are grown from three random seeds (each node takes
  the type of its nearest seed), so types follow structure (GraphMAE has something to predict) while
  each graph's type fractions are the same in expectation in every class.
- ``write_ring_molecules``: molecule-like graphs with two rings and chains, the same atom and bond
  counts in both classes; the class is the ring size (5 or 6).
- ``write_community_graph``: one large SBM graph as nodes.csv/edges.csv for node classification.
Everything is plain Python + torch with a seeded generator: a few hundred graphs take well under a second.
"""
from __future__ import annotations

import random
from pathlib import Path


def _edges_set(edges: set[tuple[int, int]], a: int, b: int) -> bool:
    if a == b:
        return False
    e = (min(a, b), max(a, b))
    if e in edges:
        return False
    edges.add(e)
    return True


def sbm(n: int, m: int, rng: random.Random) -> set[tuple[int, int]]:
    blocks = rng.choice([2, 3, 4])
    member = [rng.randrange(blocks) for _ in range(n)]
    groups = [[v for v in range(n) if member[v] == b] for b in range(blocks)]
    groups = [g for g in groups if len(g) >= 2] or [list(range(n))]
    edges: set[tuple[int, int]] = set()
    while len(edges) < m:
        if rng.random() < 0.85:
            g = rng.choice(groups)
            _edges_set(edges, rng.choice(g), rng.choice(g))
        else:
            _edges_set(edges, rng.randrange(n), rng.randrange(n))
    return edges


def small_world(n: int, m: int, rng: random.Random, p: float = 0.15) -> set[tuple[int, int]]:
    edges = {(min(v, (v + k) % n), max(v, (v + k) % n)) for v in range(n) for k in (1, 2)}
    for e in sorted(edges):
        if rng.random() < p:
            edges.discard(e)
            while not _edges_set(edges, e[0], rng.randrange(n)):
                pass
    while len(edges) < m:
        _edges_set(edges, rng.randrange(n), rng.randrange(n))
    return edges


def scale_free(n: int, m: int, rng: random.Random) -> set[tuple[int, int]]:
    """Preferential attachment (two edges per new node), topped up with preferential edges to m."""
    edges = {(0, 1), (0, 2), (1, 2)}
    ends = [0, 1, 0, 2, 1, 2]
    for v in range(3, n):
        targets: set[int] = set()
        while len(targets) < 2:
            targets.add(rng.choice(ends))
        for t in sorted(targets):
            edges.add((t, v))
            ends += [v, t]
    while len(edges) < m:
        a, b = rng.choice(ends), rng.choice(ends)
        if _edges_set(edges, a, b):
            ends += [a, b]
    return edges


def seeded_types(n: int, edges: set[tuple[int, int]], rng: random.Random, types: int = 3) -> list[int]:
    """Each node takes the type of its nearest of ``types`` random seed nodes (multi-source BFS)."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    label = [-1] * n
    frontier = rng.sample(range(n), types)
    for t, v in enumerate(frontier):
        label[v] = t
    while frontier:
        nxt = []
        rng.shuffle(frontier)
        for v in frontier:
            for u in adj[v]:
                if label[u] < 0:
                    label[u] = label[v]
                    nxt.append(u)
        frontier = nxt
    return [lab if lab >= 0 else rng.randrange(types) for lab in label]


def write_tu(root: Path, name: str, graphs: list[tuple[int, list[tuple[int, int]], list[int], list[int] | None]],
             labels: list[int]) -> Path:
    """Write TU-format text files ``root/name/raw/name_*.txt`` (1-based node ids, both edge directions)."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    a, ind, nl, el = [], [], [], []
    offset = 0
    for gi, (n, edges, node_labels, edge_labels) in enumerate(graphs):
        for k, (u, v) in enumerate(edges):
            a += [f"{u + offset + 1}, {v + offset + 1}", f"{v + offset + 1}, {u + offset + 1}"]
            if edge_labels is not None:
                el += [str(edge_labels[k])] * 2
        ind += [str(gi + 1)] * n
        nl += [str(t) for t in node_labels]
        offset += n
    (raw / f"{name}_A.txt").write_text("\n".join(a) + "\n")
    (raw / f"{name}_graph_indicator.txt").write_text("\n".join(ind) + "\n")
    (raw / f"{name}_graph_labels.txt").write_text("\n".join(str(y) for y in labels) + "\n")
    (raw / f"{name}_node_labels.txt").write_text("\n".join(nl) + "\n")
    if el:
        (raw / f"{name}_edge_labels.txt").write_text("\n".join(el) + "\n")
    return root / name


FAMILIES = {0: sbm, 1: small_world, 2: scale_free}


def network_families(n: int, seed: int = 0) -> tuple[list, list[int]]:
    rng = random.Random(seed)
    graphs, labels = [], []
    for i in range(n):
        y = i % len(FAMILIES)
        size = rng.randint(20, 40)
        edges = sorted(FAMILIES[y](size, 2 * size, rng))
        graphs.append((size, edges, seeded_types(size, set(edges), rng), None))
        labels.append(y)
    return graphs, labels


def write_network_families(out_dir: Path, n: int = 300, seed: int = 0, name: str = "SYNTH_NETWORKS") -> Path:
    graphs, labels = network_families(n, seed)
    return write_tu(Path(out_dir), name, graphs, labels)


def ring_molecule(n: int, ring: int, rng: random.Random) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Two rings of size ``ring`` joined by a chain, remaining atoms as side chains; n - 1 + 2 bonds."""
    edges: list[tuple[int, int]] = []
    for r in range(2):
        base = r * ring
        edges += [(base + k, base + (k + 1) % ring) for k in range(ring)]
    nxt = 2 * ring
    link = rng.randint(1, 3)
    prev = rng.randrange(ring)
    for _ in range(link):
        edges.append((prev, nxt))
        prev, nxt = nxt, nxt + 1
    edges.append((prev, ring + rng.randrange(ring)))
    while nxt < n:
        edges.append((rng.randrange(nxt), nxt))
        nxt += 1
    atoms = [0 if rng.random() < 0.7 else rng.choice([1, 2]) for _ in range(n)]
    bonds = [0 if rng.random() < 0.7 else 1 for _ in edges]
    return edges, atoms, bonds


def write_ring_molecules(out_dir: Path, n: int = 200, seed: int = 0, name: str = "SYNTH_RINGS") -> Path:
    rng = random.Random(seed)
    graphs, labels = [], []
    for i in range(n):
        y = i % 2
        size = rng.randint(16, 24)
        edges, atoms, bonds = ring_molecule(size, 5 + y, rng)
        graphs.append((size, edges, atoms, bonds))
        labels.append(y)
    return write_tu(Path(out_dir), name, graphs, labels)


def write_community_graph(out_dir: Path, nodes: int = 2000, communities: int = 5, degree: int = 8,
                          features: int = 8, seed: int = 0) -> Path:
    """One SBM graph (80 % of edges inside communities) with weakly informative Gaussian node features."""
    rng = random.Random(seed)
    member = [rng.randrange(communities) for _ in range(nodes)]
    groups = [[v for v in range(nodes) if member[v] == c] for c in range(communities)]
    centres = [[rng.gauss(0, 1) for _ in range(features)] for _ in range(communities)]
    edges: set[tuple[int, int]] = set()
    while len(edges) < nodes * degree // 2:
        if rng.random() < 0.8:
            g = groups[rng.randrange(communities)]
            _edges_set(edges, rng.choice(g), rng.choice(g))
        else:
            _edges_set(edges, rng.randrange(nodes), rng.randrange(nodes))
    root = Path(out_dir) / "community_graph"
    root.mkdir(parents=True, exist_ok=True)
    cols = [f"f{k}" for k in range(features)]
    lines = ["node," + ",".join(cols) + ",label"]
    for v in range(nodes):
        f = [0.3 * centres[member[v]][k] + rng.gauss(0, 1) for k in range(features)]
        lines.append(f"{v}," + ",".join(f"{x:.4f}" for x in f) + f",c{member[v]}")
    (root / "nodes.csv").write_text("\n".join(lines) + "\n")
    (root / "edges.csv").write_text("src,dst\n" + "\n".join(f"{a},{b}" for a, b in sorted(edges)) + "\n")
    return root
