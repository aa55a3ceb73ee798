"""Few-label probes on frozen embeddings and the paired statistics DESIGN asks of every "beats".

Baselines are tuned the same way as our models: features standardised, regularisation (and the
pooling) chosen by inner cross-validation on the training labels only.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

from foundation.errors import DomainfmError

C_GRID = (0.01, 0.1, 1.0, 10.0)
SVM_C_GRID = (0.001, 0.01, 0.1, 1.0)
KNN_K_GRID = (1, 5, 10, 20)
# a cosine-normalised kernel (entries <= 1) needs larger C than standardised features
KERNEL_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
# Below this many test samples a paired difference gets no interval and no "beats": the interval over seeds holds
# the test set fixed, so it cannot see test-sampling noise, and on a handful of samples one sample moves the
# accuracy by more than any effect worth claiming (with 20, one sample is 0.05).
MIN_TEST_SAMPLES = 20
# paired differences closer than this (relative) are one difference: accuracies averaged in different orders
# differ in the last bits, and a t-interval over that rounding noise would print a zero-width "beats"
SAME_DIFFERENCE = 1e-9


class ProbeError(DomainfmError, ValueError):
    """A few-label design that cannot give the statistics it would print; the message says what to change."""


def few_shot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices per class, drawn with ``seed`` (classes with fewer samples give all they have)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def _logreg(c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))


def _inner_folds(y: np.ndarray) -> int:
    return int(min(3, np.bincount(np.unique(y, return_inverse=True)[1]).min()))


def select_by_inner_cv(candidates: dict[str, tuple], y: np.ndarray, seed: int = 0):
    """Pick the (name, estimator factory) with the best inner-CV accuracy on the training labels."""
    folds = _inner_folds(y)
    best, best_score = None, -1.0
    for name, (X, make) in candidates.items():
        if folds < 2:
            score = 0.0  # one label per class: no inner CV is possible; keep the first candidate
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                score = cross_val_score(make(), X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean()
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def linear_probe(Xtr: np.ndarray | dict, ytr: np.ndarray, Xte: np.ndarray | dict, yte: np.ndarray, seed: int = 0) -> dict:
    """Standardised logistic regression; C (and, given dicts of features, the pooling) by inner CV
    (:func:`probe_scores`, so the accuracy here and evaluate's other metrics come from one fitted probe)."""
    proba, chosen = probe_scores("linear", Xtr, ytr, Xte, seed)
    pred = np.unique(ytr)[proba.argmax(1)]
    return {"accuracy": float((pred == np.asarray(yte)).mean()), **chosen}


@threadpool_limits.wrap(limits=1)
def bag_probe(train_bags: list[np.ndarray], ytr: np.ndarray, test_bags: list[np.ndarray], yte: np.ndarray, seed: int = 0,
              max_instances: int = 256) -> dict:
    """A linear probe over bags of instance features (a study's regions, a recording's segments):
    standardised logistic regression fitted on the instances, each carrying its bag's label, and a
    bag predicted by its instances' mean class probabilities.

    Why: where the label hangs on a local finding (a few small lesions in a large scan), pooling the
    whole sample into one vector buries it among everything else, and k labelled samples are k points
    to fit a direction through; their instances are many more. C is chosen by inner CV over bags
    (no bag on both sides); at most ``max_instances`` instances per training bag (seeded draw).
    """
    ytr, yte = np.asarray(ytr), np.asarray(yte)
    rng = np.random.default_rng(seed)
    train_bags = [b if len(b) <= max_instances else b[rng.choice(len(b), max_instances, replace=False)] for b in train_bags]

    def fit(bags: list[np.ndarray], y: np.ndarray, c: float):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return _logreg(c).fit(np.concatenate(bags), np.repeat(y, [len(b) for b in bags]))

    def predict(clf, bags: list[np.ndarray]) -> np.ndarray:
        return clf.classes_[np.array([clf.predict_proba(b).mean(0).argmax() for b in bags])]

    def inner_cv(c: float) -> float:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(ytr)), ytr)
        return float(np.mean([(predict(fit([train_bags[i] for i in f], ytr[f], c), [train_bags[i] for i in v]) == ytr[v]).mean()
                              for f, v in splits]))

    folds = _inner_folds(ytr)
    if folds < 2:  # one bag per class: no inner CV is possible; C = 1, as linear_probe does
        c, cv = 1.0, 0.0
    else:
        scores = {c: inner_cv(c) for c in C_GRID}
        c = max(scores, key=scores.get)  # the first of equals, as select_by_inner_cv
        cv = scores[c]
    clf = fit(train_bags, ytr, c)
    return {"accuracy": float((predict(clf, test_bags) == yte).mean()), "train_accuracy": float((predict(clf, train_bags) == ytr).mean()),
            "pooling": "bag", "C": c, "inner_cv": cv}


