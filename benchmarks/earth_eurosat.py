"""Does Earth-observation pretraining pay off with few labels? (issue 6 acceptance experiment)

Pretrain the earth-mae recipe, without labels, on the real EuroSAT MS chips (140, 13 bands, B8A
stored last) plus synthetic Sentinel-2 scenes (registry band order: one model, two band orders).
Then, on repeated stratified splits (test chips never labelled, never used for any choice), probe
with k = 1, 5, 10 labelled chips per class:
- pretrained encoder, linear probe (standardised logistic regression; C and pooling by inner CV) on
  its band views (all bands, and the 10 m bands alone, concatenated: modalities/earth/views.py);
- the same architecture randomly initialised, same views and probe;
- per-band mean/std of reflectance (26 features), same probe: the strong classical EO baseline;
- the same architecture trained from scratch, supervised, on the same k labels (flips/rotations,
  fixed budget, train accuracy reported).
Also: the 13-band model embeds 4-band (B02 B03 B04 B08) chips, pretrained vs random init on them;
and the same comparison on held-out synthetic scenes (a different generator seed).

    python benchmarks/earth_eurosat.py                     # full run (~2.5 h on one thread; sections can run apart)
    python benchmarks/earth_eurosat.py --steps 150 --seeds 5 --scratch-seeds 0 --tag quick
Writes benchmarks/results/earth_eurosat[-TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import git_commit  # noqa: E402
from foundation.finetune import train_from_scratch, tune_lr  # noqa: E402
from foundation.embed import embed_dataset  # noqa: E402
from foundation.engine import pretrain  # noqa: E402
from foundation.evaluate import random_twin  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.probes import few_shot_indices, format_interval, linear_probe, paired_difference  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from modalities.earth.adapter import EarthAdapter  # noqa: E402
from modalities.earth.bands import S2_BANDS  # noqa: E402
from modalities.earth.synthetic import write_synthetic  # noqa: E402

POOLINGS = ("meanstd", "mean", "mid_meanstd", "layers_meanstd")  # chosen by inner CV; the first is used when k=1 (no inner CV)
RGBN = ["B02", "B03", "B04", "B08"]
SECTIONS = ("eurosat13", "eurosat4", "synthetic")


def shared_data() -> Path:
    return Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data")) / "earth" / "eurosat_ms"


def write_manifest(path: Path, eurosat: Path, synthetic_root: Path | None) -> Path:
    """Unlabelled pretraining list: EuroSAT rows declare their band order (preset), synthetic rows
    carry band descriptions."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "preset"])
        for p in sorted(eurosat.rglob("*.tif")):
            w.writerow([str(p), "eurosat_ms"])
        if synthetic_root is not None:
            for p in sorted(synthetic_root.rglob("*.tif")):
                w.writerow([str(p), ""])
    return path


def band_stats_features(ds) -> np.ndarray:
    """Per-band mean and std of reflectance over valid pixels: the classical baseline."""
    rows = []
    for i in range(len(ds)):
        x, v, _ = ds.read(i)
        rows.append(np.concatenate([[x[c][v[c]].mean() if v[c].any() else 0.0, x[c][v[c]].std() if v[c].any() else 0.0]
                                    for c in range(x.shape[0])]))
    return np.asarray(rows)


def pooled(enc: Encoder, ds) -> dict[str, np.ndarray]:
    """Features under every probed pooling (band views as the encoder's ``adapter.embed_views`` says)."""
    out = embed_dataset(enc, ds, batch_size=64)
    return {p: out[p] for p in POOLINGS}


