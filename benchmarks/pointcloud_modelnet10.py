"""ModelNet10 acceptance: does Point-MAE pretraining pay off with few labels?

Protocol (DESIGN "How we prove a claim"):
- A stratified hold-out (``--test-fraction``) of the 3,991 shapes is the test set; pretraining sees
  only the other shapes, without labels. Test shapes never touch pretraining, probe tuning or
  early stopping.
- Pretrained encoder vs the same architecture randomly initialised (frozen features, standardised;
  pooling and regularisation chosen by inner CV on the training labels, the same way for both), and
  vs the same architecture trained from scratch, supervised, on the same labelled shapes with the
  adapter's augmentation (its own tuned lr/steps; its training accuracy is reported).
- The field's classical baseline on the same preprocessed points: hand-made global descriptors (D2/A3/D3
  shape distributions, radial histogram, moments, an 8^3 occupancy grid; ``descriptors.py``), probed
  like the encoders' features (the descriptor block chosen by the same inner CV).
- k = 10 labels per class over ``--seeds`` paired seeds: overall accuracy (OA) and class-balanced
  accuracy (mAcc); a win is a paired 95% t-interval above zero.
- Linear SVM on all training labels (as the field reports), OA and mAcc, with a paired bootstrap
  95% interval over the test shapes (one split: the interval is over test shapes, not splits).
- The field's few-shot episodes (5/10-way, 10/20-shot, 20 queries, 10 episodes; ``--episode-seed`` draws others) on the test split:
  a linear SVM per episode on each encoder's frozen features, and a from-scratch model trained on
  each episode's support set (the same episodes for all three: a paired t-interval over episodes).
- Optionally (``--scratch few,episodes,all``) a from-scratch model on all training labels beside
  the SVM, given ``--sup-steps-all`` steps (20 epochs by default, so that it fits its labels).
- The from-scratch trainings (45 by default) are most of the wall time; ``--procs`` spreads them
  over cores, one thread each. ``--reuse-scratch PREV.json`` takes those a previous run of the same
  protocol already recorded (checked: the same shapes, split and architecture, by a fingerprint, or
  for older files the same pretrained results; the same from-scratch settings; and the first reused
  job of each kind retrained and matched exactly), so a run can be extended, e.g. from 5 to 10
  episodes, or a longer pretraining of the same architecture evaluated, without hours of retraining.

The deterministic evaluation view of every shape is grouped once (FPS + kNN) and reused by every
encoder and every probe, so each encoder costs one forward pass over the data.

    OMP_NUM_THREADS=1 python benchmarks/pointcloud_modelnet10.py            # full run (~50 min on 1 thread, plus pretraining)
    python benchmarks/pointcloud_modelnet10.py --quick                      # smoke run (minutes)

Writes ``benchmarks/results/pointcloud_modelnet10[-tag].json`` and ``.md`` (git commit, seeds,
machine, wall time) and, unless ``--no-export``, the pretrained encoder to ``--work/encoder``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from foundation.engine import pretrain, warmup_cosine  # noqa: E402
from foundation.evaluate import random_twin  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.probes import few_shot_indices, paired_difference  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from foundation.tokens import collate  # noqa: E402
from foundation.trunk import masked_max, masked_max_mean, masked_mean_std  # noqa: E402
from modalities.base import adapter_class, sample_seed  # noqa: E402
from modalities.pointcloud.descriptors import classical_features  # noqa: E402
from foundation.probes import accuracies  # noqa: E402
from modalities.pointcloud.tasks import few_shot_episodes, few_shot_eval, probe  # noqa: E402

POOLINGS = ("max", "meanstd", "maxmean", "mid_meanstd", "layers_max")
FINETUNE = "ft-"  # job kinds with this prefix fine-tune the pretrained encoder instead of training from scratch
FROZEN = ("pretrained", "random_init", "classical")  # methods probed on frozen features; classical: hand-made descriptors


def shared_data() -> Path:
    return Path(os.environ.get("DOMAINFM_SHARED_DATA", REPO.parent / "shared" / "data")) / "pointcloud" / "modelnet10"


def split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(labels))
    pool, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    return np.sort(pool), np.sort(test)


def labelled_shapes(root: Path, subset: int = 0) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Every ``.pcd`` under ``root`` in sorted order, its class name (the parent folder), the sorted
    class list and integer labels; ``subset`` keeps that many shapes, stratified (smoke runs). The
    split, the manifests and the CI test all index this one listing."""
    files = sorted(str(p) for p in root.rglob("*.pcd"))
    if not files:
        raise SystemExit(f"no .pcd files under {root}")
    names = [Path(f).parent.name for f in files]
    if subset:
        keep, _ = train_test_split(np.arange(len(files)), train_size=subset, stratify=names, random_state=0)
        keep = np.sort(keep)
        files, names = [files[i] for i in keep], [names[i] for i in keep]
    classes = sorted(set(names))
    return files, names, classes, np.array([classes.index(n) for n in names])