def knn_probe(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, k: int = 5) -> dict:
    """Cosine kNN on standardised features (k capped by the training-set size)."""
    clf = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(k, len(ytr)), metric="cosine"))
    clf.fit(Xtr, ytr)
    return {"accuracy": float((clf.predict(Xte) == yte).mean())}


def paired_interval(a: np.ndarray | list, b: np.ndarray | list, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired seeds/folds and its t-interval: a "beats" b when lo > 0.

    With fewer than two pairs, or a difference that is the same on every pair (zero variance, which a
    t-interval would print as a degenerate [d, d]), there is no interval: (mean, -inf, inf).
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2 or np.ptp(d) <= SAME_DIFFERENCE * max(1.0, float(np.abs(d).max())):  # equal up to float rounding
        return float(d.mean()), float("-inf"), float("inf")
    half = stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def paired_difference(a: np.ndarray | list, b: np.ndarray | list, n_test: int | None = None) -> dict:
    """``paired_interval`` as the record every results file stores, so all benchmarks share one key set.

    Where no interval can honestly be given the record keeps the point estimate, ``beats`` is False and
    ``note`` says why: fewer than two pairs, zero variance over the pairs, or (given ``n_test``) a test set
    smaller than ``MIN_TEST_SAMPLES``.
    """
    mean, lo, hi = paired_interval(a, b)
    out = {"diff": mean, "ci_low": lo, "ci_high": hi, "beats": bool(lo > 0)}
    n = len(np.atleast_1d(a))
    note = None
    if n_test is not None and n_test < MIN_TEST_SAMPLES:
        note = f"{n_test} test samples are too few; an interval needs {MIN_TEST_SAMPLES}"
    elif n < 2:
        note = f"{n} paired seed"
    elif not np.isfinite(lo):
        note = f"the same difference on all {n} paired seeds (zero variance)"
    if note:
        out.update(ci_low=float("-inf"), ci_high=float("inf"), beats=False, note=note)
    return out


def format_interval(r: dict, scale: float = 1.0, digits: int = 3) -> str:
    """A ``paired_difference`` record as every results table prints it: ``+0.012 [-0.026, +0.051]``, or the
    point estimate and why there is no interval."""
    if not (np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])):
        return "{0:+.{1}f} (no interval: {2})".format(scale * r["diff"], digits, r.get("note", "too few pairs"))
    return "{0:+.{3}f} [{1:+.{3}f}, {2:+.{3}f}]".format(scale * r["diff"], scale * r["ci_low"], scale * r["ci_high"], digits)


def _class_name(names: list[str] | None):
    """How messages name a class: its name where ``names`` has one for the integer label, else the label itself."""
    def name(c) -> str:
        try:
            i = int(c)
        except (TypeError, ValueError):
            return repr(c)
        return repr(names[i]) if names and 0 <= i < len(names) else repr(i)
    return name