def split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeated stratified split: ``test_per_class`` test chips per class, the rest is the label pool."""
    rng = np.random.default_rng(10_000 + seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:test_per_class] for c in np.unique(labels)])
    pool = np.setdiff1d(np.arange(len(labels)), test)
    return pool, np.sort(test)


def tune_scratch_lr(run, labels: np.ndarray, test_per_class: int, lrs: list[float]) -> tuple[float, dict]:
    """The from-scratch model's own tuning: on split 0's label pool only (its test chips are never
    touched), train on half of each class and validate on the other half; the best lr is used everywhere."""
    pool, _ = split(labels, test_per_class, 0)
    rng = np.random.default_rng(0)
    fit = np.concatenate([rng.permutation(pool[labels[pool] == c])[: max(1, (labels[pool] == c).sum() // 2)] for c in np.unique(labels)])
    val = np.setdiff1d(pool, fit)
    lr, scores = tune_lr(lrs, lambda v: run(np.sort(fit), val, 0, v)["accuracy"])
    return lr, scores or {lr: float("nan")}  # one candidate: untried


def scratch_arm(adapter, model_cfg: dict, ds, labels: np.ndarray, test_per_class: int, args) -> dict | None:
    """Same architecture trained from scratch on the k labels (flips/rotations), its lr tuned first."""
    if not args.scratch_seeds:
        return None
    lrs = [float(x) for x in args.scratch_lrs.split(",")]

    def run(pick, test, seed, lr):
        return train_from_scratch(adapter, model_cfg, ds, pick, test, labels, args.scratch_steps, lr, seed)

    lr, scores = tune_scratch_lr(run, labels, test_per_class, lrs)
    print(f"from-scratch lr {lr} (validation accuracy by lr: {scores})", flush=True)
    return {"seeds": args.scratch_seeds, "lr": lr, "tuning": scores, "run": lambda pick, test, seed: run(pick, test, seed, lr)}


def compare(features: dict[str, dict | np.ndarray], labels: np.ndarray, ks: list[int], seeds: int, test_per_class: int,
            scratch: dict | None = None) -> dict:
    """Every method sees the same (split, labelled picks) for a given (k, seed)."""
    res: dict = {m: {k: [] for k in ks} for m in features}
    splits = []
    for seed in range(seeds):
        pool, test = split(labels, test_per_class, seed)
        for k in ks:
            pick = pool[few_shot_indices(labels[pool], k, seed)]
            splits.append((k, seed, pick, test))
            for m, f in features.items():
                tr = {p: x[pick] for p, x in f.items()} if isinstance(f, dict) else f[pick]
                te = {p: x[test] for p, x in f.items()} if isinstance(f, dict) else f[test]
                res[m][k].append(linear_probe(tr, labels[pick], te, labels[test], seed))
    if scratch:
        res["scratch"] = {k: [] for k in ks}
        for k, seed, pick, test in splits:
            if seed < scratch["seeds"]:
                res["scratch"][k].append(scratch["run"](pick, test, seed))
    return res


def table(res: dict, ks: list[int], ref: str = "pretrained") -> tuple[str, list[dict]]:
    rows, lines = [], [f"| k/class | method | accuracy (mean ± std) | train acc | {ref} − method [95% CI] | n |", "|---|---|---|---|---|---|"]
    for k in ks:
        for m in res:
            acc = [r["accuracy"] for r in res[m][k]]
            if not acc:
                continue
            tr = np.mean([r.get("train_accuracy", np.nan) for r in res[m][k]])
            row = {"k": k, "method": m, "accuracy": float(np.mean(acc)), "std": float(np.std(acc)), "train_accuracy": float(tr), "n": len(acc),
                   "accuracies": acc, "poolings": [r["pooling"] for r in res[m][k] if "pooling" in r]}
            cell = ""
            if m != ref:
                n = len(acc)
                row.update(paired_difference([r["accuracy"] for r in res[ref][k]][:n], acc))
                cell = format_interval(row) + (" **beats**" if row["beats"] else "")
            rows.append(row)
            lines.append(f"| {k} | {m} | {row['accuracy']:.3f} ± {row['std']:.3f} | {tr:.2f} | {cell} | {len(acc)} |")
    return "\n".join(lines), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10000, help="pretraining steps (earth-mae recipe; ~30 min on one thread)")
    ap.add_argument("--synthetic", type=int, default=300, help="synthetic chips added to pretraining")
    ap.add_argument("--seeds", type=int, default=50,
                    help="repeated splits for the linear probes (cheap; 140 chips give 40-chip test sets, and which 20 splits "
                         "are drawn moved pretrained - band mean/std by up to 0.04)")
    ap.add_argument("--views", choices=["resolution", "none"], default="resolution",
                    help="encoder features: all bands + the finest-resolution bands concatenated (modalities/earth/views.py), or all bands only")
    ap.add_argument("--scratch-seeds", type=int, default=20, help="splits on which the from-scratch model is trained (0: skip)")
    ap.add_argument("--scratch-steps", type=int, default=100)
    ap.add_argument("--scratch-lrs", default="3e-4,1e-3,3e-3",
                    help="from-scratch learning rates; the best on a validation split of the label pool (never test chips) is used")
    ap.add_argument("--ks", default="1,5,10")
    ap.add_argument("--test-per-class", type=int, default=4)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench-earth"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="which tables to compute; 'none': pretrain only (no tables, no results file)")
    ap.add_argument("--override", nargs="*", default=[], help="extra recipe overrides key=value")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    sections = [] if args.sections == "none" else args.sections.split(",")
    if set(sections) - set(SECTIONS):
        raise SystemExit(f"unknown --sections {sorted(set(sections) - set(SECTIONS))}; choose among {', '.join(SECTIONS)} or 'none'")
    ks = [int(k) for k in args.ks.split(",")]
    eurosat = shared_data()
    if not eurosat.exists():
        raise SystemExit(f"EuroSAT MS chips not found at {eurosat} (set DOMAINFM_SHARED_DATA)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # benchmarks take turns

    # 1. pretrain without labels on EuroSAT + synthetic (train-generator seed 0)
    syn_root = Path(write_synthetic(work / "synthetic-pretrain", args.synthetic, seed=0, with_sar=False)["root"]) if args.synthetic else None
    manifest = write_manifest(work / "pretrain.csv", eurosat, syn_root)
    # named by what shapes the encoder (steps, synthetic chips, overrides), not by --tag: the sections of one
    # study, run apart under their own tags, share one pretraining
    run_dir = work / "-".join([f"run-{args.steps}", f"syn{args.synthetic}", *(re.sub(r"[^\w.]+", "_", o) for o in args.override)])
    recipe = load_recipe("earth-mae", [f"data.manifest={manifest}", f"run.dir={run_dir}", f"train.steps={args.steps}",
                                       f"adapter.bands=[{','.join(S2_BANDS)}]", *args.override])
    t_pre = time.perf_counter()
    reused = (run_dir / "encoder" / "config.json").exists()  # a finished run in --work is reused (its summary says how it was trained)
    if not reused:
        pretrain(recipe, progress=False)
    pretrain_s = time.perf_counter() - t_pre
    if not sections:  # pretraining only (benchmarks/earth_pretrain_budget.py): the run folder is the result
        print(f"pretrained {run_dir} ({pretrain_s / 60:.1f} min)", flush=True)
        return
    enc = Encoder.from_pretrained(run_dir / "encoder")
    rand = random_twin(enc, seed=0)
    enc.adapter.config["embed_views"] = args.views  # the random twin shares this adapter, so both arms get the same views
    stats = enc.adapter.config["stats"]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}

    def dataset(cfg: dict, data: dict):
        a = EarthAdapter({**cfg, "stats": stats})
        return a, a.dataset(data, train=False)

    out: dict = {"pretrain": {"steps": args.steps, "synthetic": args.synthetic, "wall_s": pretrain_s, **summary}, "results": {}}
    md: list[str] = []
    commit = git_commit()  # "unknown" on a machine without git (a borrowed GPU's copy of the tree)
    name = "earth_eurosat" + (f"-{args.tag}" if args.tag else "")
    res_dir = REPO / "benchmarks" / "results"

    def write(done: bool) -> None:
        """Results so far (rewritten after every section, so a cut-short run still leaves its tables)."""
        out.update(commit=commit, seeds=args.seeds, scratch_seeds=args.scratch_seeds, ks=ks, args=vars(args), complete=done,
                   machine=f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
                   threads=torch.get_num_threads(), wall_s=time.perf_counter() - t0)
        res_dir.mkdir(parents=True, exist_ok=True)
        (res_dir / f"{name}.json").write_text(json.dumps(out, indent=2))
        cmd = "python benchmarks/earth_eurosat.py " + " ".join(sys.argv[1:])
        header = [f"# {name}", "", f"`{cmd}` — commit {commit[:10]}, {out['machine']}, {out['threads']} thread(s), "
                  f"wall {out['wall_s'] / 60:.1f} min{'' if done else ' so far (run not finished)'} "
                  + (f"(pretrained encoder reused from {run_dir}: {args.steps} steps, {summary.get('wall_s', float('nan')) / 60:.1f} min when trained)."
                     if reused else f"(pretraining {pretrain_s / 60:.1f} min, {args.steps} steps)."), "",
                  f"Linear probes: {args.seeds} repeated stratified splits (same splits and labelled chips for every method), "
                  f"pooling among {', '.join(POOLINGS)} and C by inner CV on the labelled chips (k=1: {POOLINGS[0]}, C=1); "
                  f"encoder features: {'band views (all bands + the finest-resolution bands, concatenated)' if args.views == 'resolution' else 'all bands'}; "
                  f"from-scratch supervised: first {args.scratch_seeds} splits, {args.scratch_steps} steps, lr tuned among "
                  f"{args.scratch_lrs} on a validation half of split 0's label pool (chosen: "
                  + ", ".join(f"{d} {v['lr']:g}" for d, v in out.get("scratch_lr", {}).items()) + ").", ""]
        (res_dir / f"{name}.md").write_text("\n".join(header + md))
        print(f"wrote {res_dir / name}.json/.md ({out['wall_s'] / 60:.1f} min)", flush=True)

    # 2. EuroSAT, 13 bands and the 4-band subset
    a13, ds13 = dataset({"preset": "eurosat_ms"}, {"root": str(eurosat), "labels": "folder"})
    labels = np.asarray([ds13.label(i) for i in range(len(ds13))])
    mc = enc.config
    if "eurosat13" in sections:
        scratch = scratch_arm(a13, mc, ds13, labels, args.test_per_class, args)
        feats = {"pretrained": pooled(enc, ds13), "random_init": pooled(rand, ds13), "band_mean_std": band_stats_features(ds13)}
        res = compare(feats, labels, ks, args.seeds, args.test_per_class, scratch)
        if scratch:
            out["scratch_lr"] = {"eurosat_13band": {"lr": scratch["lr"], "validation": scratch["tuning"]}}
        text, rows = table(res, ks)
        out["results"]["eurosat_13band"] = rows
        md += ["### EuroSAT MS, 13 bands", text, ""]
        print(md[-3], md[-2], sep="\n", flush=True)
        write(False)

    if "eurosat4" in sections:
        sub_manifest = write_manifest(work / "eurosat4.csv", eurosat, None)  # the EuroSAT rows alone, band order declared
        _, ds4 = dataset({"bands": RGBN, "preset": "eurosat_ms"}, {"manifest": str(sub_manifest), "labels": "folder"})
        ds4_labels = np.asarray([ds4.label(i) for i in range(len(ds4))])
        assert ds4[0].patches.shape[1] == 4 * 64 and (ds4_labels == labels).all()
        feats4 = {"pretrained": pooled(enc, ds4), "random_init": pooled(rand, ds4), "band_mean_std": band_stats_features(ds4)}
        res4 = compare(feats4, labels, ks, args.seeds, args.test_per_class)
        text, rows = table(res4, ks)
        out["results"]["eurosat_4band_rgbn"] = rows
        md += ["### EuroSAT MS, 4 bands (B02 B03 B04 B08) through the 13-band model", text, ""]
        print(md[-3], md[-2], sep="\n", flush=True)
        write(False)

    if "synthetic" in sections:  # 3. held-out synthetic scenes (generator seed 1: never seen in pretraining)
        syn_test = write_synthetic(work / "synthetic-test", 300, seed=1, with_sar=False)
        _, dss = dataset({}, syn_test)
        slabels = np.asarray([dss.label(i) for i in range(len(dss))])
        scratch_s = scratch_arm(a13, mc, dss, slabels, 15, args)
        feats_s = {"pretrained": pooled(enc, dss), "random_init": pooled(rand, dss), "band_mean_std": band_stats_features(dss)}
        res_s = compare(feats_s, slabels, ks, args.seeds, 15, scratch_s)
        if scratch_s:
            out.setdefault("scratch_lr", {})["synthetic_heldout"] = {"lr": scratch_s["lr"], "validation": scratch_s["tuning"]}
        text, rows = table(res_s, ks)
        out["results"]["synthetic_heldout"] = rows
        md += ["### Synthetic scenes (held-out generator seed, 6 classes, 15 test chips per class)", text, ""]
        print(md[-3], md[-2], sep="\n", flush=True)

    write(True)


if __name__ == "__main__":
    main()
