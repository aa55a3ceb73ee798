"""Readers: every graph format a user brings becomes a list of torch-geometric ``Data``.

One in-memory form for all inputs (TU folders, edge-list + node CSVs, SMILES, networkx, pickled
``Data`` lists), each graph checked once on the way in, so the dataset and the encodings never see
a malformed graph. ``Data`` fields used downstream: ``x`` [n, F] float (may be absent),
``edge_index`` [2, E], ``edge_type`` [E] long (may be absent), ``y`` (graph label) or ``node_y``.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from foundation.errors import DomainfmError
from foundation.inputs import InputPolicy

log = logging.getLogger(__name__)


class GraphInputError(DomainfmError, ValueError):  # DomainfmError: the CLI prints it as one line
    """A graph that cannot be used as given; the message names the graph and the problem."""


@dataclass
class GraphSet:
    """Graphs read from one source, with their names (for errors and ids) and optional labels."""

    graphs: list[Data]
    names: list[str]
    source: str
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    smiles: list[str] | None = None
    skipped: int = 0
    inputs: InputPolicy = field(default_factory=InputPolicy)


# --------------------------------------------------------------------------------------------
# validation
def check_graph(g: Data, name: str, feature_width: int | None = None) -> None:
    """Refuse what would silently poison training: empty graphs, dangling edges, NaN, ragged widths."""
    n = int(g.num_nodes or 0)
    if n == 0:
        raise GraphInputError(f"graph {name}: has no nodes (empty graph)")
    ei = g.edge_index
    if ei is not None and ei.numel():
        if ei.dim() != 2 or ei.shape[0] != 2:
            raise GraphInputError(f"graph {name}: edge_index must be [2, E], got {list(ei.shape)}")
        bad = (ei < 0) | (ei >= n)
        if bad.any():
            col = int(bad.any(0).nonzero()[0])
            raise GraphInputError(
                f"graph {name}: edge ({int(ei[0, col])}, {int(ei[1, col])}) points at a missing node "
                f"(the graph has {n} nodes, ids 0..{n - 1})"
            )
    x = getattr(g, "x", None)
    if x is not None:
        if x.shape[0] != n:
            raise GraphInputError(f"graph {name}: x has {x.shape[0]} rows but the graph has {n} nodes")
        if not torch.isfinite(x.float()).all():
            row = int((~torch.isfinite(x.float())).any(-1).nonzero()[0])
            raise GraphInputError(f"graph {name}: node {row} has NaN or infinite features")
        if feature_width is not None and x.shape[-1] != feature_width:
            raise GraphInputError(
                f"graph {name}: node features have width {x.shape[-1]}, earlier graphs have {feature_width} "
                "(inconsistent feature widths)"
            )
    et = getattr(g, "edge_type", None)
    if et is not None and ei is not None and et.shape[0] != ei.shape[1]:
        raise GraphInputError(f"graph {name}: {et.shape[0]} edge types for {ei.shape[1]} edges")


def validate(graphs: Sequence[Data], names: Sequence[str], on_error: str | InputPolicy = "raise") -> tuple[list[int], int]:
    """Indices of usable graphs; under ``on_error: skip`` bad graphs are dropped, counted once and logged."""
    inputs = on_error if isinstance(on_error, InputPolicy) else InputPolicy(on_error)
    keep, skipped, width = [], 0, None
    for i, (g, name) in enumerate(zip(graphs, names)):
        if not inputs.ok(name, check_graph, g, name, width):
            skipped += 1
            continue
        if getattr(g, "x", None) is not None and width is None:
            width = g.x.shape[-1]
        keep.append(i)
    if skipped:
        log.warning("skipped %d of %d graphs with bad input (data.on_error=skip)", skipped, len(graphs))
    if not keep:
        raise GraphInputError(f"no usable graphs ({skipped} skipped)")
    return keep, skipped


def _subset(gs: GraphSet, keep: list[int], skipped: int) -> GraphSet:
    pick = lambda seq: None if seq is None else [seq[i] for i in keep]  # noqa: E731
    return GraphSet([gs.graphs[i] for i in keep], [gs.names[i] for i in keep], gs.source,
                    pick(gs.labels), gs.classes, pick(gs.smiles), gs.skipped + skipped, gs.inputs)


def edge_types_from_attr(edge_attr: Tensor | None) -> Tensor | None:
    """Integer bond/edge types from one-hot edge labels (TU ``edge_attr``) or a single integer column."""
    if edge_attr is None or edge_attr.numel() == 0:
        return None
    ea = edge_attr.view(edge_attr.shape[0], -1).float()
    if ea.shape[1] == 1 and torch.equal(ea, ea.round()) and ea.min() >= 0:
        return ea[:, 0].long()
    onehot = ((ea == 0) | (ea == 1)).all() and torch.equal(ea.sum(1), torch.ones(ea.shape[0]))
    return ea.argmax(1) if onehot else None


# --------------------------------------------------------------------------------------------
# TU format
def is_tu_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / "raw").is_dir() and any((p / "raw").glob("*_A.txt"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("DOMAINFM_CACHE", Path.home() / ".cache" / "domainfm"))


def check_tu_files(raw: Path, name: str, files: list[Path]) -> None:
    """Header-free text files checked against each other: each ends with a newline (a file cut mid-line
    does not), node-level files have one line per node (``graph_indicator``), edge-level files one per
    edge (``A``), graph labels one per graph."""
    lines = {}
    for f in files:
        data = f.read_bytes()
        if data and not data.endswith(b"\n"):
            raise GraphInputError(f"{f}: truncated (the last line has no newline; restore the file)")
        lines[f.name[len(name) + 1:-4]] = data.count(b"\n")
    nodes, edges = lines.get("graph_indicator", 0), lines.get("A", 0)
    graphs = len(set((raw / f"{name}_graph_indicator.txt").read_text().split()))
    expect = {"node_labels": nodes, "node_attributes": nodes, "edge_labels": edges, "edge_attributes": edges, "graph_labels": graphs}
    for part, n in expect.items():
        if part in lines and lines[part] != n:
            raise GraphInputError(f"{raw / f'{name}_{part}.txt'}: {lines[part]} lines for {n} "
                                  f"{'nodes' if n == nodes and 'node' in part else 'edges' if 'edge' in part else 'graphs'} "
                                  "(a truncated or mismatched TU file; restore it)")


def read_tu(root: str | Path, cache_dir: str | Path | None = None, inputs: InputPolicy | None = None) -> GraphSet:
    """A TU-format dataset folder ``<root>/<NAME>/raw/<NAME>_*.txt`` through ``TUDataset``.

    ``TUDataset`` writes ``processed/`` next to ``raw/``; the data folder may be read-only, so the raw
    files are linked into a cache folder keyed by their path, sizes and modification times.
    """
    from torch_geometric.datasets import TUDataset

    class LocalTU(TUDataset):
        """torch-geometric's TUDataset that never downloads: a folder missing a file is an error here,
        not a silent download of the public dataset of the same name."""

        def download(self) -> None:
            raise GraphInputError(f"TU dataset {root}: files missing in raw/ (torch-geometric would download the public "
                                  f"{name}); every TU folder needs {name}_A.txt and {name}_graph_indicator.txt")

    inputs = inputs or InputPolicy()
    root = Path(root).resolve()
    name = root.name
    raw = root / "raw"
    files = sorted(raw.glob(f"{name}_*.txt"))
    for part in ("A", "graph_indicator"):
        if not (raw / f"{name}_{part}.txt").exists():
            raise GraphInputError(f"TU dataset {root}: no raw/{name}_{part}.txt; a TU dataset folder is "
                                  f"<root>/<NAME>/raw/<NAME>_A.txt, <NAME>_graph_indicator.txt, ... (restore the file)")
    for f in files:
        if f.stat().st_size == 0:
            raise GraphInputError(f"{f}: empty file (0 bytes) in a TU dataset folder (restore the file)")
    check_tu_files(raw, name, files)
    present = {f.name[len(name) + 1:-4] for f in files}
    if not present & {"node_labels", "node_attributes"}:
        inputs.note(f"TU dataset {root}: no {name}_node_labels.txt nor {name}_node_attributes.txt: nodes have no features, "
                    "so degree one-hots are used (adapter.degree_features)")
    if "graph_labels" not in present:
        inputs.note(f"TU dataset {root}: no {name}_graph_labels.txt: graphs have no labels")
    key = hashlib.blake2b(
        "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode(), digest_size=8
    ).hexdigest()
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "graph" / "tu"
    work = cache / f"{name}-{key}"
    (work / name / "raw").mkdir(parents=True, exist_ok=True)
    for f in files:
        dst = work / name / "raw" / f.name
        if not dst.exists():
            try:
                dst.symlink_to(f)
            except OSError:
                shutil.copy2(f, dst)
    try:
        ds = LocalTU(str(work), name, use_node_attr=True, use_edge_attr=True)
    except GraphInputError:
        raise
    except Exception as err:  # torch-geometric's own parse errors do not name the folder
        raise GraphInputError(f"TU dataset {root}: could not be read ({err})") from err
    graphs, names, labels = [], [], []
    for i in range(len(ds)):
        d = ds[i]
        g = Data(x=d.x.float() if d.x is not None else None, edge_index=d.edge_index, num_nodes=d.num_nodes)
        et = edge_types_from_attr(getattr(d, "edge_attr", None))
        if et is not None:
            g.edge_type = et
        if d.y is not None:
            g.y = d.y.view(-1)[:1].long()
            labels.append(int(d.y.view(-1)[0]))
        graphs.append(g)
        names.append(f"{name}[{i}]")
    classes = [str(c) for c in range(max(labels) + 1)] if labels else []
    return GraphSet(graphs, names, str(root), labels if len(labels) == len(graphs) else None, classes, inputs=inputs)


# --------------------------------------------------------------------------------------------
# CSV edge list + node features
def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _number(value: str, where: str) -> float:
    try:
        return float(value) if value not in ("", None) else math.nan
    except ValueError as err:
        raise GraphInputError(f"{where}: {value!r} is not a number") from err


def is_csv_folder(path: str | Path) -> bool:
    return (Path(path) / "edges.csv").exists() and (Path(path) / "nodes.csv").exists()


def read_csv_folder(root: str | Path) -> GraphSet:
    """``nodes.csv`` (``node``, optional ``graph`` and ``label``, feature columns) + ``edges.csv``
    (``src``, ``dst``, optional ``graph``, ``type``) + optional ``graphs.csv`` (``graph``, ``label``).

    Without a ``graph`` column the files hold one (possibly large) graph whose ``label`` column gives
    node labels. Non-numeric feature columns are one-hot encoded (categorical node features).
    """
    root = Path(root)
    nodes, edges = _rows(root / "nodes.csv"), _rows(root / "edges.csv")
    if not nodes:
        raise GraphInputError(f"{root / 'nodes.csv'}: no nodes")
    cols = list(nodes[0])
    if "node" not in cols:
        raise GraphInputError(f"{root / 'nodes.csv'}: needs a 'node' column (has {cols})")
    reserved = {"node", "graph", "label"}
    feat_cols = [c for c in cols if c not in reserved]
    categorical = {}
    for c in feat_cols:
        vals = [r[c] for r in nodes]
        try:
            [float(v) for v in vals if v != ""]
        except ValueError:
            categorical[c] = sorted(set(vals))
    graph_ids: list[str] = []
    members: dict[str, list[dict]] = {}
    for r in nodes:
        gid = r.get("graph", "0")
        if gid not in members:
            members[gid] = []
            graph_ids.append(gid)
        members[gid].append(r)
    graph_rows = _rows(root / "graphs.csv") if (root / "graphs.csv").exists() else []
    for r in graph_rows:
        if r["graph"] not in members:
            members[r["graph"]] = []
            graph_ids.append(r["graph"])
    by_graph: dict[str, list[dict]] = {g: [] for g in graph_ids}
    for k, r in enumerate(edges):
        gid = r.get("graph", "0")
        if gid not in by_graph:
            raise GraphInputError(f"{root / 'edges.csv'} line {k + 2}: edge of graph {gid!r}, which has no nodes in nodes.csv")
        by_graph[gid].append(r)
    single = "graph" not in cols
    graphs, names = [], []
    for gid in graph_ids:
        rows = members[gid]
        name = f"{root.name}:graph {gid}"
        index = {r["node"]: i for i, r in enumerate(rows)}
        feats = []
        for r in rows:
            v: list[float] = []
            for c in feat_cols:
                if c in categorical:
                    v += [1.0 if r[c] == cat else 0.0 for cat in categorical[c]]
                else:
                    v.append(_number(r[c], f"{root / 'nodes.csv'} graph {gid} node {r['node']} column {c}"))
            feats.append(v)
        src, dst, types = [], [], []
        for r in by_graph[gid]:
            for end in ("src", "dst"):
                if r[end] not in index:
                    raise GraphInputError(
                        f"graph {name}: edge ({r['src']}, {r['dst']}) points at node {r[end]!r}, "
                        "which is not in nodes.csv"
                    )
            src.append(index[r["src"]])
            dst.append(index[r["dst"]])
            if "type" in r and r["type"] != "":
                types.append(int(float(r["type"])))
        g = Data(edge_index=torch.tensor([src + dst, dst + src], dtype=torch.long).view(2, -1), num_nodes=len(rows))
        if feat_cols and rows:
            g.x = torch.tensor(feats, dtype=torch.float32)
        if types and len(types) == len(src):
            g.edge_type = torch.tensor(types + types, dtype=torch.long)
        if single and rows and "label" in cols and all(r["label"] != "" for r in rows):
            g.node_labels = [r["label"] for r in rows]
        graphs.append(g)
        names.append(name)
    labels, classes = None, []
    if graph_rows and all("label" in r for r in graph_rows):
        from foundation.sources import class_index

        lab = {r["graph"]: r["label"] for r in graph_rows}
        if all(g in lab for g in graph_ids):
            labels, classes = class_index([lab[g] for g in graph_ids])
    return GraphSet(graphs, names, str(root), labels, classes)


# --------------------------------------------------------------------------------------------
# SMILES through RDKit
ATOMS = ["C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si", "Se"]
BONDS = {"SINGLE": 0, "DOUBLE": 1, "TRIPLE": 2, "AROMATIC": 3}


def atom_features(atom: Any) -> list[float]:
    """Categorical atom descriptors as one-hots: element (+other), degree, charge, Hs, aromatic, ring."""
    sym = atom.GetSymbol()
    el = [1.0 if sym == a else 0.0 for a in ATOMS] + [0.0 if sym in ATOMS else 1.0]
    deg = [1.0 if min(atom.GetDegree(), 5) == d else 0.0 for d in range(6)]
    chg = [1.0 if max(-1, min(1, atom.GetFormalCharge())) == c else 0.0 for c in (-1, 0, 1)]
    hs = [1.0 if min(atom.GetTotalNumHs(), 3) == h else 0.0 for h in range(4)]
    return el + deg + chg + hs + [float(atom.GetIsAromatic()), float(atom.IsInRing())]


ATOM_FEATURES = len(ATOMS) + 1 + 6 + 3 + 4 + 2


def smiles_to_graph(smiles: str, name: str) -> Data:
    """One molecule: atoms are nodes (:func:`atom_features`), bonds are typed edges (single..aromatic)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        raise GraphInputError(f"graph {name}: invalid SMILES {smiles!r}")
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32)
    src, dst, typ = [], [], []
    for b in mol.GetBonds():
        i, j, t = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), BONDS.get(str(b.GetBondType()), 0)
        src += [i, j]
        dst += [j, i]
        typ += [t, t]
    return Data(x=x, edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1),
                edge_type=torch.tensor(typ, dtype=torch.long), num_nodes=mol.GetNumAtoms())


