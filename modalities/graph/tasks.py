"""Downstream protocols of the graph field: SVM 10-fold CV, node-level embeddings, scaffold splits,
and the classical Weisfeiler-Lehman baseline every graph-classification result is compared with.
"""
from __future__ import annotations

import warnings
from collections import Counter, defaultdict

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

SVM_C = (0.001, 0.01, 0.1, 1.0)
KERNEL_C = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # a cosine-normalised kernel (entries <= 1) needs larger C


def _svm() -> object:
    """Standardised features, then a linear-kernel SVM (libsvm's SVC, GraphMAE's estimator, there with its default RBF kernel):
    exact and fast on a few thousand graphs even with thousands of feature columns, where liblinear's
    LinearSVC stalls at its iteration limit."""
    return make_pipeline(StandardScaler(), SVC(kernel="linear", C=1.0, max_iter=100_000))


def svm_cv(features: np.ndarray | dict[str, np.ndarray], y: np.ndarray, folds: int = 10,
           seeds: tuple[int, ...] = (0, 1, 2), inner: int = 3, kernel: bool = False) -> dict:
    """Linear-SVM k-fold accuracy as the field reports it (GraphMAE, InfoGraph), with C and the pooling
    chosen by inner CV on each training fold only (no test fold touches a choice).

    Returns per-(seed, fold) accuracies (for paired comparisons: same folds for every method), their
    per-seed means, the overall mean and std of the per-seed means, and the mean training accuracy.
    """
    feats = features if isinstance(features, dict) else {"features": features}
    y = np.asarray(y)
    if kernel:  # e.g. WL counts: the cosine-normalised linear kernel, computed once (tens of thousands of columns)
        feats = {k: _normalised_kernel(X) for k, X in feats.items()}
        estimator, grid = SVC(kernel="precomputed", max_iter=100_000), {"C": KERNEL_C}
    else:
        estimator, grid = _svm(), {"svc__C": SVM_C}

    def rows(X: np.ndarray, idx: np.ndarray, tr: np.ndarray) -> np.ndarray:
        """Samples ``idx`` of X; a precomputed kernel's columns are the training samples ``tr``."""
        return X[np.ix_(idx, tr)] if kernel else X[idx]

    accs, train_accs, pools = [], [], Counter()
    for seed in seeds:
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
            best = (-1.0, None, None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                for name, X in feats.items():
                    gs = GridSearchCV(estimator, grid, cv=StratifiedKFold(inner, shuffle=True, random_state=seed)).fit(rows(X, tr, tr), y[tr])
                    if gs.best_score_ > best[0]:
                        best = (gs.best_score_, name, gs.best_estimator_)
            _, name, clf = best
            pools[name] += 1
            accs.append(float((clf.predict(rows(feats[name], te, tr)) == y[te]).mean()))
            train_accs.append(float(clf.score(rows(feats[name], tr, tr), y[tr])))
    per_seed = np.array(accs).reshape(len(seeds), folds).mean(1)
    return {"fold_accuracy": accs, "seed_accuracy": per_seed.tolist(), "mean": float(per_seed.mean()),
            "std": float(per_seed.std()), "train_accuracy": float(np.mean(train_accs)), "poolings": dict(pools)}


def _normalised_kernel(X: np.ndarray) -> np.ndarray:
    K = X.astype(np.float64) @ X.T.astype(np.float64)
    d = np.sqrt(np.clip(np.diag(K), 1e-12, None))
    return K / d[:, None] / d[None, :]


# ----------------------------------------------------------------------------------------------
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
