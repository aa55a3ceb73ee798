"""Where does fine-tuning from our pretrained encoder help? One table per modality (issue 34).

Every fine-tuning method of ``domainfm finetune`` / ``domainfm evaluate`` (linear, knn, attentive,
layers, full, lora) at k labels per class, on the pretrained encoder and on the same method with a
random-init twin, against a from-scratch model (the twin fully trained at the same budget) and the
adapter's classical features (``foundation.evaluate.classical_features``, linear probe). All arms run
through the core's few-label protocol (``foundation.evaluate.few_label_protocol``) on the same
(split, seed) units, so every difference is paired (95% t-interval over the units).

Data (shared real data through the resolver's folder, ``DOMAINFM_SHARED_DATA``; test samples never
touch pretraining or any choice):
  speech      FSDD, leave-one-speaker-out over the speakers pretraining never heard (``--folds``);
              pretraining on the other speakers' recordings; ``--per-cell`` takes per speaker and digit
  earth       EuroSAT MS (140 chips), ``--splits`` repeated stratified splits (``--test-per-class``);
              pretraining on synthetic Sentinel-2 scenes only (every real chip is a test chip once)
  pointcloud  ModelNet10, ``--per-class`` shapes per class for evaluation (``--splits`` stratified
              splits), pretraining on every other shape
  medical     the synthetic cohort (``modalities.medical.synthetic.write_cohort``): a pretraining
              cohort and a separate labelled one, ``--splits`` stratified (patient-wise) splits

The pretrained encoder: ``--pretrained RUN_OR_EXPORT``, or the modality's ``<m>-mae`` recipe at
``--pretrain-steps``, cached under ``$TMPDIR/domainfm-finetune-table`` so reruns do not pretrain again.

    python benchmarks/finetune_table.py --modality speech
    python benchmarks/finetune_table.py --modality earth --ks 1 5 10 --seeds 1 --splits 5 --steps 40
Writes benchmarks/results/finetune_table-<modality>[-TAG].{json,md}. No winner is asserted anywhere.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, git_commit, write_results  # noqa: E402
from foundation.embed import embed_dataset  # noqa: E402
from foundation.evaluate import (_finetune_arm, _probe_arm, _with_baselines, few_label_protocol,  # noqa: E402
                                 random_twin)
from foundation.finetune import FINETUNE_DEFAULTS, METHODS, dataset_targets, load_encoder, sample_groups, write_csv  # noqa: E402
from foundation.probes import format_interval  # noqa: E402

MODALITIES = ("speech", "earth", "pointcloud", "medical")
BASELINES = ("random_init", "scratch", "classical", "field")
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "domainfm-finetune-table"


def shared_root() -> Path:
    """The shared data folder, as ``tests/shared_data.py`` resolves it."""
    return Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data"))


# -- each modality: unlabelled pretraining data, the labelled evaluation set, its splits --------------
def speech_setup(args, work: Path) -> dict:
    """FSDD: pretrain on the speakers outside ``--folds``; evaluate leave-one-speaker-out on the others."""
    root = shared_root() / "fsdd" / "recordings"
    files = sorted(root.glob("*.wav"))
    if not files:
        raise SystemExit(f"no FSDD recordings under {root} (set DOMAINFM_SHARED_DATA)")
    parts = [f.stem.split("_") for f in files]  # {digit}_{speaker}_{take}
    speakers = sorted({p[1] for p in parts})
    folds = args.folds or speakers[-2:]
    if set(folds) - set(speakers) or set(folds) == set(speakers):
        raise SystemExit(f"--folds {folds}: choose held-out speakers among {speakers}, leaving at least one to pretrain on")
    pre = [f for f, p in zip(files, parts) if p[1] not in folds]
    keep = [(f, p[0]) for f, p in zip(files, parts) if int(p[2]) < args.per_cell]  # the first takes of every speaker and digit
    return {"pretrain": write_csv(work / "pretrain.csv", ["path"], [[str(f)] for f in pre]),
            "eval": write_csv(work / f"eval-{args.per_cell}.csv", ["path", "label"], [[str(f), d] for f, d in keep]),
            "groups": r"pattern:^\d_([a-z]+)_", "folds": folds,
            "describe": f"FSDD leave-one-speaker-out: test speakers {folds} (never heard in pretraining, which used "
                        f"{[s for s in speakers if s not in folds]}); the first {args.per_cell} takes per speaker and digit"}


def earth_setup(args, work: Path) -> dict:
    from modalities.earth.synthetic import write_synthetic

    root = shared_root() / "earth" / "eurosat_ms"
    chips = sorted(root.rglob("*.tif"))
    if not chips:
        raise SystemExit(f"no EuroSAT chips under {root} (set DOMAINFM_SHARED_DATA)")
    syn = Path(write_synthetic(work / "synthetic", args.synthetic, seed=0, with_sar=False)["root"]) if not (work / "synthetic").exists() \
        else work / "synthetic" / "s2"
    return {"pretrain": write_csv(work / "pretrain.csv", ["path"], [[str(p)] for p in sorted(syn.rglob("*.tif"))]),
            "eval": write_csv(work / "eval.csv", ["path", "label"], [[str(p), p.parent.name] for p in chips]),
            "eval_adapter": {"preset": "eurosat_ms"}, "recipe_overrides": ["adapter.bands=[" + ",".join(_s2_bands()) + "]"],
            "describe": f"EuroSAT MS ({len(chips)} chips, 13 bands), {args.splits} stratified splits with {args.test_per_class} "
                        f"test chips per class; pretraining on {args.synthetic} synthetic Sentinel-2 scenes only"}


def _s2_bands() -> list[str]:
    from modalities.earth.bands import S2_BANDS

    return list(S2_BANDS)


def pointcloud_setup(args, work: Path) -> dict:
    root = shared_root() / "pointcloud" / "modelnet10"
    files = sorted(str(p) for p in root.rglob("*.pcd"))
    if not files:
        raise SystemExit(f"no ModelNet10 shapes under {root} (set DOMAINFM_SHARED_DATA)")
    names = np.array([Path(f).parent.name for f in files])
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(names == c))[:args.per_class] for c in sorted(set(names))]))
    rest = np.setdiff1d(np.arange(len(files)), keep)
    return {"pretrain": write_csv(work / f"pretrain-{args.per_class}.csv", ["path"], [[files[i]] for i in rest]),
            "eval": write_csv(work / f"eval-{args.per_class}.csv", ["path", "label"], [[files[i], names[i]] for i in keep]),
            "recipe_overrides": ["data.root=", "data.num_workers=1"],
            "describe": f"ModelNet10: {args.per_class} shapes per class for evaluation, {args.splits} stratified splits with "
                        f"{args.test_per_class} test shapes per class; pretraining on the other {len(rest)} shapes"}


def medical_setup(args, work: Path) -> dict:
    from modalities.medical.synthetic import write_cohort

    pre, lab = work / f"pre-{args.pretrain_n}", work / f"lab-{args.labelled_n}"
    if not (pre / "manifest.csv").exists():
        write_cohort(pre, args.pretrain_n, seed=1000)
    if not (lab / "manifest.csv").exists():
        write_cohort(lab, args.labelled_n, seed=2000)
    # one sample per volume (the training reader's several crops of a volume would land on both sides of a split)
    return {"pretrain": pre / "manifest.csv", "eval": lab / "manifest.csv", "recipe_overrides": ["adapter.cache=memory"],
            "eval_adapter": {"crops_per_volume": 1},
            "describe": f"synthetic medical cohort: {args.labelled_n} labelled volumes (one per patient), {args.splits} stratified "
                        f"splits with {args.test_per_class} test volumes per class; pretraining on a separate cohort of {args.pretrain_n}"}


SETUPS = {"speech": speech_setup, "earth": earth_setup, "pointcloud": pointcloud_setup, "medical": medical_setup}


def field_features(modality: str, dataset) -> dict[str, np.ndarray]:
    """The field's strongest simple baseline, as the modality's own benchmark computes it (probed like
    every frozen feature: standardised logistic regression, the block and C by inner CV):
    log-mel and MFCC statistics (speech), per-band reflectance mean/std (earth), D2/A3/D3 shape
    distributions, moments and occupancy (point clouds), intensity statistics and histogram (medical)."""
    if modality == "speech":
        from benchmarks.speech_fsdd_loso import classical_features

        return classical_features(dataset)
    if modality == "earth":
        from benchmarks.earth_eurosat import band_stats_features

        return {"band_stats": band_stats_features(dataset)}
    if modality == "pointcloud":
        from modalities.pointcloud.descriptors import classical_features

        return classical_features([dataset.points(i)[0] for i in range(len(dataset))])
    from modalities.medical.tasks import intensity_features

    return {"intensity_stats": intensity_features(dataset)}


def pretrained(args, setup: dict) -> tuple:
    """``--pretrained``, or ``<modality>-mae`` at ``--pretrain-steps`` on the setup's unlabelled data,
    cached by what shapes it (recipe, data list, steps, overrides)."""
    if args.pretrained:
        return load_encoder(args.pretrained), {"source": str(args.pretrained)}
    from foundation.engine import pretrain
    from foundation.recipes import load_recipe

    extra = setup.get("recipe_overrides", []) + args.override
    steps = args.pretrain_steps or load_recipe(f"{args.modality}-mae", [])["train"]["steps"]
    key = hashlib.sha1(json.dumps([args.modality, setup["pretrain"].read_text(), steps, extra]).encode()).hexdigest()[:10]
    run_dir = CACHE / f"{args.modality}-mae-{steps}-{key}"
    if not (run_dir / "encoder" / "config.json").exists():
        recipe = load_recipe(f"{args.modality}-mae", [f"data.manifest={setup['pretrain']}", f"run.dir={run_dir}", "run.seed=0",
                                                     f"train.steps={steps}", *extra])
        pretrain(recipe, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    return load_encoder(run_dir), {"run_dir": str(run_dir), "recipe": f"{args.modality}-mae", "steps": summary["steps"],
                                   "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
                                   "wall_s": summary.get("wall_s"), "overrides": extra}


def stratified_splits(labels: np.ndarray, test_per_class: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` repeated random splits, ``test_per_class`` test samples of every class (split seed = its index)."""
    out = []
    for s in range(n):
        rng = np.random.default_rng(10_000 + s)
        test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:test_per_class] for c in np.unique(labels)]))
        out.append((np.setdiff1d(np.arange(len(labels)), test), test))
    return out