def read_smiles(path: str | Path, labels: str | None = None, on_error: str = "raise",
                smiles_column: str = "smiles", inputs: InputPolicy | None = None) -> GraphSet:
    """A ``.smi`` file (SMILES first on each line) or a CSV with a ``smiles`` column.

    Invalid SMILES raise naming the line, or are counted and skipped under ``on_error: skip``.
    """
    path = Path(path)
    try:
        return _read_smiles(path, labels, on_error, smiles_column, inputs)
    except (UnicodeDecodeError, csv.Error) as err:
        raise GraphInputError(f"{path}: not a readable text SMILES/CSV file ({type(err).__name__}: {err})") from err


def _read_smiles(path: Path, labels: str | None, on_error: str, smiles_column: str, inputs: InputPolicy | None) -> GraphSet:
    from foundation.sources import class_index, label_of

    if path.suffix.lower() == ".csv":
        rows = _rows(path)
        if not rows or smiles_column not in rows[0]:
            raise GraphInputError(f"{path}: needs a {smiles_column!r} column")
        for i, r in enumerate(rows):  # a cut-off last row (missing fields) or a row with extra fields
            if None in r or any(v is None for v in r.values()):
                raise GraphInputError(f"{path} line {i + 2}: {'more' if None in r else 'fewer'} fields than the header "
                                      f"{list(rows[0].keys())} (truncated or malformed CSV)")
        items = [(r[smiles_column], f"{path.name} line {i + 2}", r) for i, r in enumerate(rows)]
    else:
        lines = path.read_text().splitlines()
        items = [(ln.split()[0], f"{path.name} line {i + 1}", {}) for i, ln in enumerate(lines) if ln.strip()]
    inputs = inputs or InputPolicy(on_error)
    inputs.found += len(items)
    graphs, names, smiles, raw_labels, skipped = [], [], [], [], 0
    for smi, name, row in items:
        g = inputs.load(name, smiles_to_graph, smi, name, check=False)  # RDKit's errors become GraphInputError
        if g is None:
            skipped += 1
            continue
        graphs.append(g)
        names.append(name)
        smiles.append(smi)
        raw_labels.append(label_of(str(path), labels, row) if labels and labels.startswith("column:") else None)
    if skipped:
        log.warning("skipped %d of %d molecules with invalid SMILES (data.on_error=skip)", skipped, len(items))
    lab, classes = class_index(raw_labels) if graphs else (None, [])
    return GraphSet(graphs, names, str(path), lab, classes, smiles, skipped, inputs)