def check_classes(labels: np.ndarray, names: list[str] | None = None, min_per_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The classes of ``labels`` and their counts; fewer than two classes (or a class under ``min_per_class``
    samples) is refused naming the labels found, instead of sklearn's message from deep inside a fit."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    name = _class_name(names)
    if len(classes) < 2:
        raise ProbeError(f"probing needs at least two classes; data.labels found only {', '.join(name(c) for c in classes) or 'none'}"
                         f" in {len(labels)} samples (check the data.labels rule)")
    if counts.min() < min_per_class:
        raise ProbeError(f"class {name(classes[counts.argmin()])} has {counts.min()} sample(s), fewer than the {min_per_class} "
                         "needed (one to train on and one to test on): label more samples, or leave that class out")
    return classes, counts


def few_shot_splits(labels: np.ndarray, ks: list[int], seeds: int, names: list[str] | None = None) -> dict[int, list[np.ndarray]]:
    """``few_shot_indices`` for every (k, seed), refusing what would make the statistics lie.

    ``labels`` are those of the labelled pool. Refused, naming the way out: fewer than two classes; a k above
    a class's pool (k would be capped silently, and a larger k would repeat a smaller one's row); and more seeds
    than there are distinct draws (k = a whole pool gives one: the "paired seeds" would be one split counted
    several times, printed ±0). A seed whose draw repeats an earlier seed's draws again, so every seed is its own split.
    """
    labels = np.asarray(labels)
    classes, counts = check_classes(labels, names)
    name = _class_name(names)
    if seeds < 1:
        raise ProbeError(f"probe.seeds={seeds}: at least one seed is needed (two or more for an interval)")
    splits: dict[int, list[np.ndarray]] = {}
    for k in ks:
        if k < 1:
            raise ProbeError(f"probe.k={k}: k labels per class must be at least 1")
        short = [(name(c), int(n)) for c, n in zip(classes, counts) if n < k]
        if short:
            cls, n = min(short, key=lambda t: t[1])
            raise ProbeError(f"probe.k={k} is more than the {n} labelled training samples of class {cls}: "
                             f"use probe.k values up to {int(counts.min())}, or label more samples")
        distinct = math.prod(math.comb(int(n), k) for n in counts)
        if distinct < seeds:
            raise ProbeError(f"probe.seeds={seeds}: at k={k} the class pools of {sorted(set(counts.tolist()))} samples allow only "
                             f"{distinct} distinct draw(s), so some seeds would repeat one split and the paired seeds would not be "
                             "separate: use fewer probe.seeds, a smaller probe.k, or more labelled data")
        splits[k], seen = [], set()
        for seed in range(seeds):
            attempt = seed  # a seed whose draw repeats an earlier one draws again (seed + seeds, + 2 * seeds, ...)
            pick = few_shot_indices(labels, k, attempt)
            while pick.tobytes() in seen:
                attempt += seeds
                pick = few_shot_indices(labels, k, attempt)
            seen.add(pick.tobytes())
            splits[k].append(pick)
    return splits


def compare_few_shot(features: dict[str, dict], labels: np.ndarray, train_pool: np.ndarray, test_idx: np.ndarray,
                     ks: list[int], seeds: int, names: list[str] | None = None) -> dict:
    """Probe each encoder's features with k labels per class over ``seeds`` paired splits.

    ``features`` maps a method name to its dict of pooled features (all rows in dataset order), or
    to a list of per-sample bags, probed by ``bag_probe``; every method sees the same labelled
    indices for a given (k, seed); ``few_shot_splits`` refuses designs whose statistics would lie
    (``names``: the class names its messages use).
    """
    splits = few_shot_splits(labels[train_pool], ks, seeds, names)
    results: dict = {name: {} for name in features}
    for k in ks:
        for name in features:
            results[name][k] = []
        for seed in range(seeds):
            pick = train_pool[splits[k][seed]]
            for name, feats in features.items():
                if isinstance(feats, list):
                    r = bag_probe([feats[i] for i in pick], labels[pick], [feats[i] for i in test_idx], labels[test_idx], seed)
                else:
                    r = linear_probe({p: f[pick] for p, f in feats.items()}, labels[pick],
                                     {p: f[test_idx] for p, f in feats.items()}, labels[test_idx], seed)
                results[name][k].append(r)
    return results


@threadpool_limits.wrap(limits=1)
def probe_scores(kind: str, Xtr: np.ndarray | dict, ytr: np.ndarray, Xte: np.ndarray | dict, seed: int = 0, k: int = 5) -> tuple[np.ndarray, dict]:
    """Class probabilities [n_test, classes seen in training] of a probe fitted on (Xtr, ytr), for
    metrics beyond accuracy (per-class accuracy, AUROC) in ``foundation.evaluate``.

    ``linear``: as :func:`linear_probe` (standardised logistic regression, C and pooling by inner CV);
    ``knn``: as :func:`knn_probe` (cosine kNN on standardised features, the first pooling).
    Returns the probabilities (columns = ``np.unique(ytr)``) and what was chosen.
    """
    tr = Xtr if isinstance(Xtr, dict) else {"features": Xtr}
    te = Xte if isinstance(Xte, dict) else {"features": Xte}
    if kind == "knn":
        pool = next(iter(tr))
        clf = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(k, len(ytr)), metric="cosine")).fit(tr[pool], ytr)
        return clf.predict_proba(te[pool]), {"pooling": pool, "k": min(k, len(ytr))}
    if kind != "linear":
        raise ValueError(f"unknown probe kind {kind!r}: linear or knn")
    cands = {(p, c): (tr[p], (lambda c=c: _logreg(c))) for p in tr for c in C_GRID}
    (pool, c), cv = select_by_inner_cv(cands, ytr, seed)
    if _inner_folds(ytr) < 2:
        pool, c = next(iter(tr)), 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = _logreg(c).fit(tr[pool], ytr)
    return clf.predict_proba(te[pool]), {"pooling": pool, "C": c, "inner_cv": float(cv), "train_accuracy": float(clf.score(tr[pool], ytr))}