# -- the grid ----------------------------------------------------------------------------------------------
def method_arm(method: str, encoder, dataset, targets, feats: dict, cfg: dict):
    """One method on one encoder, as ``domainfm evaluate`` runs it: ``linear`` and ``knn`` are the
    probe/knn tasks on frozen features (computed once per encoder), the others ``finetune.method``."""
    if method == "linear":
        return _probe_arm(encoder, dataset, targets, "linear", feats=feats)
    if method == "knn":
        return _probe_arm(encoder, dataset, targets, "knn", feats=dict([next(iter(feats.items()))]))
    return _finetune_arm(encoder, dataset, targets, {**cfg, "method": method})


def announced(run, cells: int, t0: float):
    """``run`` printing, at each call, which of the ``cells`` (split, k, seed) units starts (the first arm runs first)."""
    count = [0]

    def wrapped(pick, test, seed):
        count[0] += 1
        print(f"unit {count[0]}/{cells}: {len(pick)} labels, {len(test)} test samples ({time.time() - t0:.0f} s)", flush=True)
        return run(pick, test, seed)
    return wrapped


def run_table(args) -> dict:
    work = CACHE / args.modality
    work.mkdir(parents=True, exist_ok=True)
    setup = SETUPS[args.modality](args, work)
    t0 = time.time()
    encoder, pre_info = pretrained(args, setup)
    pre_info["pretrain_s_this_run"] = round(time.time() - t0, 1)
    torch.manual_seed(0)
    reader = encoder.adapter
    if setup.get("eval_adapter"):
        reader = type(encoder.adapter)({**encoder.adapter.config, **setup["eval_adapter"]})
    dataset = reader.dataset({"manifest": str(setup["eval"]), "labels": "column:label"}, train=True)
    targets = dataset_targets(dataset, "classification")
    if setup.get("groups"):  # leave-one-group-out over the chosen folds
        groups = sample_groups(dataset, setup["groups"])
        splits = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in setup["folds"]]
    else:
        splits = stratified_splits(targets.values, args.test_per_class, args.splits)
    cfg = {**FINETUNE_DEFAULTS, "steps": args.steps, "batch_size": args.batch_size}
    spec = {"probe": {"k": args.ks, "seeds": args.seeds, "test_fraction": 0.3}, "data": {"groups": None}, "finetune": cfg}
    twin = random_twin(encoder)
    poolings = encoder.adapter.probe_poolings
    feats = {}
    for name, enc in (("pretrained", encoder), ("random_init", twin)):
        if {"linear", "knn"} & set(args.methods):
            f = embed_dataset(enc, dataset)
            feats[name] = {p: f[p] for p in poolings if p in f and not isinstance(f[p], list)}
    arms, pairs = {}, []
    for m in args.methods:
        arms[m] = method_arm(m, encoder, dataset, targets, feats.get("pretrained"), cfg)
        arms[f"{m}:random_init"] = method_arm(m, twin, dataset, targets, feats.get("random_init"), cfg)
        pairs += [(m, f"{m}:random_init"), (m, "scratch"), (m, "classical"), (m, "field")]
    _with_baselines(arms, encoder, dataset, targets, spec, ["scratch", "classical"], make_arm=None)
    arms["field"] = _probe_arm(encoder, dataset, targets, "linear", feats=field_features(args.modality, dataset))
    t1 = time.time()
    first = next(iter(arms))
    arms[first] = announced(arms[first], len(splits) * args.seeds * len(args.ks), t1)
    result = few_label_protocol(arms, targets, dataset, spec, splits=splits, pairs=pairs)
    return {"modality": args.modality, "data": setup["describe"], "pretrained": pre_info,
            "settings": {"methods": args.methods, "ks": args.ks, "seeds": args.seeds, "splits": len(splits), "finetune_steps": args.steps,
                         "batch_size": args.batch_size, "pairs_per_cell": len(splits) * args.seeds,
                         "test_samples_per_split": [int(len(t)) for _, t in splits],
                         "finetune": {k: cfg[k] for k in ("steps", "batch_size", "lr", "layer_decay", "weight_decay", "lora_rank", "knn_k", "augment")},
                         "argv": sys.argv[1:]},
            "protocol_s": round(time.time() - t1, 1), "result": result}