# --------------------------------------------------------------------------------------------
# in-memory objects
def from_objects(objects: Iterable[Any], labels: Sequence[int] | None = None, source: str = "memory") -> GraphSet:
    """torch-geometric ``Data`` (or a ``Dataset`` of them) and networkx graphs, as they are.

    networkx node attribute ``x`` (a list of numbers) becomes the node features; edge attribute
    ``type`` (an int) the edge type.
    """
    import networkx as nx
    from torch_geometric.utils import from_networkx

    graphs, names, ys = [], [], []
    for i, obj in enumerate(objects):
        if isinstance(obj, nx.Graph):
            nattrs = ["x"] if obj.number_of_nodes() and all("x" in d for _, d in obj.nodes(data=True)) else None
            eattrs = ["type"] if obj.number_of_edges() and all("type" in d for *_, d in obj.edges(data=True)) else None
            d = from_networkx(nx.Graph(obj), group_node_attrs=nattrs, group_edge_attrs=eattrs)
            g = Data(edge_index=d.edge_index, num_nodes=obj.number_of_nodes())
            if nattrs:
                g.x = d.x.float()
            if eattrs:
                g.edge_type = d.edge_attr.view(-1).long()
        elif isinstance(obj, Data):
            g = Data(x=obj.x.float() if obj.x is not None else None, edge_index=obj.edge_index
                     if obj.edge_index is not None else torch.zeros(2, 0, dtype=torch.long), num_nodes=obj.num_nodes)
            et = getattr(obj, "edge_type", None)
            et = et.long() if et is not None else edge_types_from_attr(getattr(obj, "edge_attr", None))
            if et is not None:
                g.edge_type = et
        else:
            raise GraphInputError(f"graph {source}[{i}]: {type(obj).__name__} is neither a torch-geometric Data nor a networkx graph")
        y = getattr(obj, "y", None) if isinstance(obj, Data) else None
        if y is not None and y.numel() == 1:
            ys.append(int(y.view(-1)[0]))
        graphs.append(g)
        names.append(f"{source}[{i}]")
    lab = list(labels) if labels is not None else (ys if len(ys) == len(graphs) and graphs else None)
    classes = [str(c) for c in range(max(lab) + 1)] if lab else []
    return GraphSet(graphs, names, source, lab, classes)