# -- the field protocols on the same stack: tuned probes (OA / mAcc) and repeated k-fold CV ----------
def accuracies(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Overall accuracy and class-balanced accuracy (mean recall over the classes present in y_true):
    the "OA" and "mAcc" of point-cloud tables."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return {"oa": float((y_true == y_pred).mean()), "macc": float(np.mean(recalls))}


def probe_candidates(kind: str, n_train: int) -> dict:
    """Estimator factories of one probe kind, one per hyper-parameter value, for :func:`select_by_inner_cv`:
    ``linear`` (logistic regression over C), ``svm`` (linear SVM over C), ``knn`` (cosine kNN over k);
    all on standardised features."""
    if kind == "linear":
        return {("C", c): (lambda c=c: _logreg(c)) for c in C_GRID}
    if kind == "svm":
        return {("C", c): (lambda c=c: make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, dual="auto")))
                for c in SVM_C_GRID}
    if kind == "knn":
        ks = [k for k in KNN_K_GRID if k < n_train * 0.6] or [1]
        return {("k", k): (lambda k=k: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, metric="cosine")))
                for k in ks}
    raise ValueError(f"unknown probe {kind!r}: use linear, svm or knn")


@threadpool_limits.wrap(limits=1)
def tuned_probe(kind: str, Xtr: np.ndarray | dict, ytr: np.ndarray, Xte: np.ndarray | dict, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Test predictions of a ``kind`` probe whose hyper-parameter (and, given dicts, pooling) is chosen by
    inner CV on the training labels only, and what was chosen (with the training accuracy, so an
    under-fitted probe shows)."""
    ytr = np.asarray(ytr)
    tr = Xtr if isinstance(Xtr, dict) else {"features": Xtr}
    te = Xte if isinstance(Xte, dict) else {"features": Xte}
    cands = {(p, key): (tr[p], make) for p in tr for key, make in probe_candidates(kind, len(ytr)).items()}
    (pool, (param, value)), cv = select_by_inner_cv(cands, ytr, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = cands[(pool, (param, value))][1]().fit(tr[pool], ytr)
    return clf.predict(te[pool]), {"pooling": pool, param: value, "inner_cv": float(cv),
                                   "train_accuracy": float((clf.predict(tr[pool]) == ytr).mean())}


def normalised_kernel(X: np.ndarray) -> np.ndarray:
    """The cosine-normalised linear kernel of X's rows (for count features with tens of thousands of columns)."""
    K = X.astype(np.float64) @ X.T.astype(np.float64)
    d = np.sqrt(np.clip(np.diag(K), 1e-12, None))
    return K / d[:, None] / d[None, :]


@threadpool_limits.wrap(limits=1)
def kfold_accuracy(features: np.ndarray | dict[str, np.ndarray], y: np.ndarray, folds: int = 10,
                   seeds: tuple[int, ...] = (0, 1, 2), kernel: bool = False) -> dict:
    """Repeated stratified k-fold accuracy of a linear-kernel SVM, as graph-classification tables report it
    (GraphMAE, InfoGraph), with C and the pooling chosen by inner CV on each training fold only.

    ``kernel``: the features are counts (e.g. Weisfeiler-Lehman), compared through their cosine-normalised
    kernel, computed once. Returns per-(seed, fold) accuracies (the same folds for every method, so
    methods pair up), per-seed means, mean and std of those, mean training accuracy, the poolings chosen.
    """
    feats = features if isinstance(features, dict) else {"features": features}
    y = np.asarray(y)
    if kernel:
        feats = {k: normalised_kernel(X) for k, X in feats.items()}

    def make(c: float):
        if kernel:
            return SVC(kernel="precomputed", C=c, max_iter=100_000)
        # libsvm's SVC with a linear kernel: exact and fast on a few thousand samples with thousands of
        # columns, where liblinear's LinearSVC stalls at its iteration limit
        return make_pipeline(StandardScaler(), SVC(kernel="linear", C=c, max_iter=100_000))

    def rows(X: np.ndarray, idx: np.ndarray, tr: np.ndarray) -> np.ndarray:
        """Samples ``idx`` of X; a precomputed kernel's columns are the training samples ``tr``."""
        return X[np.ix_(idx, tr)] if kernel else X[idx]

    grid = KERNEL_C_GRID if kernel else SVM_C_GRID
    accs, train_accs, pools = [], [], Counter()
    for seed in seeds:
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
            cands = {(name, c): (rows(X, tr, tr), (lambda c=c: make(c))) for name, X in feats.items() for c in grid}
            (name, c), _ = select_by_inner_cv(cands, y[tr], seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = make(c).fit(rows(feats[name], tr, tr), y[tr])
            pools[name] += 1
            accs.append(float((clf.predict(rows(feats[name], te, tr)) == y[te]).mean()))
            train_accs.append(float(clf.score(rows(feats[name], tr, tr), y[tr])))
    per_seed = np.array(accs).reshape(len(seeds), folds).mean(1)
    return {"fold_accuracy": accs, "seed_accuracy": per_seed.tolist(), "mean": float(per_seed.mean()),
            "std": float(per_seed.std()), "train_accuracy": float(np.mean(train_accs)), "poolings": dict(pools)}
