"""Does speech pretraining pay off with few labels on speakers it never heard?

Leave-one-speaker-out on FSDD (4 speakers x 10 digits x 50 takes). For each held-out speaker:
pretrain MAE / JEPA without labels on the other three speakers' recordings, then probe digits with
k labels per digit drawn from those three speakers (several seeds) and test on the held-out speaker.

Methods compared on the same labelled indices per (fold, k, seed):
- pretrained encoder, linear probe (standardised logistic regression, C and pooling by inner CV);
- the same architecture randomly initialised, same probe;
- the same architecture trained from scratch, supervised, on the same k labels (train accuracy shown);
- classical log-mel and MFCC statistics (mean/std over frames) with the same tuned probe.
Plus speaker verification: EER of the held-out speaker's takes against the others', cosine scoring.

    python benchmarks/speech_fsdd_loso.py                       # full grid (4 folds, MAE+JEPA, 5 seeds)
    python benchmarks/speech_fsdd_loso.py --folds theo --objectives mae   # one fold
Writes benchmarks/results/speech_fsdd_loso[-TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from foundation.finetune import train_from_scratch  # noqa: E402
from foundation.embed import embed_dataset  # noqa: E402
from foundation.engine import pretrain  # noqa: E402
from foundation.evaluate import random_twin  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.probes import few_shot_indices, format_interval, linear_probe, paired_difference  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from modalities.base import adapter_from_config  # noqa: E402
from modalities.speech.tasks import cosine_trials, equal_error_rate  # noqa: E402

DIGIT = re.compile(r"^(\d)_")
SPEAKER = re.compile(r"^\d_([a-z]+)_")
POOLINGS = ("meanstd", "mid_meanstd")


def default_data() -> Path:
    return Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data")) / "fsdd" / "recordings"


# -- classical baselines ------------------------------------------------------------------------------
def classical_features(dataset) -> dict[str, np.ndarray]:
    """Log-mel statistics (the adapter's own log-mel) and MFCC(+delta, delta-delta) statistics."""
    from torchaudio.compliance import kaldi
    from torchaudio.functional import compute_deltas

    cfg = dataset.config
    logmel, mfcc = [], []
    for i in range(len(dataset)):
        wave = dataset.waveform(i)
        spec = dataset.spectrogram(wave)
        logmel.append(torch.cat([spec.mean(0), spec.std(0)]).numpy())
        x = F.pad(wave, (0, max(0, int(cfg["sample_rate"] * 0.025) - wave.numel())))
        m = kaldi.mfcc(x.unsqueeze(0) * 32768, sample_frequency=float(cfg["sample_rate"]), num_ceps=13, num_mel_bins=23,
                       high_freq=float(cfg["high_freq"]), snip_edges=False, dither=0.0)
        full = torch.cat([m, compute_deltas(m.T.unsqueeze(0))[0].T, compute_deltas(compute_deltas(m.T.unsqueeze(0)))[0].T], 1)
        mfcc.append(torch.cat([full.mean(0), full.std(0)]).numpy())
    return {"logmel_stats": np.stack(logmel), "mfcc_stats": np.stack(mfcc)}


# -- one fold ----------------------------------------------------------------------------------------------
def run_fold(args, test_speaker: str, files: list[Path], work: Path) -> dict:
    speakers = np.array([SPEAKER.match(f.name).group(1) for f in files])
    digits = np.array([int(DIGIT.match(f.name).group(1)) for f in files])
    pool_idx, test_idx = np.flatnonzero(speakers != test_speaker), np.flatnonzero(speakers == test_speaker)
    fold_dir = work / f"fold-{test_speaker}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    manifest = fold_dir / "pretrain.csv"
    manifest.write_text("path\n" + "".join(f"{files[i]}\n" for i in pool_idx))
    all_manifest = fold_dir / "all.csv"
    all_manifest.write_text("path,digit\n" + "".join(f"{f},{d}\n" for f, d in zip(files, digits)))

    fold: dict = {"test_speaker": test_speaker, "n_pool": int(len(pool_idx)), "n_test": int(len(test_idx)), "objectives": {}}
    features: dict[str, dict[str, np.ndarray]] = {}
    encoders: dict[str, Encoder] = {}
    pretrain_info: dict = {}
    for obj in args.objectives:
        overrides = [f"data.manifest={manifest}", f"run.dir={fold_dir / obj}", f"run.seed={args.pretrain_seed}"] + list(args.override)
        if args.steps:
            overrides.append(f"train.steps={args.steps}")
        recipe = load_recipe(args.recipe_prefix + obj, overrides)
        if (fold_dir / obj).exists() and not args.resume:
            shutil.rmtree(fold_dir / obj)  # a stale run would be resumed by the engine, not retrained
        t0 = time.perf_counter()
        run_dir = pretrain(recipe, progress=args.progress, reuse_finished=args.resume)
        enc = Encoder.from_pretrained(run_dir / "encoder")
        summary = json.loads((run_dir / "summary.json").read_text())
        pretrain_info[obj] = {"wall_s": time.perf_counter() - t0, "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
                              "steps": summary["steps"], "model": recipe["model"], "recipe": recipe["name"]}
        encoders[obj] = enc
        print(f"[{test_speaker}] pretrained {obj}: loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} in {pretrain_info[obj]['wall_s']:.0f}s", flush=True)

    # Every encoder embeds with the preprocessing fitted on the pretraining speakers (no test audio).
    first = encoders[args.objectives[0]]
    adapter = adapter_from_config("speech", first.adapter.preprocessing())
    dataset = adapter.dataset({"manifest": str(all_manifest), "labels": "column:digit"}, train=False)
    labels = np.array([dataset.label(i) for i in range(len(dataset))])
    assert (labels == digits).all()
    for obj, enc in encoders.items():
        for name, e in ((obj, enc), (f"{obj}_random_init", random_twin(enc, seed=args.pretrain_seed))):
            ds = enc.adapter.dataset({"manifest": str(all_manifest), "labels": "column:digit"}, train=False)
            f = embed_dataset(e, ds, batch_size=64, device="cpu")
            features[name] = {p: f[p] for p in POOLINGS}
    classical = classical_features(dataset)
    for name, x in classical.items():
        features[name] = {"stats": x}

    # Few-label probes on paired splits.
    probes: dict = {name: {} for name in features}
    scratch: dict = {}
    for k in args.ks:
        for name in features:
            probes[name][k] = []
        scratch[k] = []
        for seed in range(args.seeds):
            pick = pool_idx[few_shot_indices(labels[pool_idx], k, seed)]
            for name, feats in features.items():
                r = linear_probe({p: v[pick] for p, v in feats.items()}, labels[pick], {p: v[test_idx] for p, v in feats.items()}, labels[test_idx], seed)
                probes[name][k].append(r)
            if args.scratch_steps:
                model_cfg = pretrain_info[args.objectives[0]]["model"]
                # objective-independent: cached so a later run with the other objective reuses it
                cache = fold_dir / f"scratch-k{k}-s{seed}-{args.scratch_steps}-{args.scratch_lr:g}-{model_cfg['width']}x{model_cfg['depth']}.json"
                if cache.exists():
                    scratch[k].append(json.loads(cache.read_text()))
                else:
                    train_ds = adapter.dataset({"manifest": str(all_manifest), "labels": "column:digit"}, train=True)
                    scratch[k].append(train_from_scratch(adapter, model_cfg, train_ds, pick, test_idx, labels, args.scratch_steps, args.scratch_lr, seed))
                    cache.write_text(json.dumps(scratch[k][-1]))
            print(f"[{test_speaker}] k={k} seed={seed}: " + ", ".join(f"{n} {probes[n][k][-1]['accuracy']:.3f}" for n in features)
                  + (f", scratch {scratch[k][-1]['accuracy']:.3f} (train {scratch[k][-1]['train_accuracy']:.2f})" if scratch[k] else ""), flush=True)
    fold["probes"] = {n: {str(k): v for k, v in d.items()} for n, d in probes.items()}
    fold["scratch"] = {str(k): v for k, v in scratch.items()}
    fold["pretrain"] = pretrain_info

    # Speaker verification on the held-out speaker's takes against everyone else's.
    eer = {}
    for name, feats in features.items():
        for p, x in feats.items():
            center = x[pool_idx].mean(0)
            scores, same = cosine_trials(x, speakers, test_speaker, center)
            eer[f"{name}/{p}"] = equal_error_rate(scores, same)
    fold["eer"] = eer
    return fold


def finished_fold(args, test_speaker: str, files: list[Path]) -> dict:
    """One fold's results, saved as soon as they exist: an interrupted grid loses only the fold in flight."""
    saved = args.work / f"fold-{test_speaker}" / f"result-{'+'.join(args.objectives)}-k{'_'.join(map(str, args.ks))}-s{args.seeds}.json"
    if args.resume and saved.exists():
        return json.loads(saved.read_text())
    fold = run_fold(args, test_speaker, files, args.work)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps(fold, default=float))
    tmp.replace(saved)
    return json.loads(saved.read_text())