# --------------------------------------------------------------------------------------------
def load_graphs(data: dict, cache_dir: str | None = None, smiles_column: str = "smiles") -> GraphSet:
    """Dispatch on what ``data`` points at; then validate under ``data.on_error`` (raise | skip).

    ``data.graphs`` (Python objects) > ``data.manifest`` (SMILES CSV) > ``data.root``: a TU folder, a
    folder with ``nodes.csv``/``edges.csv``, a ``.smi``/``.csv`` SMILES file, or a ``.pt`` list of ``Data``.
    """
    inputs = InputPolicy.from_data(data)
    on_error = inputs.on_error
    labels = data.get("labels")
    if data.get("graphs") is not None:
        gs = from_objects(data["graphs"], data.get("graph_labels"))
    elif data.get("manifest"):
        gs = read_smiles(data["manifest"], labels, on_error, smiles_column, inputs)
    else:
        root = data.get("root")
        if not root:
            raise ValueError("no data given: set data.root=DIR or data.manifest=FILE")
        p = Path(root)
        if not p.exists():
            raise FileNotFoundError(f"data.root {p} does not exist")
        if p.is_dir() and is_tu_folder(p):
            gs = read_tu(p, cache_dir, inputs)
        elif p.is_dir() and is_csv_folder(p):
            gs = read_csv_folder(p)
        elif p.is_dir():
            subs = [s for s in sorted(p.iterdir()) if s.is_dir() and is_tu_folder(s)]
            if len(subs) == 1:
                gs = read_tu(subs[0], cache_dir, inputs)
            else:
                raise FileNotFoundError(
                    f"data.root {p}: not a TU dataset folder (<NAME>/raw/<NAME>_A.txt) nor a folder with "
                    f"nodes.csv and edges.csv" + (f"; it holds several TU datasets {[s.name for s in subs]}, pick one" if subs else "")
                )
        elif p.suffix.lower() in (".smi", ".smiles", ".csv"):
            gs = read_smiles(p, labels, on_error, smiles_column, inputs)
        elif p.suffix.lower() == ".pt":
            gs = from_objects(load_pt(p), source=p.name)
        else:
            raise GraphInputError(f"data.root {p}: unknown graph format (TU folder, nodes/edges CSV folder, .smi, .csv, .pt)")
    gs.inputs = inputs
    if not inputs.found:
        inputs.found = len(gs.graphs)
    keep, skipped = validate(gs.graphs, gs.names, inputs)
    return _subset(gs, keep, skipped) if len(keep) < len(gs.graphs) else gs


def load_pt(path: Path) -> Any:
    """A ``.pt`` list of torch-geometric ``Data`` through the weights-only unpickler (PyG registers its
    ``Data`` classes as safe); anything else in the file is refused, never unpickled."""
    import torch_geometric.data  # noqa: F401  (registers Data & co. with torch's safe globals)

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise GraphInputError(f"{path}: cannot be loaded safely ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              "save a list of torch_geometric.data.Data or plain tensors, or convert to a TU folder or "
                              "nodes.csv/edges.csv") from err
