"""Does Earth-observation pretraining pay off with few labels? (issue 6 acceptance experiment)

Pretrain the earth-mae recipe, without labels, on the real EuroSAT MS chips (140, 13 bands, B8A
stored last) plus synthetic Sentinel-2 scenes (registry band order: one model, two band orders).
Then, on repeated stratified splits (test chips never labelled, never used for any choice), probe
with k = 1, 5, 10 labelled chips per class:
- pretrained encoder, linear probe (standardised logistic regression; C and pooling by inner CV);
- the same architecture randomly initialised, same probe;
- per-band mean/std of reflectance (26 features), same probe: the strong classical EO baseline;
- the same architecture trained from scratch, supervised, on the same k labels (flips/rotations,
  fixed budget, train accuracy reported).
Also: the 13-band model embeds 4-band (B02 B03 B04 B08) chips, pretrained vs random init on them;
and the same comparison on held-out synthetic scenes (a different generator seed).

    python benchmarks/earth_eurosat.py                     # full run (~25 min on 2 CPU cores)
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
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from foundation.finetune import train_from_scratch  # noqa: E402
from foundation.embed import embed_dataset  # noqa: E402
from foundation.engine import pretrain  # noqa: E402
from foundation.evaluate import random_twin  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.probes import few_shot_indices, linear_probe, paired_interval  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from modalities.earth.adapter import EarthAdapter  # noqa: E402
from modalities.earth.bands import S2_BANDS  # noqa: E402
from modalities.earth.synthetic import write_synthetic  # noqa: E402

POOLINGS = ("meanstd", "mean", "mid_meanstd")  # chosen by inner CV; the first is used when k=1 (no inner CV)
RGBN = ["B02", "B03", "B04", "B08"]


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
    out = embed_dataset(enc, ds, batch_size=64)
    return {p: out[p] for p in POOLINGS}


def split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeated stratified split: ``test_per_class`` test chips per class, the rest is the label pool."""
    rng = np.random.default_rng(10_000 + seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:test_per_class] for c in np.unique(labels)])
    pool = np.setdiff1d(np.arange(len(labels)), test)
    return pool, np.sort(test)


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
            row = {"k": k, "method": m, "accuracy": float(np.mean(acc)), "std": float(np.std(acc)), "train_accuracy": float(tr), "n": len(acc)}
            cell = ""
            if m != ref:
                n = len(acc)
                mean, lo, hi = paired_interval([r["accuracy"] for r in res[ref][k]][:n], acc)
                row.update(diff=mean, ci_low=lo, ci_high=hi, beats=bool(lo > 0))
                cell = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{' **beats**' if lo > 0 else ''}"
            rows.append(row)
            lines.append(f"| {k} | {m} | {row['accuracy']:.3f} ± {row['std']:.3f} | {tr:.2f} | {cell} | {len(acc)} |")
    return "\n".join(lines), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="pretraining steps (earth-mae recipe)")
    ap.add_argument("--synthetic", type=int, default=300, help="synthetic chips added to pretraining")
    ap.add_argument("--seeds", type=int, default=5, help="repeated splits for the linear probes")
    ap.add_argument("--scratch-seeds", type=int, default=5, help="splits on which the from-scratch model is trained (0: skip)")
    ap.add_argument("--scratch-steps", type=int, default=100)
    ap.add_argument("--scratch-lr", type=float, default=1e-3)
    ap.add_argument("--ks", default="1,5,10")
    ap.add_argument("--test-per-class", type=int, default=4)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench-earth"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--override", nargs="*", default=[], help="extra recipe overrides key=value")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
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
    run_dir = work / f"run-{args.steps}{'-' + args.tag if args.tag else ''}"
    recipe = load_recipe("earth-mae", [f"data.manifest={manifest}", f"run.dir={run_dir}", f"train.steps={args.steps}",
                                       f"adapter.bands=[{','.join(S2_BANDS)}]", *args.override])
    t_pre = time.perf_counter()
    if not (run_dir / "encoder" / "config.json").exists():
        pretrain(recipe, progress=False)
    pretrain_s = time.perf_counter() - t_pre
    enc = Encoder.from_pretrained(run_dir / "encoder")
    rand = random_twin(enc, seed=0)
    stats = enc.adapter.config["stats"]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}

    def dataset(cfg: dict, data: dict):
        a = EarthAdapter({**cfg, "stats": stats})
        return a, a.dataset(data, train=False)

    out: dict = {"pretrain": {"steps": args.steps, "synthetic": args.synthetic, "wall_s": pretrain_s, **summary}, "results": {}}
    md = []

    # 2. EuroSAT, 13 bands and the 4-band subset
    a13, ds13 = dataset({"preset": "eurosat_ms"}, {"root": str(eurosat), "labels": "folder"})
    labels = np.asarray([ds13.label(i) for i in range(len(ds13))])
    mc = enc.config
    scratch = None
    if args.scratch_seeds:
        scratch = {"seeds": args.scratch_seeds,
                   "run": lambda pick, test, seed: train_from_scratch(a13, mc, ds13, pick, test, labels, args.scratch_steps, args.scratch_lr, seed)}
    feats = {"pretrained": pooled(enc, ds13), "random_init": pooled(rand, ds13), "band_mean_std": band_stats_features(ds13)}
    res = compare(feats, labels, ks, args.seeds, args.test_per_class, scratch)
    text, rows = table(res, ks)
    out["results"]["eurosat_13band"] = rows
    md += ["### EuroSAT MS, 13 bands", text, ""]
    print(md[-3], md[-2], sep="\n", flush=True)

    import tempfile
    sub_manifest = Path(tempfile.mkdtemp()) / "eurosat4.csv"
    with open(sub_manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "preset"])
        for p in sorted(eurosat.rglob("*.tif")):
            w.writerow([str(p), "eurosat_ms"])
    _, ds4 = dataset({"bands": RGBN, "preset": "eurosat_ms"}, {"manifest": str(sub_manifest), "labels": "folder"})
    ds4_labels = np.asarray([ds4.label(i) for i in range(len(ds4))])
    assert ds4[0].patches.shape[1] == 4 * 64 and (ds4_labels == labels).all()
    feats4 = {"pretrained": pooled(enc, ds4), "random_init": pooled(rand, ds4), "band_mean_std": band_stats_features(ds4)}
    res4 = compare(feats4, labels, ks, args.seeds, args.test_per_class)
    text, rows = table(res4, ks)
    out["results"]["eurosat_4band_rgbn"] = rows
    md += ["### EuroSAT MS, 4 bands (B02 B03 B04 B08) through the 13-band model", text, ""]
    print(md[-3], md[-2], sep="\n", flush=True)

    # 3. held-out synthetic scenes (generator seed 1: never seen in pretraining)
    syn_test = write_synthetic(work / "synthetic-test", 300, seed=1, with_sar=False)
    _, dss = dataset({}, syn_test)
    slabels = np.asarray([dss.label(i) for i in range(len(dss))])
    scratch_s = None
    if args.scratch_seeds:
        scratch_s = {"seeds": args.scratch_seeds,
                     "run": lambda pick, test, seed: train_from_scratch(a13, mc, dss, pick, test, slabels, args.scratch_steps, args.scratch_lr, seed)}
    feats_s = {"pretrained": pooled(enc, dss), "random_init": pooled(rand, dss), "band_mean_std": band_stats_features(dss)}
    res_s = compare(feats_s, slabels, ks, args.seeds, 15, scratch_s)
    text, rows = table(res_s, ks)
    out["results"]["synthetic_heldout"] = rows
    md += ["### Synthetic scenes (held-out generator seed, 6 classes, 15 test chips per class)", text, ""]
    print(md[-3], md[-2], sep="\n", flush=True)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    out.update(commit=commit, seeds=args.seeds, scratch_seeds=args.scratch_seeds, ks=ks, args=vars(args),
               machine=f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
               threads=torch.get_num_threads(), wall_s=time.perf_counter() - t0)
    name = "earth_eurosat" + (f"-{args.tag}" if args.tag else "")
    res_dir = REPO / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"{name}.json").write_text(json.dumps(out, indent=2))
    cmd = "python benchmarks/earth_eurosat.py " + " ".join(sys.argv[1:])
    header = [f"# {name}", "", f"`{cmd}` — commit {commit[:10]}, {out['machine']}, {out['threads']} thread(s), "
              f"wall {out['wall_s'] / 60:.1f} min (pretraining {pretrain_s / 60:.1f} min, {args.steps} steps).", "",
              f"Linear probes: {args.seeds} repeated stratified splits (same splits and labelled chips for every method); "
              f"from-scratch supervised: first {args.scratch_seeds} of them, {args.scratch_steps} steps, lr {args.scratch_lr}.", ""]
    (res_dir / f"{name}.md").write_text("\n".join(header + md))
    print(f"wrote {res_dir / name}.json/.md in {out['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