def write_manifest(path: Path, files: list[str], labels: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(zip(files, labels))
    return path


def pretrained_encoder(args, manifest: Path) -> tuple[Encoder, dict]:
    run_dir = args.work / "pretrain"
    overrides = [f"data.manifest={manifest}", "data.root=", f"run.dir={run_dir}", f"run.seed={args.pretrain_seed}",
                 f"train.steps={args.steps}", "data.num_workers=1"] + args.override
    recipe = load_recipe(args.recipe, overrides)
    if (run_dir / "encoder" / "config.json").exists():  # reuse a finished pretraining only if it is this one
        import yaml

        done = yaml.safe_load((run_dir / "recipe.yaml").read_text())
        for key in ("objective", "adapter", "model", "train", "masking", recipe["objective"]):
            if done.get(key) != recipe.get(key):
                raise SystemExit(f"{run_dir} holds a pretraining with another {key!r} ({done.get(key)} vs {recipe.get(key)}): "
                                 "use another --work or delete it")
    else:
        pretrain(recipe, progress=args.progress)
    summary = json.loads((run_dir / "summary.json").read_text())
    return Encoder.from_pretrained(run_dir / "encoder"), {"recipe": recipe, "summary": summary}


@torch.no_grad()
def embed(encoder: Encoder, views: list, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Frozen features of the cached evaluation views under every pooling in POOLINGS, one forward pass.

    max / meanstd / maxmean (Point-MAE's probe) pool the final tokens; mid_meanstd a middle block;
    layers_max concatenates the max over tokens of every block (layer-normed).
    """
    encoder.eval()
    out: dict[str, list] = {}
    for s in range(0, len(views), batch_size):
        batch = collate(views[s: s + batch_size])
        enc = encoder(batch, return_layers=True)
        pad, tok = enc.padding, enc.tokens
        layers = [torch.nn.functional.layer_norm(h, h.shape[-1:]) for h in enc.layers]
        mid = layers[len(layers) // 2]
        feats = {"max": masked_max(tok, pad), "meanstd": masked_mean_std(tok, pad),
                 "maxmean": masked_max_mean(tok, pad),
                 "mid_meanstd": masked_mean_std(mid, pad),
                 "layers_max": torch.cat([masked_max(h, pad) for h in layers], -1)}
        for k in POOLINGS:
            out.setdefault(k, []).append(feats[k].float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def paired_bootstrap(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, metric: str, n: int = 2000,
                     seed: int = 0) -> dict:
    """Difference a - b of OA or mAcc on the same test shapes, with a paired bootstrap 95% interval."""
    def score(idx, pred):
        r = accuracies(y[idx], pred[idx])
        return r[metric]

    rng = np.random.default_rng(seed)
    full = np.arange(len(y))
    diffs = []
    for _ in range(n):
        idx = rng.choice(full, len(full), replace=True)
        diffs.append(score(idx, pred_a) - score(idx, pred_b))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    d = score(full, pred_a) - score(full, pred_b)
    return {"diff": float(d), "ci_low": float(lo), "ci_high": float(hi), "beats": bool(lo > 0)}


def probe_pooled(kind: str, feats: dict, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
                 poolings: tuple[str, ...] | None = None) -> dict:
    """Pick the pooling (or descriptor block) among ``poolings`` (default: every entry of ``feats``) by inner
    CV on the training labels (``probe`` tunes C inside), then score on test."""
    poolings = poolings or tuple(feats)
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    best, best_cv = poolings[0], -1.0
    if len(poolings) > 1:
        folds = int(min(5, np.bincount(y[tr]).min()))
        for p in poolings:
            model = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=5000, dual="auto"))
            cv = cross_val_score(model, feats[p][tr], y[tr], cv=StratifiedKFold(folds, shuffle=True, random_state=0)).mean()
            if cv > best_cv:
                best, best_cv = p, cv
    out = probe(kind, feats[best][tr], y[tr], feats[best][te], y[te], return_predictions=True)
    out["pooling"] = best
    return out


class Classifier(torch.nn.Module):
    """The encoder plus a linear head on [max, mean] of its tokens: the from-scratch supervised baseline.

    The pooled features are batch-normalised before the linear layer (as the probes standardise
    them): at random init they differ little between shapes, and without it the head's logits
    collapse to uniform and training stalls at chance (training accuracy 0.1-0.3 in pilots).
    """

    def __init__(self, encoder: Encoder, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Sequential(torch.nn.BatchNorm1d(2 * encoder.width), torch.nn.Linear(2 * encoder.width, classes))

    def forward(self, batch) -> torch.Tensor:
        enc = self.encoder(batch)
        return self.head(masked_max_mean(enc.tokens, enc.padding))


def supervised_scratch(adapter, model_cfg: dict, dataset, views: list, labels: np.ndarray, tr: np.ndarray, te: np.ndarray,
                       steps: int, batch_size: int, lr: float, seed: int, init_state: dict | None = None,
                       precision: str = "fp32") -> dict:
    """Train the same architecture from random init on the labelled shapes only, with the adapter's
    augmentation (a fresh augmented view of each shape at every step); AdamW, warm-up + cosine.
    ``precision="bf16"`` runs the forward pass under bf16 autocast (as the GPU pretraining does), about
    1.7x faster on CPUs with AMX/AVX-512 bf16, so larger budgets fit; scoring stays in float32.
    Scored on the cached evaluation views; its training accuracy shows whether it fits its labels.
    With ``init_state`` (the pretrained encoder's weights) the same training fine-tunes the pretrained
    encoder: the same shapes, augmented views, steps and head, so the two differ only in the start."""
    torch.manual_seed(seed)
    model = Classifier(Encoder.build(adapter, model_cfg), int(labels.max()) + 1)
    if init_state is not None:
        model.encoder.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps // 10), steps, 0.01))
    rng = np.random.default_rng(seed)
    model.train()
    for step in range(steps):
        pick = rng.choice(tr, size=min(batch_size, len(tr)), replace=False)
        batch = collate([dataset[(int(i), sample_seed(seed, step, int(i)))] for i in pick])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(batch), torch.as_tensor(labels[pick]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()

    @torch.no_grad()
    def predict(idx):
        return np.concatenate([model(collate([views[int(i)] for i in idx[s: s + 128]])).argmax(-1).numpy()
                               for s in range(0, len(idx), 128)])

    out = accuracies(labels[te], predict(te))
    out["train_acc"] = float((predict(tr) == labels[tr]).mean())
    out["final_loss"] = float(loss.detach())
    return out


_SCRATCH: dict = {}  # what the forked workers of run_scratch read; set before they start


def _scratch_job(job: tuple) -> dict:
    kind, setting, tr, te, labels, seed = job
    torch.set_num_threads(1)
    c = _SCRATCH
    finetune = kind.startswith(FINETUNE)  # "ft-few", "ft-episode": the pretrained encoder as the start
    out = supervised_scratch(c["adapter"], c["model_cfg"], c["dataset"], c["views"], labels, tr, te,
                             (c["ft_steps"] or c["steps"][kind.removeprefix(FINETUNE)]) if finetune else c["steps"][kind],
                             c["batch"], c["ft_lr"] if finetune else c["lr"], seed,
                             init_state=c["pretrained_state"] if finetune else None, precision=c["precision"])
    print(f"{'fine-tune' if finetune else 'scratch'} {kind} {setting} {seed}: OA {out['oa']:.3f}, "
          f"train acc {out['train_acc']:.3f}", flush=True)
    return out


def run_scratch(jobs: list[tuple], context: dict, procs: int) -> list[dict]:
    """Train the from-scratch baselines ``jobs`` = (label set, setting, train idx, test idx, labels, seed), each on
    one thread, in ``procs`` forked processes. They are independent and are most of the benchmark's
    time (40 few-shot episodes each train a model), so they are the part worth spreading over cores;
    forking shares the grouped views and the dataset with the workers without pickling them."""
    _SCRATCH.clear()
    _SCRATCH.update(context)
    if procs <= 1 or len(jobs) <= 1:
        return [_scratch_job(j) for j in jobs]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(procs) as pool:
        return pool.map(_scratch_job, jobs, chunksize=1)


EPISODE_SETTINGS = ("5w10s", "5w20s", "10w10s", "10w20s")  # the field's (Point-BERT, Point-MAE)


def episode_setting(name: str) -> tuple[int, int]:
    """(way, shot) of a setting named like ``5w20s``."""
    way, shot = name.removesuffix("s").split("w")
    return int(way), int(shot)


def episode_labels(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels 0..way-1 for an episode's classes (-1 elsewhere), so its from-scratch model has ``way`` outputs."""
    y = np.full(len(labels), -1)
    for j, c in enumerate(classes):
        y[labels == c] = j
    return y


def recorded_scratch(prev: dict, kind: str, setting: str, seed: int) -> dict | None:
    """The from-scratch result of job (kind, setting, seed) as a previous results file recorded it, or None."""
    arm = "finetuned" if kind.startswith(FINETUNE) else "scratch_supervised"
    kind = kind.removeprefix(FINETUNE)
    if kind == "few":
        rows = prev.get("few_label", {}).get(arm, [])
    elif kind == "all":
        rows = prev.get("svm_all_labels", {}).get(arm, {}).get("seeds", [])
    else:
        rec = prev.get("episodes", {}).get(arm, {}).get(setting, {})
        # older files keep per-episode accuracies and only the setting's mean training accuracy; giving
        # every reused episode that mean keeps the merged mean exact
        rows = rec.get("runs") or [{"oa": a, "train_acc": rec["train_acc"]} for a in rec.get("accs", [])]
    return dict(rows[seed]) if seed < len(rows) else None


def fine_tuned_in(prev: dict) -> bool:
    """Whether a results file holds fine-tuned runs, whose reuse depends on its fine-tuning flags and its encoder."""
    return "finetuned" in prev["few_label"] or "finetuned" in prev["episodes"]


def check_settings(prev: dict, path: Path, args, parser: argparse.ArgumentParser) -> None:
    """Refuse to mix from-scratch results trained with other settings; runs before anything else, so a
    wrong flag stops the run at once rather than after the probes."""
    old = vars(parse(parser, prev["meta"]["argv"]))
    keys = ["sup_steps", "sup_batch", "sup_lr", "sup_precision", "k", "test_fraction", "episodes", "episode_seed", "subset"]
    keys += ["sup_steps_all"] * ("scratch_supervised" in prev["svm_all_labels"])  # only where it trained those models
    keys += ["ft_lr", "ft_steps"] * fine_tuned_in(prev)
    for key in keys:
        if old[key] != getattr(args, key):
            raise SystemExit(f"--reuse-scratch {path}: it ran with {key}={old[key]}, this run with {getattr(args, key)}")


def protocol_fingerprint(files: list[str], labels: np.ndarray, pool: np.ndarray, test: np.ndarray, model_cfg: dict) -> str:
    """What the from-scratch results depend on besides the training flags (``check_settings``): the shapes
    (class folder and file name, not where the data sits), their labels, the split (which fixes the k-shot
    draws and the episodes) and the architecture with its preprocessing. Not the pretrained weights or
    objective: a longer pretraining of the same architecture reuses the same from-scratch results."""
    h = hashlib.sha256("\n".join(f"{Path(f).parent.name}/{Path(f).name}" for f in files).encode())
    for a in (labels, pool, test):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    h.update(json.dumps({k: model_cfg.get(k) for k in ("modality", "adapter", "encoder")}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def check_reusable(prev: dict, path: Path, now: dict) -> None:
    """Refuse to mix from-scratch results of another protocol. Files that carry a protocol fingerprint
    must match it; older files, and files with fine-tuned results (which depend on the pretrained weights),
    must also have probed the same pretrained features on the same label sets (their pretrained results
    equal this run's exactly, which pins the encoder and the split)."""
    if "protocol" in prev and "protocol" in now:
        if prev["protocol"] != now["protocol"]:
            raise SystemExit(f"--reuse-scratch {path}: another protocol (shapes, split or architecture): "
                             f"fingerprint {prev['protocol']}, this run {now['protocol']}")
        if not fine_tuned_in(prev):
            return
    same = (prev["n_shapes"], prev["n_pool"], prev["n_test"]) == (now["n_shapes"], now["n_pool"], now["n_test"])
    same &= [r["oa"] for r in prev["few_label"]["pretrained"]] == [r["oa"] for r in now["few_label"]["pretrained"]]
    same &= all(prev["episodes"].get("pretrained", {}).get(s, {}).get("accs") == e.get("accs")
                for s, e in now["episodes"].get("pretrained", {}).items() if "accs" in prev["episodes"].get("pretrained", {}).get(s, {}))
    if not same:
        raise SystemExit(f"--reuse-scratch {path}: its pretrained results differ from this run's (another encoder, split or episodes)")


def reuse_scratch(jobs: list[tuple], prevs: list[dict], check: int) -> tuple[dict[int, dict], list[int]]:
    """Which jobs previous runs already answered (index -> the record of the first file that has it) and
    which to train. The first ``check`` reused jobs of each kind are trained anyway, to show the training
    reproduces them."""
    reused, train, checked = {}, [], {}
    for i, (kind, setting, _, _, _, seed) in enumerate(jobs):
        rec = next((r for r in (recorded_scratch(p, kind, setting, seed) for p in prevs) if r is not None), None)
        if rec is not None:
            reused[i] = {**rec, "reused": True}
        if rec is None or checked.get(kind, 0) < check:
            train.append(i)
            checked[kind] = checked.get(kind, 0) + (rec is not None)
    return reused, train


def confirm_reproduced(jobs: list[tuple], reused: dict[int, dict], trained: dict[int, dict]) -> int:
    """Retrained jobs must match their recorded results exactly (single-threaded training is deterministic);
    otherwise mixing the two runs would not be one protocol."""
    n = 0
    for i in set(reused) & set(trained):
        old, new = reused[i], trained[i]
        for key in ("oa", "final_loss"):
            if key in old and abs(old[key] - new[key]) > 1e-9:
                raise SystemExit(f"--reuse-scratch: job {jobs[i][:2] + jobs[i][5:]} gave {key} {new[key]} now, "
                                 f"{old[key]} before: not reproducible, retrain everything")
        n += 1
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=shared_data())
    ap.add_argument("--recipe", default="pointcloud-mae")
    ap.add_argument("--override", nargs="*", default=[], help="extra recipe overrides key=value")
    ap.add_argument("--steps", type=int, default=400, help="pretraining steps")
    ap.add_argument("--test-fraction", type=float, default=0.4)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pretrain-seed", type=int, default=0)
    ap.add_argument("--sup-steps", type=int, default=600,
                    help="optimiser steps of each from-scratch supervised run (150 left it at training accuracy 0.84; 600 fits its labels, 0.98)")
    ap.add_argument("--sup-batch", type=int, default=16)
    ap.add_argument("--sup-lr", type=float, default=1e-3, help="tuned on held-out training-pool shapes (5e-4, 1e-3)")
    ap.add_argument("--sup-precision", choices=("fp32", "bf16"), default="fp32",
                    help="the from-scratch (and fine-tuning) trainings' precision: bf16 autocast is the GPU pretraining's and "
                         "about 1.7x faster on CPUs with bf16 units")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--episode-seed", type=int, default=0,
                    help="seed of the episode draws: another seed gives fresh episodes, e.g. to retest a result on "
                         "episodes that did not suggest it")
    ap.add_argument("--episode-settings", default="5w10s,5w20s,10w10s,10w20s",
                    help="which of the field's episode settings to run (way w shot s), comma-separated")
    ap.add_argument("--scratch", default="few,episodes",
                    help="which label sets get a from-scratch supervised model: few (k per class), episodes, all "
                         "(all training labels, beside the SVM), comma-separated")
    ap.add_argument("--finetune", default="",
                    help="label sets (few, episodes) on which the pretrained encoder is also fine-tuned end-to-end with the "
                         "from-scratch model's training (same shapes, views, steps, head), comma-separated")
    ap.add_argument("--ft-lr", type=float, default=5e-4, help="learning rate of that fine-tuning")
    ap.add_argument("--ft-steps", type=int, default=0,
                    help="its optimiser steps (0: the from-scratch model's own; fewer keep the comparison's budget on the "
                         "from-scratch side)")
    ap.add_argument("--sup-steps-all", type=int, default=3000,
                    help="steps of the from-scratch model on all training labels (600 steps is only 4 epochs of 2,394 shapes)")
    ap.add_argument("--sup-seeds-all", type=int, default=0, help="its seeds (0: --seeds)")
    ap.add_argument("--scratch-episodes", type=int, default=0,
                    help="train the from-scratch model on only the first N episodes of each setting (0: all; each costs "
                         "a training run, about 5 min on one thread)")
    ap.add_argument("--procs", type=int, default=1, help="processes for the from-scratch trainings (one thread each)")
    ap.add_argument("--skip-scratch", action="store_true", help="no from-scratch supervised baseline (--scratch '')")
    ap.add_argument("--skip-episodes", action="store_true", help="leave out the few-shot episode protocol (ablations)")
    ap.add_argument("--subset", type=int, default=0, help="use only this many shapes (smoke runs)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 pretraining steps, 600 shapes, 2 seeds")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_pointcloud_modelnet10")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--pretrain-only", action="store_true",
                    help="stop after pretraining (e.g. pretrain on a lent GPU; a later run with the same --work, "
                         "recipe and overrides reuses the encoder and evaluates)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--reuse-scratch", type=Path, nargs="+", default=None,
                    help="previous results files of this benchmark: take their from-scratch results instead of retraining them "
                         "(the first file that has a job wins)")
    ap.add_argument("--reuse-check", type=int, default=1,
                    help="retrain this many of the reused jobs of each kind and require identical results")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments with ``--quick``'s settings applied (also used to read a previous run's settings back)."""
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.sup_steps, args.episodes = 40, 2, 30, 3
        args.subset = args.subset or 600
        args.sup_steps_all = min(args.sup_steps_all, 30)
        args.tag = args.tag or "quick"
        args.work = args.work.with_name(args.work.name + "-quick")
    return args


def main(argv: list[str] | None = None) -> dict:
    ap = build_parser()
    args = parse(ap, argv)
    args.scratch = set() if args.skip_scratch else {a for a in args.scratch.split(",") if a}
    if args.scratch - {"few", "episodes", "all"}:
        ap.error(f"--scratch: unknown label sets {sorted(args.scratch - {'few', 'episodes', 'all'})}")
    args.finetune = {a for a in args.finetune.split(",") if a}
    if args.finetune - {"few", "episodes"}:
        ap.error(f"--finetune: unknown label sets {sorted(args.finetune - {'few', 'episodes'})}")
    args.episode_settings = [s for s in args.episode_settings.split(",") if s]
    if set(args.episode_settings) - set(EPISODE_SETTINGS):
        ap.error(f"--episode-settings: unknown settings {sorted(set(args.episode_settings) - set(EPISODE_SETTINGS))}, "
                 f"choose from {', '.join(EPISODE_SETTINGS)}")
    prevs = [json.loads(path.read_text()) for path in args.reuse_scratch or ()]  # read once, checked twice
    for path, prev in zip(args.reuse_scratch or (), prevs):
        check_settings(prev, path, args, ap)
    torch.set_num_threads(args.threads)
    # the code that runs is the code at the start: a run takes hours, and commits may land meanwhile
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "modalities/pointcloud", "benchmarks/pointcloud_modelnet10.py",
                                 "recipes"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    t0 = time.perf_counter()
    # An accuracy experiment, not a timing: it does not wait for the timed-benchmark lock (its
    # timings are reported with the machine's load average, for orientation only).
    result = run(args, prevs)
    if args.pretrain_only:
        return result
    result["meta"] = {"git_commit": commit, "dirty": dirty, "argv": sys.argv[1:] if argv is None else argv,
                      "seeds": list(range(args.seeds)), "k": args.k, "episode_seed": args.episode_seed, "pretrain_steps": args.steps, "sup_steps": args.sup_steps,
                      "scratch": sorted(args.scratch), "sup_steps_all": args.sup_steps_all,
                      "finetune": sorted(args.finetune), "ft_lr": args.ft_lr, "ft_steps": args.ft_steps,
                      "sup_batch": args.sup_batch, "sup_lr": args.sup_lr, "sup_precision": args.sup_precision,
                      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                                  "load_avg_end": os.getloadavg()}, "wall_s": time.perf_counter() - t0}
    name = "pointcloud_modelnet10" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    table = format_table(result)
    (args.out / f"{name}.md").write_text(table + "\n")
    print(table)
    return result


def run(args, prevs: list[dict] | None = None) -> dict:
    """The benchmark; ``prevs`` are the ``--reuse-scratch`` files, already read and checked by ``check_settings``."""
    adapter_cls = adapter_class("pointcloud")
    files, names, classes, labels = labelled_shapes(args.data, args.subset)
    pool, test = split(labels, args.test_fraction)
    manifest = write_manifest(args.work / "all.csv", files, names)
    pre_manifest = write_manifest(args.work / "pretrain.csv", [files[i] for i in pool], [names[i] for i in pool])
    t = time.perf_counter()
    encoder, info = pretrained_encoder(args, pre_manifest)
    if args.pretrain_only:
        print(f"pretrained: {args.work / 'pretrain'}: {info['summary']}", flush=True)
        return {}
    timings = {"pretrain_s": info["summary"].get("wall_s", time.perf_counter() - t)}
    adapter = encoder.adapter
    model_cfg = dict(encoder.config)
    protocol = protocol_fingerprint(files, labels, pool, test, model_cfg)
    eval_ds = adapter.dataset({"manifest": str(manifest), "labels": "column:label"}, train=False)
    assert list(eval_ds.classes) == classes and [eval_ds.label(i) for i in range(len(eval_ds))] == labels.tolist()
    t = time.perf_counter()
    views = [eval_ds[i] for i in range(len(eval_ds))]  # grouped once, shared by every encoder and probe
    timings["group_s"] = time.perf_counter() - t
    t = time.perf_counter()
    feats = {"pretrained": embed(encoder, views), "random_init": embed(random_twin(encoder, seed=args.pretrain_seed), views)}
    timings["embed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    feats["classical"] = classical_features([eval_ds.points(i)[0] for i in range(len(eval_ds))])  # the same preprocessed points
    timings["classical_s"] = time.perf_counter() - t

    # -- k labels per class, paired seeds ------------------------------------------------------
    t = time.perf_counter()
    few: dict[str, list[dict]] = {m: [] for m in FROZEN}
    scratch_jobs = []  # (label set, setting, train idx, test idx, labels, seed): trained together at the end
    for seed in range(args.seeds):
        tr = pool[few_shot_indices(labels[pool], args.k, seed)]
        for m in FROZEN:
            row = probe_pooled("linear", feats[m], labels, tr, test)
            row.pop("pred")
            few[m].append(row)
        if "few" in args.scratch:
            scratch_jobs.append(("few", "", tr, test, labels, seed))
        if "few" in args.finetune:
            scratch_jobs.append((FINETUNE + "few", "", tr, test, labels, seed))
        print(f"seed {seed}: " + ", ".join(f"{m} {few[m][-1]['oa']:.3f}" for m in few), flush=True)
    timings["few_label_s"] = time.perf_counter() - t

    # -- linear SVM on all training labels -------------------------------------------------------
    t = time.perf_counter()
    svm = {m: probe_pooled("svm", feats[m], labels, pool, test) for m in FROZEN}
    svm_pred = {m: r.pop("pred") for m, r in svm.items()}
    svm_cmp = {metric: paired_bootstrap(labels[test], svm_pred["pretrained"], svm_pred["random_init"], metric)
               for metric in ("oa", "macc")}  # keyed by metric alone (as results files before the classical rows)
    svm_cmp.update({f"classical-{metric}": paired_bootstrap(labels[test], svm_pred["pretrained"], svm_pred["classical"], metric)
                    for metric in ("oa", "macc")})
    if "all" in args.scratch:
        scratch_jobs += [("all", "", pool, test, labels, seed) for seed in range(args.sup_seeds_all or args.seeds)]
    timings["svm_s"] = time.perf_counter() - t

    # -- the field's few-shot episodes on the test split (pooling chosen on the training split) --
    t = time.perf_counter()
    episodes = {m: {} for m in (() if args.skip_episodes else FROZEN)}
    arms = ["episode"] * ("episodes" in args.scratch) + [FINETUNE + "episode"] * ("episodes" in args.finetune)
    for setting in () if args.skip_episodes else args.episode_settings:
        way, shot = episode_setting(setting)
        try:  # drawn once: every frozen method and the from-scratch models see the same episodes
            drawn = few_shot_episodes(labels[test], way, shot, episodes=args.episodes, seed=args.episode_seed)
        except ValueError as err:
            for m in FROZEN:
                episodes[m][setting] = {"error": str(err)}
            continue
        for m in FROZEN:
            episodes[m][setting] = few_shot_eval(feats[m][svm[m]["pooling"]][test], labels[test], way, shot, drawn=drawn)
        for e, (sup, qry, drawn_classes) in enumerate(drawn[:args.scratch_episodes or None]):
            scratch_jobs += [(arm, setting, test[sup], test[qry], episode_labels(labels, drawn_classes), e) for arm in arms]
    timings["episodes_s"] = time.perf_counter() - t

    # -- the same architecture trained from scratch, supervised, on each of those label sets ----
    reuse = {}
    if scratch_jobs:
        t = time.perf_counter()
        context = {"adapter": adapter, "model_cfg": model_cfg, "views": views, "batch": args.sup_batch, "precision": args.sup_precision,
                   "lr": args.sup_lr, "ft_lr": args.ft_lr, "ft_steps": args.ft_steps, "pretrained_state": encoder.state_dict(), "steps": {"few": args.sup_steps, "episode": args.sup_steps, "all": args.sup_steps_all},
                   "dataset": adapter_cls(adapter.config).dataset({"manifest": str(manifest), "labels": "column:label"}, train=True)}
        reused, train = {}, list(range(len(scratch_jobs)))
        if prevs:
            for f, prev in zip(args.reuse_scratch, prevs):
                check_reusable(prev, f, {"n_shapes": len(files), "n_pool": len(pool), "n_test": len(test), "protocol": protocol,
                                         "few_label": few, "episodes": episodes})
            reused, train = reuse_scratch(scratch_jobs, prevs, args.reuse_check)
            print(f"reusing {len(reused)} from-scratch results of {', '.join(map(str, args.reuse_scratch))}; training {len(train)} "
                  f"({len(set(train) & set(reused))} of them to check they reproduce)", flush=True)
        check = [i for i in train if i in reused]  # first, so that a mismatch stops the run before hours of training
        trained = dict(zip(check, run_scratch([scratch_jobs[i] for i in check], context, args.procs)))
        if reused:
            reuse = {"files": [str(f) for f in args.reuse_scratch], "reused": len(set(reused) - set(trained)),
                     "retrained_and_matched": confirm_reproduced(scratch_jobs, reused, trained),
                     # the checks those files' own runs made, when they too reused results
                     "matched_in_files": {Path(f).name: p.get("scratch_reuse", {}).get("retrained_and_matched", 0)
                                          for f, p in zip(args.reuse_scratch, prevs)}}
        rest = [i for i in train if i not in trained]
        trained.update(zip(rest, run_scratch([scratch_jobs[i] for i in rest], context, args.procs)))
        results = [trained[i] if i in trained else reused[i] for i in range(len(scratch_jobs))]
        done: dict[tuple[str, str], list[dict]] = {}
        for (kind, setting, *_), r in zip(scratch_jobs, results):
            done.setdefault((kind, setting), []).append(r)
        for arm, name in (("", "scratch_supervised"), (FINETUNE, "finetuned")):
            if (arm + "few", "") in done:
                few[name] = done[arm + "few", ""]
        done_all = done.get(("all", ""), [])
        if done_all:
            svm["scratch_supervised"] = {**{k: float(np.mean([r[k] for r in done_all])) for k in ("oa", "macc", "train_acc")},
                                         "pooling": f"end-to-end, {args.sup_steps_all} steps, {len(done_all)} seeds"
                                                    + (f", {args.sup_precision}" if args.sup_precision != "fp32" else ""),
                                         "seeds": done_all}
            for metric in ("oa", "macc"):
                svm_cmp[f"scratch_supervised-{metric}"] = paired_difference([svm["pretrained"][metric]] * len(done_all),
                                                                            [r[metric] for r in done_all])
        for arm, name in (("", "scratch_supervised"), (FINETUNE, "finetuned")):
            for setting in episodes.get("pretrained", {}):
                rows = done.get((arm + "episode", setting))
                if rows:
                    accs = [r["oa"] for r in rows]
                    episodes.setdefault(name, {})[setting] = {
                        "mean": float(np.mean(accs)), "std": float(np.std(accs)), "episodes": len(accs), "accs": accs,
                        "train_acc": float(np.mean([r["train_acc"] for r in rows])), "runs": rows}
        timings["scratch_s"] = time.perf_counter() - t

    pairs = [("pretrained", o) for o in ("random_init", "classical", "scratch_supervised")] + [("finetuned", "scratch_supervised")]
    episode_cmp = {}
    for ours, other in [(a, b) for a, b in pairs if a in episodes and b in episodes]:
        for setting, a in episodes[ours].items():
            b = episodes[other].get(setting, {})
            if "accs" in a and "accs" in b:  # the same episodes (one seed) for every method: paired
                n = min(len(a["accs"]), len(b["accs"]))  # trained models may cover only the first episodes
                episode_cmp[f"{ours}-vs-{other}-{setting}"] = paired_difference(a["accs"][:n], b["accs"][:n])

    comparisons = {}
    for metric in ("oa", "macc"):
        for ours, other in [(a, b) for a, b in pairs if a in few and b in few]:
            comparisons[f"{ours}-vs-{other}-{metric}"] = paired_difference([r[metric] for r in few[ours]],
                                                                           [r[metric] for r in few[other]])
    return {"n_shapes": len(files), "n_pool": int(len(pool)), "n_test": int(len(test)), "classes": classes, "protocol": protocol,
            "pretrain": info["summary"], "recipe": info["recipe"], "few_label": few, "comparisons": comparisons,
            "svm_all_labels": svm, "svm_comparison": svm_cmp, "episodes": episodes, "episode_comparison": episode_cmp,
            "timings": timings, **({"scratch_reuse": reuse} if reuse else {})}


def _ms(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows])
    return f"{v.mean():.3f} ± {v.std():.3f}"


def format_table(res: dict) -> str:
    meta = res.get("meta", {})
    few, cmp_ = res["few_label"], res["comparisons"]
    lines = [f"# ModelNet10: pretrained vs random init vs from-scratch supervised ({res['n_shapes']} shapes, "
             f"{res['n_pool']} train / {res['n_test']} test, stratified)", "",
             f"commit {meta.get('git_commit', '?')}{' (dirty)' if meta.get('dirty') else ''}, {meta.get('machine', {}).get('platform', '')}, "
             f"{meta.get('machine', {}).get('torch_threads', '?')} thread(s), wall {meta.get('wall_s', 0):.0f} s; "
             f"pretraining {meta.get('pretrain_steps')} steps, final loss {res['pretrain'].get('final_loss', float('nan')):.4f} "
             f"(first {res['pretrain'].get('first_loss', float('nan')):.4f})", "",
             f"## k = {meta.get('k')} labels per class, {len(few['pretrained'])} paired seeds (test OA / mAcc, mean ± std)", "",
             "| method | OA | mAcc | train acc |", "| --- | --- | --- | --- |"]
    for m in few:
        lines.append(f"| {m} | {_ms(few[m], 'oa')} | {_ms(few[m], 'macc')} | {_ms(few[m], 'train_acc')} |")
    lines += ["", "| paired difference | mean | 95% CI | beats |", "| --- | --- | --- | --- |"]
    for name, c in cmp_.items():
        lines.append(f"| {name} | {c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {'yes' if c['beats'] else 'no'} |")
    lines += ["", "## Linear SVM on all training labels", "", "| method | OA | mAcc | train acc | pooling |", "| --- | --- | --- | --- | --- |"]
    for m, r in res["svm_all_labels"].items():
        lines.append(f"| {m} | {r['oa']:.3f} | {r['macc']:.3f} | {r['train_acc']:.3f} | {r['pooling']} |")
    if res.get("svm_comparison"):
        lines += ["", "| paired difference (random init, classical: bootstrap over test shapes; from scratch: t-interval over its seeds) | mean | 95% CI | beats |", "| --- | --- | --- | --- |"]
        for name, c in res["svm_comparison"].items():
            name = name if "-" in name else f"random_init-{name}"  # random init's rows are keyed by metric alone
            lines.append(f"| pretrained-vs-{name} | {c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | "
                         f"{'yes' if c['beats'] else 'no'} |")
    if not res["episodes"]:
        lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["timings"].items())]
        return "\n".join(lines)
    args_episodes = max((v.get("episodes", 0) for v in res["episodes"]["pretrained"].values()), default=0)
    lines += ["", "## Few-shot episodes on the test split (linear SVM per episode on frozen features, or the from-scratch "
              "model trained on the episode's support set; 20 queries/class, mean ± std over episodes"
              + (f"; episodes drawn with seed {meta['episode_seed']}" if meta.get("episode_seed") else "") + ")", "",
              "| method | " + " | ".join(res["episodes"]["pretrained"]) + " |", "| --- |" + " --- |" * len(res["episodes"]["pretrained"])]
    for m, e in res["episodes"].items():
        cells = [f"{v['mean']:.3f} ± {v['std']:.3f}" + (f" ({v['episodes']} ep.)" if v["episodes"] != args_episodes else "")
                 if "mean" in v else "n/a" for v in (e.get(s, {}) for s in res["episodes"]["pretrained"])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if res.get("episode_comparison"):
        lines += ["", "| paired difference (same episodes) | mean | 95% CI | beats |", "| --- | --- | --- | --- |"]
        for setting, c in res["episode_comparison"].items():
            lines.append(f"| {setting} | {c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {'yes' if c['beats'] else 'no'} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["timings"].items())]
    if res.get("scratch_reuse"):
        r = res["scratch_reuse"]
        files = r.get("files") or [r["file"]]
        lines += ["", f"From-scratch results reused from {', '.join(f'`{Path(f).name}`' for f in files)}: {r['reused']} "
                      f"(not retrained); {r['retrained_and_matched']} reused job(s) retrained here gave identical results"
                  + "".join(f"; `{k}`'s run retrained {v} and matched" for k, v in r.get("matched_in_files", {}).items() if v) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
