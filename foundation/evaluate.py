"""Few-label evaluation of an encoder against the same architecture randomly initialised."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from foundation.embed import embed_dataset
from foundation.model import Encoder
from foundation.probes import ProbeError, check_classes, compare_few_shot, format_interval, paired_difference


def random_twin(encoder: Encoder, seed: int = 0) -> Encoder:
    """Same adapter (preprocessing) and architecture, fresh random weights."""
    torch.manual_seed(seed)
    return Encoder(encoder.adapter, **encoder.config)


def few_label_report(encoder: Encoder, dataset, ks: list[int], seeds: int, test_fraction: float = 0.3,
                     batch_size: int = 64, progress: bool = False, poolings: tuple[str, ...] | None = None) -> dict:
    """Pretrained vs random-init linear probes on paired few-label splits of ``dataset``.

    Each encoder's pooling is chosen among ``poolings`` (default: the adapter's ``probe_poolings``)
    by inner CV on the training labels, the same way for both, so neither side is handicapped by a
    pooling that suits the other. A feature key that holds a list (one [instances, D] array per
    sample, e.g. a study's regions) is a bag: ``bag_probe`` reads it on the same splits, and each
    row gets that key's comparison too.
    """
    feats = {"pretrained": embed_dataset(encoder, dataset, batch_size, progress=progress),
             "random_init": embed_dataset(random_twin(encoder), dataset, batch_size)}
    return compare_features(feats, list(getattr(dataset, "classes", None) or []) or None, ks, seeds, test_fraction,
                            tuple(poolings or encoder.adapter.probe_poolings))


def compare_features(feats: dict[str, dict], names: list[str] | None, ks: list[int], seeds: int, test_fraction: float,
                     poolings: tuple[str, ...]) -> dict:
    """``few_label_report`` from the two encoders' features (``embed_dataset`` outputs, labels included).

    One stratified test split, then ``k`` labels per class from the rest over ``seeds`` paired draws;
    ``foundation.probes.few_shot_splits`` refuses a k above a class's pool and seeds that draw the same
    samples, and a test set smaller than ``MIN_TEST_SAMPLES`` gets point estimates without intervals.
    """
    labels = feats["pretrained"]["labels"]
    if (labels < 0).any():
        raise ProbeError("probing needs labels for every sample: set data.labels (folder, pattern:<regex>, column:<name>)")
    classes, _ = check_classes(labels, names, min_per_class=2)
    idx = np.arange(len(labels))
    n_test = int(np.ceil(test_fraction * len(labels)))
    if not len(classes) <= n_test <= len(labels) - len(classes):
        raise ProbeError(f"probe.test_fraction={test_fraction} holds out {n_test} of {len(labels)} samples; the stratified "
                         f"split needs between {len(classes)} and {len(labels) - len(classes)} (one test and one training sample per class)")
    pool, test = train_test_split(idx, test_size=n_test, stratify=labels, random_state=12345)
    # an adapter's feature model (``Adapter.feature_model``) may offer only some of them
    pooled = {m: {k: f[k] for k in poolings if k in f} for m, f in feats.items()}
    if not pooled["pretrained"]:
        raise ValueError(f"none of the poolings {poolings} among the features ({sorted(feats['pretrained'])})")
    bag_keys = [k for k, v in feats["pretrained"].items() if isinstance(v, list)]
    for key in bag_keys:
        pooled.update({f"{m}_{key}": f[key] for m, f in feats.items()})
    res = compare_few_shot(pooled, labels, pool, test, ks, seeds, names)
    rows = []
    for k in ks:
        acc = {m: [r["accuracy"] for r in v[k]] for m, v in res.items()}
        row = {"k": k, **_comparison(acc["pretrained"], acc["random_init"], len(test))}
        for key in bag_keys:
            row[key] = _comparison(acc[f"pretrained_{key}"], acc[f"random_init_{key}"], len(test))
        rows.append(row)
    return {"rows": rows, "bag_keys": bag_keys, "n_test": int(len(test)), "n_pool": int(len(pool)),
            "classes": len(classes), "seeds": seeds, "raw": res}


def _comparison(a: list[float], b: list[float], n_test: int | None = None) -> dict:
    """Pretrained accuracies ``a`` against random-init ``b`` on the same splits."""
    return {"pretrained": float(np.mean(a)), "pretrained_std": float(np.std(a)),
            "random_init": float(np.mean(b)), "random_init_std": float(np.std(b)), **paired_difference(a, b, n_test)}


def format_report(rep: dict) -> str:
    lines = [f"{'k/class':>8} {'pretrained':>14} {'random init':>14} {'paired diff [95% CI]':>28}"]
    bag_keys = rep.get("bag_keys", [])
    for r in rep["rows"]:
        for label, x in [("", r)] + [(f" {key}", r[key]) for key in bag_keys]:
            lines.append(f"{str(r['k']) + label:>8} {x['pretrained']:>8.3f}±{x['pretrained_std']:.3f} {x['random_init']:>8.3f}±{x['random_init_std']:.3f}"
                         f"   {format_interval(x)}{'  beats' if x['beats'] else ''}")
    for key in bag_keys:
        lines.append(f"({key}: foundation.probes.bag_probe on each sample's {key}, the same splits)")
    lines.append(f"({rep['classes']} classes, {rep['n_test']} test samples, {rep['seeds']} paired seeds)")
    return "\n".join(lines)


# -- metrics of every task (finetune reports, predict, the evaluate registry) ---------------------
def task_metrics(task: str, y: np.ndarray, scores: np.ndarray, names: list[str] | None = None) -> dict:
    """Metrics of predictions ``scores`` (probabilities per class/label, or values [N] / [N, 1]) against ``y``.

    classification: accuracy, balanced accuracy, macro-F1, AUROC (binary, or one-vs-rest macro when every
    class is present), per-class accuracy (recall) and the confusion matrix (rows: true, columns: predicted);
    multilabel: per-label accuracy, macro-F1 and macro AUROC; regression: MAE, RMSE, R²;
    segmentation: Dice per class and mean over foreground, IoU per class and mIoU (``foundation.dense_metrics``);
    verification: EER with its threshold, and AUROC.
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    if task == "segmentation":  # y: labels per element (-1 ignored); scores: predicted labels, or probabilities [..., C]
        from foundation.dense_metrics import segmentation_metrics

        pred = np.asarray(scores)
        if pred.ndim == np.asarray(y).ndim + 1:
            pred = pred.argmax(-1)
        n_cls = len(names) if names else int(max(np.max(y), np.max(pred))) + 1
        return segmentation_metrics(y, pred, n_cls, names)
    if task == "verification":  # y: 1 for same-identity pairs; scores: similarity
        from foundation.dense_metrics import equal_error_rate

        return equal_error_rate(y, scores)
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    if task == "regression":
        pred = scores.reshape(len(y), -1)[:, 0]
        err = pred - y
        ss = float(((y - y.mean()) ** 2).sum())
        return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
                "r2": float(1 - (err ** 2).sum() / ss) if ss > 0 else float("nan"), "n": int(len(y))}
    if task == "multilabel":
        pred = scores > 0.5
        out = {"accuracy": float((pred == (y > 0.5)).mean()), "exact_match": float((pred == (y > 0.5)).all(1).mean()),
               "macro_f1": float(f1_score(y > 0.5, pred, average="macro", zero_division=0)), "n": int(len(y))}
        ok = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        out["auroc"] = float(np.mean([roc_auc_score(y[:, j], scores[:, j]) for j in ok])) if ok else float("nan")
        return out
    n_cls = scores.shape[1]
    pred = scores.argmax(1)
    cm = confusion_matrix(y, pred, labels=list(range(n_cls)))
    per_class = [float(cm[c, c] / cm[c].sum()) if cm[c].sum() else float("nan") for c in range(n_cls)]
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)),
           "per_class_accuracy": dict(zip(names or [str(c) for c in range(n_cls)], per_class)),
           "confusion_matrix": cm.tolist(), "n": int(len(y))}
    present = np.unique(y)
    if n_cls == 2 and len(present) == 2:
        out["auroc"] = float(roc_auc_score(y, scores[:, 1]))
    elif len(present) == n_cls and n_cls > 2:
        p = scores / scores.sum(1, keepdims=True).clip(min=1e-12)
        out["auroc"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    else:
        out["auroc"] = float("nan")
    return out


def headline(task: str) -> str:
    """The metric a task's tables lead with."""
    return {"classification": "accuracy", "multilabel": "macro_f1", "regression": "r2", "segmentation": "mean_dice",
            "verification": "eer"}[task]


# -- `domainfm evaluate`: a registry of tasks run under one few-label protocol ---------------------
EVAL_TASKS: dict = {}
BASELINES = ("random", "scratch", "classical")


def register_task(name: str):
    """Add an evaluation task: ``fn(encoder, dataset, spec, baselines) -> result dict`` (the alignment
    issue adds zero-shot and retrieval here)."""
    def deco(fn):
        EVAL_TASKS[name] = fn
        return fn
    return deco


def classical_features(encoder: Encoder, dataset) -> dict[str, np.ndarray]:
    """The field's simplest features: the adapter's own (``Adapter.classical_features``) where it has
    them, else per-sample statistics of the raw token values (mean, std, quantiles per patch position)."""
    own = getattr(encoder.adapter, "classical_features", None)
    if own is not None:
        return {"classical": np.asarray(own(dataset), dtype=np.float64)}
    rows = []
    for i in range(len(dataset)):
        s = dataset[i]
        x = s.patches[~s.padding].double()
        if x.numel() == 0:
            x = s.patches.double()
        q = torch.quantile(x, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64), dim=0)
        rows.append(torch.cat([x.mean(0), x.std(0, unbiased=False), q.reshape(-1)]).numpy())
    return {"classical": np.stack(rows)}