def format_table(res: dict) -> str:
    """One row per (method, k): every arm's accuracy and the pretrained arm minus each baseline."""
    r = res["result"]
    key = r["metric"]
    s = res["settings"]
    lines = [f"# Fine-tuning table: {res['modality']}", "",
             f"{res['data']}.", "",
             f"{r['n_test']}+ test samples per split, {s['splits']} split(s) x {s['seeds']} seed(s) = {s['pairs_per_cell']} paired units per cell; "
             f"fine-tuning {s['finetune_steps']} steps, batch {s['batch_size']}. Metric: {key} on the test samples (mean ± std over units). "
             "Differences are the pretrained arm minus the baseline, 95% t-interval over the paired units; ✓ = the interval "
             "excludes zero in favour of the pretrained encoder, ✗ = it excludes zero against it. "
             "Scratch = the random-init twin fully fine-tuned at the same budget (train accuracy in brackets); "
             "classical = linear probe on the adapter's classical features (foundation.evaluate.classical_features); "
             "field = the field's simple baseline (see benchmarks/finetune_table.py field_features), same probe.", "",
             "| method | k | pretrained | random init | scratch | classical | field | − random init | − scratch | − classical | − field |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(row, arm):
        x = row[arm][key]
        tr = row[arm].get("train_" + key)
        return f"{x['mean']:.3f} ± {x['std']:.3f}" + (f" ({tr['mean']:.2f})" if tr else "")

    def diff(d):
        mark = " ✓" if d["beats"] else (" ✗" if d["ci_high"] < 0 else "")
        return format_interval(d) + mark

    for m in s["methods"]:
        for row in r["rows"]:
            p = row["pairs"]
            lines.append(f"| {m} | {row['k']} | {cell(row, m)} | {cell(row, m + ':random_init')} | {cell(row, 'scratch')} | "
                         f"{cell(row, 'classical')} | {cell(row, 'field')} | {diff(p[f'{m} - {m}:random_init'])} | {diff(p[f'{m} - scratch'])} | "
                         f"{diff(p[f'{m} - classical'])} | {diff(p[f'{m} - field'])} |")
    pre = res["pretrained"]
    lines += ["", "Pretrained encoder: " + (f"{pre['recipe']} for {pre['steps']} steps (loss {pre['first_loss']:.3f} -> {pre['final_loss']:.3f})"
                                             if "recipe" in pre else pre.get("source", "?")) + ".",
              f"Commit {res.get('commit', '?')}, wall {res.get('wall_s', '?')} s, machine {res.get('machine', {})}.",
              f"Command: python benchmarks/finetune_table.py {' '.join(s['argv'])}", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", choices=MODALITIES, required=True)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--seeds", type=int, default=1, help="few-label draws per split (paired units = splits x seeds)")
    ap.add_argument("--splits", type=int, default=5, help="repeated stratified splits (earth, pointcloud, medical)")
    ap.add_argument("--folds", nargs="+", default=None, help="speech: held-out speakers (default: the last two); pretraining never hears them")
    ap.add_argument("--test-per-class", type=int, default=None,
                    help="test samples per class in each split (default: earth 4, pointcloud 10, medical 10)")
    ap.add_argument("--per-cell", type=int, default=10, help="speech: takes per speaker and digit in the evaluation set")
    ap.add_argument("--per-class", type=int, default=25, help="pointcloud: shapes per class in the evaluation set")
    ap.add_argument("--synthetic", type=int, default=300, help="earth: synthetic scenes to pretrain on")
    ap.add_argument("--pretrain-n", type=int, default=64, help="medical: pretraining cohort size")
    ap.add_argument("--labelled-n", type=int, default=60, help="medical: labelled cohort size")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps of attentive, layers, full, lora and scratch")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pretrained", type=Path, default=None, help="a pretraining run or export (default: pretrain and cache)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default: the recipe's)")
    ap.add_argument("--override", nargs="*", default=[], help="extra pretraining recipe overrides key=value")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    return ap


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.test_per_class is None:
        args.test_per_class = {"earth": 4, "pointcloud": 10, "medical": 10}.get(args.modality, 0)
    torch.set_num_threads(args.threads)
    t0, commit = time.time(), git_commit()  # the code that runs, not what HEAD is when a long grid ends
    res = {"commit": commit, **run_table(args)}
    name = f"finetune_table-{args.modality}" + (f"-{args.tag}" if args.tag else "")
    out = write_results(name, res, t0, out=args.out / f"{name}.json")
    res = json.loads(out.read_text())
    out.with_suffix(".md").write_text(format_table(res))
    print(format_table(res))
    return out


if __name__ == "__main__":
    main()