# -- the table -----------------------------------------------------------------------------------------------
def summarise(folds: list[dict], objectives: list[str], ks: list[int]) -> tuple[list[dict], str]:
    """Paired differences over all (fold, seed) pairs: pretrained minus each baseline."""
    rows = []
    lines = ["| objective | k | pretrained | random init | scratch (train acc) | log-mel stats | MFCC stats | vs random [95% CI] | vs scratch [95% CI] | vs best classical [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for obj in objectives:
        for k in ks:
            key = str(k)
            acc = lambda name: np.concatenate([[r["accuracy"] for r in f["probes"][name][key]] for f in folds])  # noqa: E731
            pre, rnd = acc(obj), acc(f"{obj}_random_init")
            cls = {n: acc(n) for n in ("logmel_stats", "mfcc_stats")}
            best = max(cls, key=lambda n: cls[n].mean())  # best on test: favours the baseline, never us
            row = {"objective": obj, "k": k, "pretrained": pre.mean(), "random_init": rnd.mean(), "logmel_stats": cls["logmel_stats"].mean(),
                   "mfcc_stats": cls["mfcc_stats"].mean(), "best_classical": best, "n_pairs": len(pre),
                   "vs_random": paired_difference(pre, rnd), "vs_classical": paired_difference(pre, cls[best])}
            have_scratch = all(f["scratch"].get(key) for f in folds)
            if have_scratch:
                sc = np.concatenate([[r["accuracy"] for r in f["scratch"][key]] for f in folds])
                sc_tr = np.concatenate([[r["train_accuracy"] for r in f["scratch"][key]] for f in folds])
                row.update(scratch=sc.mean(), scratch_train=sc_tr.mean(), vs_scratch=paired_difference(pre, sc))
            rows.append(row)
            ci = lambda t: format_interval(t) + (" ✓" if t["beats"] else "")  # noqa: E731
            lines.append(f"| {obj} | {k} | {pre.mean():.3f} ± {pre.std():.3f} | {rnd.mean():.3f} | "
                         + (f"{row['scratch']:.3f} ({row['scratch_train']:.2f})" if have_scratch else "—")
                         + f" | {cls['logmel_stats'].mean():.3f} | {cls['mfcc_stats'].mean():.3f} | {ci(row['vs_random'])} | "
                         + (ci(row["vs_scratch"]) if have_scratch else "—") + f" | {ci(row['vs_classical'])} ({best}) |")
    eer_lines = ["", "| fold (held-out speaker) | " + " | ".join(sorted(folds[0]["eer"])) + " |", "|---|" + "---|" * len(folds[0]["eer"])]
    for f in folds:
        eer_lines.append(f"| {f['test_speaker']} | " + " | ".join(f"{f['eer'][n]:.3f}" for n in sorted(f["eer"])) + " |")
    return rows, "\n".join(lines + ["", "Speaker verification EER (cosine scoring; lower is better):"] + eer_lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--folds", nargs="+", default=None, help="held-out speakers (default: all)")
    ap.add_argument("--objectives", nargs="+", default=["mae", "jepa"])
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="override the recipe's pretraining steps")
    ap.add_argument("--recipe-prefix", default="speech-")
    ap.add_argument("--override", nargs="*", default=[], help="extra recipe key=value overrides")
    ap.add_argument("--pretrain-seed", type=int, default=0)
    ap.add_argument("--scratch-steps", type=int, default=150, help="0 skips the supervised-from-scratch baseline")
    ap.add_argument("--scratch-lr", type=float, default=5e-4)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_speech_loso")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--resume", action="store_true", help="reuse finished folds and continue interrupted pretraining runs in --work instead of restarting them")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = sorted(args.data.glob("*.wav"))
    if not files:
        raise SystemExit(f"no WAV files under {args.data}")
    speakers = sorted({SPEAKER.match(f.name).group(1) for f in files})
    folds = args.folds or speakers
    t0 = time.perf_counter()
    # Accuracy, not speed, is measured here: no timing lock, so MAE and JEPA grids may run side by side.
    results = [finished_fold(args, s, files) for s in folds]
    rows, table = summarise(results, args.objectives, args.ks)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "modalities/speech", "benchmarks", "recipes"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    meta = {"git_commit": commit, "dirty": dirty, "argv": sys.argv[1:] if argv is None else argv, "folds": folds, "seeds": list(range(args.seeds)),
            "ks": args.ks, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                                       "processor": platform.processor()}, "wall_s": time.perf_counter() - t0}
    name = "speech_fsdd_loso" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "folds": results}, indent=1, default=float))
    header = (f"# FSDD leave-one-speaker-out ({', '.join(folds)}; seeds {args.seeds}; k = {args.ks})\n\n"
              f"commit {commit}{' (dirty)' if dirty else ''}, {meta['machine']['platform']}, {args.threads} thread(s), wall {meta['wall_s']:.0f} s\n"
              f"command: python benchmarks/speech_fsdd_loso.py {' '.join(meta['argv'])}\n\n"
              "Accuracy on the held-out speaker(s); differences are pretrained minus baseline over paired (fold, seed) splits, "
              "✓ = 95% interval excludes zero.\n\n")
    (args.out / f"{name}.md").write_text(header + table + "\n")
    print(header + table)
    return {"meta": meta, "rows": rows, "folds": results}


if __name__ == "__main__":
    main()