def _split(dataset, labels: np.ndarray | None, groups_rule: str | None, test_fraction: float, seed: int = 12345):
    """The test split every arm shares: whole groups held out when ``data.groups`` is set (stratified
    by each group's majority class), else a stratified random split."""
    from foundation.finetune import group_split, sample_groups

    n = len(dataset)
    groups = sample_groups(dataset, groups_rule)
    if groups_rule or len(set(groups)) < n:  # a rule, or several samples from one source item (crops of a volume)
        return group_split(groups, test_fraction, seed, labels)
    strat = labels if labels is not None and np.bincount(labels).min() >= 2 else None
    pool, test = train_test_split(np.arange(n), test_size=test_fraction, stratify=strat, random_state=seed)
    return np.sort(pool), np.sort(test)


def _pick(task: str, y: np.ndarray, pool: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k labelled samples drawn from ``pool`` with ``seed`` (tasks without classes to draw k of)."""
    return np.sort(np.random.default_rng(seed).permutation(pool)[:k])


def few_label_protocol(arms: dict, targets, dataset, spec: dict, splits: list[tuple[np.ndarray, np.ndarray]] | None = None,
                       pairs: list[tuple[str, str]] | None = None) -> dict:
    """Run every arm (``name -> fn(pick, test, seed) -> scores``) on the same (k, seed) splits.

    Returns per arm and k the metrics of every seed, their mean ± std, per-class accuracy with 95%
    t-intervals over seeds, and each other arm's paired difference to the first arm (the model).

    ``splits`` (a list of (pool, test) index arrays: leave-one-speaker-out folds, repeated random
    splits) replaces the one test split; every (split, seed) is then one paired unit, the same for
    every arm. ``pairs`` adds ``row["pairs"]["a - b"]``: the paired difference of arm a minus arm b
    (e.g. each method against its random-init twin). An arm carrying a ``history`` list (the
    fine-tuning arms) has its training-set metric reported too, so an under-trained arm is visible.
    """
    from foundation.probes import paired_difference

    probe = spec["probe"]
    task, y = targets.task, targets.values
    cls = y if task == "classification" else None
    if splits is None:
        splits = [_split(dataset, cls, spec["data"].get("groups"), probe["test_fraction"])]
    n_test = min(len(t) for _, t in splits)
    seeds = int(probe["seeds"])
    names = list(arms)
    raw: dict = {a: {} for a in names}
    trained: dict = {}  # arm -> k -> training-set metrics per paired unit (arms with a ``history``)
    correct: dict = {}  # one seed: per-sample correctness, for bootstrap intervals over the one test set
    for pool, test in splits:
        if task == "classification":  # refuses a k above a class's pool and seeds that would repeat a draw
            from foundation.probes import few_shot_splits

            picks = few_shot_splits(y[pool], [int(k) for k in probe["k"]], seeds, targets.names)
        for k in probe["k"]:
            for seed in range(seeds):
                pick = pool[picks[int(k)][seed]] if task == "classification" else _pick(task, y, pool, int(k), seed)
                for a, run in arms.items():
                    hist = getattr(run, "history", None)
                    before = len(hist) if hist is not None else 0
                    scores = run(pick, test, seed)  # an arm may score itself (dense tasks: metrics over every element)
                    metrics = scores if isinstance(scores, dict) else task_metrics(task, y[test], scores, targets.names)
                    raw[a].setdefault(int(k), []).append(metrics)
                    if hist is not None and len(hist) > before:
                        trained.setdefault(a, {}).setdefault(int(k), []).append(hist[-1])
                    if seeds == 1 and len(splits) == 1 and task == "classification":
                        correct.setdefault(int(k), {})[a] = scores.argmax(1) == y[test]
    key = headline(task)
    rows = []
    for k in probe["k"]:
        row = {"k": int(k)}
        for a in names:
            runs = raw[a][int(k)]
            scalars = {m for m, v in runs[0].items() if isinstance(v, float)}
            row[a] = {m: {"mean": float(np.nanmean([r[m] for r in runs])), "std": float(np.nanstd([r[m] for r in runs]))} for m in scalars}
            if a in trained:
                row[a]["train_" + key] = {"mean": float(np.mean([h["train_" + key] for h in trained[a][int(k)]]))}
            if task == "classification":
                per = np.array([[r["per_class_accuracy"][c] for c in targets.names] for r in runs], float)
                row[a]["per_class"] = {c: _interval(per[:, j]) for j, c in enumerate(targets.names)}
            if task == "segmentation":  # each structure's Dice: a mean over structures hides the small one
                per = np.array([[r["dice"][c] for c in targets.names] for r in runs], float)
                row[a]["per_class_dice"] = {c: _interval(per[:, j]) for j, c in enumerate(targets.names)}
            if a != names[0]:
                row[a]["vs_" + names[0]] = paired_difference([r[key] for r in raw[names[0]][int(k)]], [r[key] for r in runs], n_test)
                if int(k) in correct:
                    row[a]["bootstrap_vs_" + names[0]] = paired_bootstrap(correct[int(k)][names[0]], correct[int(k)][a])
        if pairs:
            row["pairs"] = {f"{a} - {b}": paired_difference([r[key] for r in raw[a][int(k)]], [r[key] for r in raw[b][int(k)]], n_test)
                            for a, b in pairs}
        rows.append(row)
    return {"task": task, "metric": key, "arms": names, "rows": rows, "names": targets.names, "n_test": int(n_test),
            "n_pool": int(min(len(p) for p, _ in splits)), "splits": len(splits), "seeds": seeds, "raw": raw,
            "train": {a: {int(k): v for k, v in d.items()} for a, d in trained.items()}}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Accuracy difference of two methods scored on the same test samples (``a``, ``b``: per-sample
    correctness) with a percentile interval from resampling the test set, for a single test set where
    there are no seeds to pair over."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    d = (a[idx] - b[idx]).mean(1)
    lo, hi = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"diff": float((a - b).mean()), "ci_low": float(lo), "ci_high": float(hi), "beats": bool(lo > 0), "resamples": n}


def _interval(x: np.ndarray, confidence: float = 0.95) -> dict:
    from scipy import stats

    x = x[np.isfinite(x)]
    if len(x) < 2:
        m = float(x.mean()) if len(x) else float("nan")
        return {"mean": m, "lo": float("nan"), "hi": float("nan")}
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return {"mean": float(x.mean()), "lo": float(x.mean() - half), "hi": float(x.mean() + half)}


def _probe_arm(encoder: Encoder, dataset, targets, kind: str, poolings: tuple[str, ...] | None = None, feats: dict | None = None):
    from foundation.probes import probe_scores

    if feats is None:
        f = embed_dataset(encoder, dataset)
        feats = {p: f[p] for p in (poolings or encoder.adapter.probe_poolings) if p in f and not isinstance(f[p], list)}
    y = targets.values
    n_cls = len(targets.names)

    def run(pick, test, seed):
        proba, _ = probe_scores(kind, {p: v[pick] for p, v in feats.items()}, y[pick], {p: v[test] for p, v in feats.items()}, seed)
        full = np.zeros((len(test), n_cls))
        full[:, np.unique(y[pick])] = proba  # classes absent from the k picks get probability 0
        return full
    return run


def _finetune_arm(encoder: Encoder, dataset, targets, cfg: dict):
    from foundation.dense import DENSE_TASKS, dense_evaluate
    from foundation.finetune import finetune_indices, LabelledView

    def run(pick, test, seed):
        ft = finetune_indices(encoder, dataset, targets, pick, cfg, seed)
        if targets.task in DENSE_TASKS:  # Dice / IoU over every labelled element of the test samples
            fit = dense_evaluate(ft.model, LabelledView(dataset, pick), targets.names)
            run.history.append({"train_mean_dice": fit["mean_dice"], **{k: v for k, v in (ft.history or {}).items()
                                                                        if k in ("first_loss", "final_loss", "steps")}})
            return dense_evaluate(ft.model, LabelledView(dataset, test), targets.names)
        train = ft.scores(LabelledView(dataset, pick))["scores"]  # its training-set fit: an under-trained arm shows
        run.history.append({"train_" + headline(targets.task): task_metrics(targets.task, targets.values[pick], train)[headline(targets.task)],
                            **{k: v for k, v in (ft.history or {}).items() if k in ("first_loss", "final_loss", "steps")}})
        return ft.scores(LabelledView(dataset, test))["scores"]
    run.history = []
    return run


def _with_baselines(arms: dict, encoder: Encoder, dataset, targets, spec: dict, baselines: list[str], make_arm) -> dict:
    """Add the opt-in baselines: the same arm on a random-init twin, full training from scratch at the
    same budget, and a linear probe on classical features."""
    from foundation.finetune import FINETUNE_DEFAULTS

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        from foundation.errors import DomainfmError

        raise DomainfmError(f"--baselines: unknown {unknown}; choose from {', '.join(BASELINES)}")
    twin = random_twin(encoder)
    if "random" in baselines:
        arms["random_init"] = make_arm(twin)
    if "scratch" in baselines:
        arms["scratch"] = _finetune_arm(twin, dataset, targets, {**FINETUNE_DEFAULTS, **spec["finetune"], "method": "full", "layer_decay": 1.0})
    if "classical" in baselines:
        if targets.task != "classification":
            from foundation.errors import DomainfmError

            raise DomainfmError("--baselines classical is a linear probe, for finetune.task=classification")
        arms["classical"] = _probe_arm(encoder, dataset, targets, "linear", feats=classical_features(encoder, dataset))
    return arms


@register_task("probe")
def probe_task(encoder: Encoder, dataset, spec: dict, baselines: list[str]) -> dict:
    """Linear probe on frozen features (pooling and C by inner CV on the training labels only)."""
    from foundation.finetune import dataset_targets

    targets = dataset_targets(dataset, "classification")
    arms = {"model": _probe_arm(encoder, dataset, targets, "linear")}
    return few_label_protocol(_with_baselines(arms, encoder, dataset, targets, spec, baselines,
                                              lambda e: _probe_arm(e, dataset, targets, "linear")), targets, dataset, spec)


@register_task("knn")
def knn_task(encoder: Encoder, dataset, spec: dict, baselines: list[str]) -> dict:
    """Cosine kNN on standardised frozen features (the adapter's first probe pooling)."""
    from foundation.finetune import dataset_targets

    targets = dataset_targets(dataset, "classification")
    pool = encoder.adapter.probe_poolings[:1]
    arms = {"model": _probe_arm(encoder, dataset, targets, "knn", pool)}
    return few_label_protocol(_with_baselines(arms, encoder, dataset, targets, spec, baselines,
                                              lambda e: _probe_arm(e, dataset, targets, "knn", pool)), targets, dataset, spec)


@register_task("finetune")
def finetune_task(encoder: Encoder, dataset, spec: dict, baselines: list[str]) -> dict:
    """``domainfm finetune`` (``finetune.method``, ``finetune.task``, budget) on each few-label split."""
    from foundation.finetune import FINETUNE_DEFAULTS, dataset_targets

    from foundation.dense import DENSE_TASKS
    from foundation.finetune import Targets

    cfg = {**FINETUNE_DEFAULTS, **spec["finetune"]}
    if cfg["task"] in DENSE_TASKS:  # k labelled samples (volumes, chips, clouds) per draw
        targets = Targets(cfg["task"], np.zeros(len(dataset), np.int64), [str(c) for c in dataset.dense_classes])
    else:
        targets = dataset_targets(dataset, cfg["task"], cfg["label_sep"])
    arms = {"model": _finetune_arm(encoder, dataset, targets, cfg)}
    return few_label_protocol(_with_baselines(arms, encoder, dataset, targets, spec, baselines,
                                              lambda e: _finetune_arm(e, dataset, targets, cfg)), targets, dataset, spec)


@register_task("quality")
@torch.no_grad()
def quality_task(encoder: Encoder, dataset, spec: dict, baselines: list[str]) -> dict:
    """Label-free checks of the frozen embeddings (mean pooling): RankMe (effective rank; collapse makes
    it small), uniformity (Wang & Isola: log E exp(-2|zi - zj|²) of normalised embeddings, lower is more
    spread) and alignment (E |z - z'|² between two augmented views of one sample, lower is more
    invariant). ``--baselines random`` adds the same for the random-init twin."""
    from foundation.monitor import rankme

    def signals(enc: Encoder) -> dict:
        enc = enc.eval()
        n = min(len(dataset), 512)
        z = torch.from_numpy(embed_dataset(enc, torch.utils.data.Subset(dataset, range(n)))["mean"]).float()
        zn = torch.nn.functional.normalize(z, dim=-1)
        uniformity = float(torch.pdist(zn).pow(2).mul(-2).exp().mean().log()) if n > 1 else float("nan")
        views = []
        for seed in (1, 2):
            rows = [enc.pooled(collate([dataset[(i, seed * 1_000_003 + i)] for i in range(s, min(n, s + 64))]))["mean"]
                    for s in range(0, n, 64)]
            views.append(torch.nn.functional.normalize(torch.cat(rows).float(), dim=-1))
        return {"rankme": rankme(z), "rankme_max": int(min(z.shape)), "uniformity": uniformity,
                "alignment": float((views[0] - views[1]).pow(2).sum(-1).mean()), "n": n}

    from foundation.tokens import collate

    out = {"task": "quality", "arms": ["model"], "signals": {"model": signals(encoder)}}
    if "random" in baselines:
        out["arms"].append("random_init")
        out["signals"]["random_init"] = signals(random_twin(encoder))
    return out


def run_evaluate(model_dir: str, data: str, task: str, overrides: list[str], baselines: list[str], out: str | Path) -> Path:
    """``domainfm evaluate``: run a registered task, write result.json and report.md (+ PNGs) beside it."""
    import json
    from pathlib import Path

    from foundation.errors import DomainfmError
    from foundation.finetune import adapter_data, finetune_spec, load_encoder

    from foundation.align_task import ALIGN_TASKS, run_align_evaluate

    if task in ALIGN_TASKS:  # aligned towers (domainfm align) on a paired manifest
        return run_align_evaluate(model_dir, data, task, overrides, out)
    if task not in EVAL_TASKS:
        raise DomainfmError(f"--task {task!r} is not one of {', '.join(sorted(EVAL_TASKS))}")
    from foundation.dense import DENSE_TASKS

    spec = finetune_spec(data, overrides)
    encoder = load_encoder(model_dir)
    if task == "finetune" and spec["finetune"]["task"] in DENSE_TASKS:
        dataset = encoder.adapter.dense_dataset(adapter_data(spec["data"]), train=True)
    else:
        dataset = encoder.adapter.dataset(adapter_data(spec["data"]), train=True)
    torch.manual_seed(int(spec["run"]["seed"]))
    result = {"command": "evaluate", "task_name": task, "model_dir": str(model_dir), "data": spec["data"],
              "baselines": baselines, "probe": spec["probe"], "finetune": spec["finetune"] if task == "finetune" else None,
              **EVAL_TASKS[task](encoder, dataset, spec, baselines)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    evaluation_report(result, out.parent)
    return out


def evaluation_report(result: dict, out_dir: Path) -> Path:
    """report.md: per arm and k the headline metric (mean ± std), paired differences to the model, and
    per-class accuracy with 95% intervals over seeds (one PNG per k)."""
    from foundation.probes import format_interval
    from foundation.report import plot_per_class

    if "signals" in result:  # label-free checks: one table
        names = list(next(iter(result["signals"].values())))
        lines = [f"# Evaluation: {result.get('task_name', 'quality')} (label-free)", "", "| encoder | " + " | ".join(names) + " |",
                 "|---" * (len(names) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in sig.values()) + " |"
                  for a, sig in result["signals"].items()]
        out = out_dir / "report.md"
        out.write_text("\n".join(lines + [""]))
        return out
    key, arms = result["metric"], result["arms"]
    lines = [f"# Evaluation: {result.get('task_name', '?')} ({result['task']})", "",
             f"{result['n_test']} test samples, {result['seeds']} paired seeds, k labels per class drawn from {result['n_pool']}.", "",
             "| k | " + " | ".join(f"{a} {key}" for a in arms) + " | " + " | ".join(f"model - {a} [95% CI]" for a in arms[1:]) + " |",
             "|---" * (1 + 2 * len(arms) - 1) + "|"]
    for r in result["rows"]:
        cells = [f"{r[a][key]['mean']:.3f} ± {r[a][key]['std']:.3f}" for a in arms]
        diffs = []
        for a in arms[1:]:
            d = r[a].get("bootstrap_vs_" + arms[0]) or r[a]["vs_" + arms[0]]
            diffs.append(format_interval(d) + (" (bootstrap over test samples)" if "resamples" in d else "") + (" beats" if d["beats"] else ""))
        lines.append(f"| {r['k']} | " + " | ".join(cells + diffs) + " |")
    lines.append("")
    if result["task"] == "classification":
        for r in result["rows"]:
            pc = r[arms[0]]["per_class"]
            names = list(pc)
            png = plot_per_class(names, [pc[c]["mean"] for c in names], [pc[c]["lo"] for c in names], [pc[c]["hi"] for c in names],
                                 out_dir / f"per_class_k{r['k']}.png", f"per-class accuracy, k={r['k']} (95% CI over seeds)")
            lines += [f"## Per-class accuracy, k = {r['k']}", "", "| class | accuracy | 95% CI |", "|---|---|---|"]
            lines += [f"| {c} | {pc[c]['mean']:.3f} | [{pc[c]['lo']:.3f}, {pc[c]['hi']:.3f}] |" for c in names]
            lines += ["", f"![per-class accuracy]({png.name})", ""]
    out = out_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
