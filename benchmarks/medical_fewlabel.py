"""Does pretraining pay off with few labelled volumes? Synthetic cohort, paired seeds.

1. Two synthetic cohorts: a pretraining cohort (unlabelled use) and a separate labelled cohort.
2. MAE pretraining (recipe ``medical-mae``) on the pretraining cohort (or ``--run-dir`` of a finished run).
3. Classification, k labelled volumes per class (k in --ks), for each seed a fresh patient-wise split
   of the labelled cohort: linear probes (standardised, C and pooling by inner CV) on whole-volume
   sliding-window embeddings of the pretrained encoder and of its random-init twin; the classical
   baseline (intensity statistics + histogram, same probe); and a from-scratch supervised encoder of the
   same size trained on the k labels (same steps for every k; its training accuracy is reported); with
   --finetune also that model started from the pretrained encoder.
4. Segmentation: UNETR decoder fine-tuned from the pretrained encoder vs the same model from scratch,
   on --seg-train labelled volumes, same steps and the same fine-tuning (the first --seg-probe-first share
   of the steps trains the fresh decoder alone: LP-FT), mean foreground Dice on held-out volumes, per seed;
   with --restoration-steps also the whole UNETR restoration-pretrained on the unlabelled cohort (Models
   Genesis), whose probe phase trains its fresh output head alone.
Wins are paired differences over seeds with a 95% t-interval (foundation.probes.paired_difference).

    OMP_NUM_THREADS=1 python benchmarks/medical_fewlabel.py            # full (CPU: tens of minutes)
    OMP_NUM_THREADS=1 python benchmarks/medical_fewlabel.py --quick    # a smoke run (the CI version: tests/modalities/medical/test_med_fewlabel_reduced.py)

Writes benchmarks/results/medical_fewlabel[_quick].json and .md (git commit, seeds, machine, wall time).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, git_commit  # noqa: E402
from foundation.probes import format_interval, paired_difference  # noqa: E402

warnings.filterwarnings("ignore")


def pretrain_encoder(args, pre_manifest: str, run_dir: Path):
    from foundation.engine import pretrain
    from foundation.export import encoder_from_run
    from foundation.recipes import load_recipe

    if not (run_dir / "encoder" / "config.json").exists():
        recipe = load_recipe("medical-mae", [f"data.manifest={pre_manifest}", f"run.dir={run_dir}", "adapter.cache=memory",
                                             f"train.steps={args.steps}", f"run.seed={args.seed}", "train.log_every=25"]
                             + args.override)
        pretrain(recipe, progress=False)
    return encoder_from_run(run_dir)


def scratch_classifier(encoder_like, ds, train_idx, test_idx, labels, steps, seed, lrs=(5e-4,), poolings=("mean",),
                       init: dict | None = None) -> tuple[float, float, str]:
    """The from-scratch baseline, its learning rate and token pooling tuned on the training labels only
    (highest training accuracy; the first setting on ties): test volumes never touch the choice.
    With ``init`` (an encoder state dict) the same model, steps and grid fine-tune the pretrained encoder.
    Returns (held-out accuracy on ``test_idx``, training accuracy, chosen setting)."""
    from foundation.model import Encoder
    from modalities.medical.tasks import VolumeClassifier, predict_classes, train_classifier

    best = None
    for pooling in poolings:
        for lr in lrs:
            torch.manual_seed(seed)
            model = VolumeClassifier(Encoder(encoder_like.adapter, **encoder_like.config), int(labels.max()) + 1, pooling)
            if init is not None:
                model.encoder.load_state_dict(init)
            train_acc = train_classifier(model, ds, list(train_idx), labels, steps=steps, lr=lr, seed=seed)
            if best is None or train_acc > best[1]:
                best = (model, train_acc, f"{pooling}/{lr:g}")
    model, train_acc, setting = best
    return float((predict_classes(model, ds, test_idx) == labels[test_idx]).mean()), train_acc, setting


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced version (CI)")
    ap.add_argument("--pretrain-n", type=int, default=200)
    ap.add_argument("--labelled-n", type=int, default=160, help="labelled cohort; 40%% of it is each seed's test set")
    ap.add_argument("--steps", type=int, default=7200, help="pretraining steps (the medical-mae recipe's; CI runs 1800)")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--scratch-steps", type=int, default=200, help="from-scratch classifier steps: enough to fit its labels on most seeds (0: no from-scratch arm)")
    ap.add_argument("--scratch-lrs", type=float, nargs="+", default=[1e-3], help="from-scratch lr grid (chosen on training labels)")
    ap.add_argument("--scratch-poolings", nargs="+", default=["mean", "max"], help="from-scratch token pooling grid (chosen on training labels)")
    ap.add_argument("--finetune", action="store_true", help="also fine-tune the pretrained encoder end to end (same model, steps and grid as from scratch)")
    ap.add_argument("--ceiling-steps", type=int, default=250, help="ceiling check: the from-scratch model on all labels of seed 0's split (0: skip)")
    ap.add_argument("--seg-train", type=int, default=5)
    ap.add_argument("--seg-test", type=int, default=12)
    ap.add_argument("--seg-steps", type=int, default=60)
    ap.add_argument("--seg-seeds", type=int, default=8)
    ap.add_argument("--seg-probe-first", type=float, default=0.25,
                    help="share of the segmentation steps that train only the fresh part first (LP-FT; finetune_segmentation's "
                         "probe_first): the decoder for the pretrained and scratch arms, the output head for the restored arm")
    ap.add_argument("--seg-first-seed", type=int, default=0, help="segmentation seeds are first..first+seg-seeds-1 (split a run over processes)")
    ap.add_argument("--restoration-steps", type=int, default=0,
                    help="also a third segmentation arm: the whole UNETR (MAE encoder + decoder) restoration-pretrained on the "
                         "pretraining cohort for this many steps (modalities.medical.restoration), then fine-tuned like the others (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for cohorts and the run (default: a temp dir)")
    ap.add_argument("--run-dir", default=None, help="reuse a finished pretraining run")
    ap.add_argument("--override", nargs="*", default=[], help="recipe overrides for pretraining")
    ap.add_argument("--skip-seg", action="store_true")
    ap.add_argument("--skip-classification", action="store_true", help="segmentation only (no probes, scratch classifiers or ceiling)")
    ap.add_argument("--tag", default="", help="suffix of the results files (ablations keep the main table)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the results files")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results are per seed, so threads change only the time)")
    ap.add_argument("--render", default=None, help="only rewrite the .md table of a results .json this script wrote")
    ap.add_argument("--merge", nargs="+", default=None, help="only merge segmentation results over disjoint seeds into results --tag")
    return ap


def command_line(args: dict) -> str:
    """The command that reproduces a run: the script plus every argument that differs from its default."""
    cmd = "OMP_NUM_THREADS=1 python benchmarks/medical_fewlabel.py"
    if args.get("quick"):
        return cmd + " --quick"
    for action in build_parser()._actions:
        key, value = action.dest, args.get(action.dest)
        if key == "seg_probe_first" and value is None:
            value = 0.0  # runs from before the option fine-tuned without a probe phase
        if key in ("help", "work", "run_dir", "render", "merge", "out", "threads") or value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        cmd += f" {flag}" if value is True else f" {flag} " + " ".join(str(v) for v in (value if isinstance(value, list) else [value]))
    return cmd


def main() -> None:
    args = build_parser().parse_args()
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(format_table(json.loads(path.read_text())))
        return
    if args.merge:
        res = merge_segmentation(args.merge)
        out = Path(args.out) / f"medical_fewlabel-{args.tag or 'merged'}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        out.with_suffix(".md").write_text(format_table(res))
        print(format_table(res))
        return
    if args.quick:
        args.pretrain_n, args.labelled_n, args.steps, args.ks, args.seeds = 48, 40, 120, [5], 5
        args.scratch_steps, args.seg_train, args.seg_test, args.seg_steps, args.seg_seeds = 30, 5, 6, 30, 5
    ks, ceiling_steps = ([], 0) if args.skip_classification else (args.ks, args.ceiling_steps)
    torch.set_num_threads(args.threads)
    t0, commit = time.time(), git_commit()  # the code that runs, not what HEAD is when the run ends
    from foundation.evaluate import random_twin
    from foundation.probes import bag_probe, few_shot_indices, linear_probe
    from modalities.medical.dataset import MedicalDataset
    from modalities.medical.embed import embed_studies
    from modalities.medical.synthetic import write_cohort
    from modalities.medical.tasks import SegmentationModel, dice_scores, finetune_segmentation, intensity_features, patient_split

    work = Path(args.work or tempfile.mkdtemp(prefix="medical_fewlabel_"))
    pre = work / "pre" / "manifest.csv"
    if not pre.exists():
        write_cohort(work / "pre", args.pretrain_n, seed=1000 + args.seed)
    lab = work / "lab" / "manifest.csv"
    if not lab.exists():
        write_cohort(work / "lab", args.labelled_n, seed=2000 + args.seed)
    run_dir = Path(args.run_dir) if args.run_dir else work / "run"
    reused = (run_dir / "encoder" / "config.json").exists()
    t_pre = time.time()
    encoder = pretrain_encoder(args, str(pre), run_dir)
    t_pre = time.time() - t_pre
    if reused:  # report the time the run took when it was trained
        t_pre = float(json.loads((run_dir / "summary.json").read_text())["wall_s"])
    metrics = (run_dir / "metrics.csv").read_text().strip().splitlines() if (run_dir / "metrics.csv").exists() else []
    cfg = encoder.adapter.config
    data = {"manifest": str(lab), "labels": "column:label"}
    eval_ds = MedicalDataset(cfg, data, train=False)
    train_ds = MedicalDataset(cfg, data, train=True)
    labels = np.array(eval_ds.labels)
    pooled, bags = {}, {}
    if ks:
        feats = {"pretrained": embed_studies(encoder, eval_ds, regions=True),
                 "random_init": embed_studies(random_twin(encoder, seed=args.seed), eval_ds, regions=True)}
        pooled = {m: {k: v for k, v in f.items() if k not in ("ids", "paths", "labels", "regions")} for m, f in feats.items()}
        pooled["intensity_stats"] = {"stats": intensity_features(eval_ds)}
        bags = {f"{m}_regions": f["regions"] for m, f in feats.items()}

    rows, raw = [], {}
    for k in ks:
        methods = ("pretrained", "random_init", "intensity_stats") + (("scratch",) if args.scratch_steps else ())
        acc = {m: [] for m in methods + tuple(bags) + (("finetuned",) if args.finetune and args.scratch_steps else ())}
        scratch_train, scratch_lr, ft_train = [], [], []
        for seed in range(args.seeds):
            pool, test = patient_split(eval_ds, 0.4, seed)
            tr = pool[few_shot_indices(labels[pool], k, seed)]
            for m in ("pretrained", "random_init", "intensity_stats"):
                res = linear_probe({p: x[tr] for p, x in pooled[m].items()}, labels[tr], {p: x[test] for p, x in pooled[m].items()}, labels[test], seed=seed)
                acc[m].append(res["accuracy"])
            for m, b in bags.items():
                acc[m].append(bag_probe([b[i] for i in tr], labels[tr], [b[i] for i in test], labels[test], seed=seed)["accuracy"])
            if args.scratch_steps:
                test_acc, train_acc, lr = scratch_classifier(encoder, train_ds, tr, test, labels, args.scratch_steps, seed, args.scratch_lrs, args.scratch_poolings)
                scratch_lr.append(lr)
                acc["scratch"].append(test_acc)
                scratch_train.append(train_acc)
            if "finetuned" in acc:
                test_acc, train_acc, _ = scratch_classifier(encoder, train_ds, tr, test, labels, args.scratch_steps, seed, args.scratch_lrs,
                                                            args.scratch_poolings, init=encoder.state_dict())
                acc["finetuned"].append(test_acc)
                ft_train.append(train_acc)
            scratch_note = f" scratch_train={scratch_train[-1]:.2f} setting={scratch_lr[-1]}" if scratch_train else ""
            print(f"k={k} seed={seed} " + " ".join(f"{m}={v[-1]:.3f}" for m, v in acc.items()) + scratch_note + f" ({time.time() - t0:.0f}s)", flush=True)
        row = {"k": k, **{m: float(np.mean(v)) for m, v in acc.items()}, **{f"{m}_std": float(np.std(v)) for m, v in acc.items()},
               "scratch_train_accuracy": float(np.mean(scratch_train)) if scratch_train else None, "scratch_lrs": scratch_lr, "test_volumes": int(len(test))}
        for other in methods[1:]:
            row[f"vs_{other}"] = paired_difference(acc["pretrained"], acc[other])
        if bags:  # the region probe against every other arm, its random-init twin (same probe) included
            for other in ("random_init_regions", "pretrained") + methods[1:]:
                row[f"regions_vs_{other}"] = paired_difference(acc["pretrained_regions"], acc[other])
        if ft_train:
            row["finetuned_train_accuracy"] = float(np.mean(ft_train))
            row["finetuned_vs_scratch"] = paired_difference(acc["finetuned"], acc["scratch"])
        rows.append(row)
        raw[k] = acc

    ceiling = None
    if ceiling_steps:  # can the task be learnt at all, supervised, from every label of a split?
        pool, test = patient_split(eval_ds, 0.4, 0)
        test_acc, train_acc, setting = scratch_classifier(encoder, train_ds, pool, test, labels, ceiling_steps, 0, args.scratch_lrs, args.scratch_poolings)
        ceiling = {"train_volumes": int(len(pool)), "steps": ceiling_steps, "setting": setting, "train_accuracy": train_acc,
                   "test_accuracy": test_acc}
        print(f"ceiling: {ceiling} ({time.time() - t0:.0f}s)", flush=True)

    seg = None
    if not args.skip_seg:
        from foundation.model import Encoder

        seg_ds = MedicalDataset(cfg, data, train=True, with_seg=True)
        arms = ["pretrained", "scratch"]
        restored, t_rest = None, 0.0
        if args.restoration_steps:
            from benchmarks.medical_restoration import restoration_pretrain, with_new_head

            t_rest = time.time()
            torch.manual_seed(args.seed)
            restored = SegmentationModel(Encoder(encoder.adapter, **encoder.config), classes=int(cfg["channels"]))
            restored.encoder.load_state_dict(encoder.state_dict())
            rest_losses = restoration_pretrain(restored, MedicalDataset(cfg, {"manifest": str(pre)}, train=True), args.restoration_steps, seed=args.seed)
            t_rest = time.time() - t_rest
            print(f"restoration pretraining: loss {rest_losses[0]:.3f} -> {rest_losses[-1]:.3f} ({t_rest:.0f}s)", flush=True)
            arms.append("restored")
        dice = {a: [] for a in arms}
        structures = {a: [] for a in arms}  # per seed, the mean Dice of each structure
        seg_seeds = list(range(args.seg_first_seed, args.seg_first_seed + args.seg_seeds))
        for seed in seg_seeds:
            pool, test = patient_split(seg_ds, 0.4, seed)
            rng = np.random.default_rng(seed)
            tr = rng.permutation(pool)[: args.seg_train].tolist()
            te = rng.permutation(test)[: args.seg_test].tolist()
            for name in arms:
                torch.manual_seed(seed)
                if name == "restored":
                    model = with_new_head(restored, classes=4)
                else:
                    enc = Encoder(encoder.adapter, **encoder.config)
                    if name == "pretrained":
                        enc.load_state_dict(encoder.state_dict())
                    model = SegmentationModel(enc, classes=4)
                finetune_segmentation(model, seg_ds, tr, steps=args.seg_steps, seed=seed, probe_first=args.seg_probe_first,
                                      probe="head" if name == "restored" else "decoder")
                per = dice_scores(model, seg_ds, te, 4, per_class=True)
                dice[name].append(float(np.mean(np.nanmean(per, 1))))
                structures[name].append(np.nanmean(per, 0).tolist())
            print(f"seg seed={seed} " + " ".join(f"{a}={dice[a][-1]:.3f}" for a in arms) + f" ({time.time() - t0:.0f}s)", flush=True)
        restoration = None if restored is None else {"restoration_steps": args.restoration_steps, "restoration_seconds": t_rest,
                                                     "restoration_loss": [rest_losses[0], rest_losses[-1]]}
        seg = segmentation_summary(dice, structures, seg_seeds, args.seg_train, args.seg_test, args.seg_steps, restoration)

    res = {"benchmark": "medical_fewlabel", "git_commit": commit, "args": vars(args), "seeds": list(range(args.seeds)),
           "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads()},
           "pretrain_seconds": t_pre, "pretrain_metrics_tail": metrics[-3:], "classification": rows, "raw": raw,
           "segmentation": seg, "ceiling": ceiling, "wall_time_s": time.time() - t0}
    name = ("medical_fewlabel_quick" if args.quick else "medical_fewlabel") + (f"-{args.tag}" if args.tag else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    table = format_table(res)
    (out / f"{name}.md").write_text(table)
    print(table)


def segmentation_summary(dice: dict[str, list[float]], structures: dict[str, list], seeds: list[int], train: int, test: int, steps: int,
                         restoration: dict | None = None) -> dict:
    """Means, paired intervals and per-structure Dice of the segmentation arms, from per-seed Dice."""
    seg = {"seeds": len(seeds), "seed_list": list(seeds), "train_volumes": train, "test_volumes": test, "steps": steps,
           "pretrained": float(np.mean(dice["pretrained"])), "pretrained_std": float(np.std(dice["pretrained"])),
           "scratch": float(np.mean(dice["scratch"])), "scratch_std": float(np.std(dice["scratch"])),
           **paired_difference(dice["pretrained"], dice["scratch"]), "raw": dice, "raw_per_structure": structures,
           "per_structure": {m: np.mean(v, 0).round(4).tolist() for m, v in structures.items()}}
    if restoration is not None:
        seg["restored"] = {**restoration, "dice": float(np.mean(dice["restored"])), "dice_std": float(np.std(dice["restored"])),
                           "vs_scratch": paired_difference(dice["restored"], dice["scratch"]),
                           "vs_pretrained": paired_difference(dice["restored"], dice["pretrained"])}
    return seg


def merge_segmentation(paths: list[str]) -> dict:
    """One result from segmentation runs over disjoint seeds (``--seg-first-seed``) with the same
    settings: the per-seed Dice concatenated, the intervals recomputed over all seeds."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    segs = [r["segmentation"] for r in runs]
    keys = ("train_volumes", "test_volumes", "steps")
    same_run = ("steps", "seed", "pretrain_n", "labelled_n", "run_dir", "override", "seg_probe_first")  # the encoder, cohorts, fine-tuning
    if any(tuple(s[k] for k in keys) != tuple(segs[0][k] for k in keys) for s in segs) or \
            any(tuple(r["args"].get(k) for k in same_run) != tuple(runs[0]["args"].get(k) for k in same_run) for r in runs) or \
            len({r["git_commit"] for r in runs}) != 1 or len({json.dumps(s.get("restored", {}).get("restoration_steps")) for s in segs}) != 1:
        raise ValueError(f"cannot merge {paths}: different settings or commits")
    seeds = [x for s in segs for x in s["seed_list"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"cannot merge {paths}: seeds overlap ({seeds})")
    dice = {a: [x for s in segs for x in s["raw"][a]] for a in segs[0]["raw"]}
    structures = {a: [x for s in segs for x in s["raw_per_structure"][a]] for a in segs[0]["raw"]}
    restoration = None
    if "restored" in segs[0]:
        restoration = {k: segs[0]["restored"][k] for k in ("restoration_steps", "restoration_seconds", "restoration_loss")}
    res = dict(runs[0])
    res["segmentation"] = segmentation_summary(dice, structures, seeds, *(segs[0][k] for k in keys), restoration)
    res["merged_from"] = [Path(p).name for p in paths]
    res["wall_time_s"] = max(r["wall_time_s"] for r in runs)  # the runs ran side by side
    return res


def format_table(res: dict) -> str:
    cmd = command_line(res["args"])
    n_test = res["classification"][0].get("test_volumes", "?") if res["classification"] else "?"
    what = (f"Few-label medical volumes (synthetic cohort), {len(res['seeds'])} paired seeds, {n_test} held-out test volumes per seed"
            if res["classification"] else "Medical segmentation only (synthetic cohort)")
    if res.get("merged_from"):
        cmd += " (seeds split over processes with --seg-first-seed; merged from " + ", ".join(res["merged_from"]) + ")"
    lines = [f"{what}; `{cmd}`; commit {res['git_commit'][:10]}, wall time {res['wall_time_s'] / 60:.1f} min, pretraining "
             f"{res['pretrain_seconds'] / 60:.1f} min ({res['args']['steps']} steps).", ""]
    if res["classification"]:
        lines += ["| labels/class | MAE pretrained | random init | from scratch (train acc) | intensity stats | pretrained - random [95% CI] | pretrained - scratch [95% CI] | pretrained - stats [95% CI] |",
                  "|---|---|---|---|---|---|---|---|"]
    for r in res["classification"]:
        ci = lambda o: format_interval(r[o]) if o in r else "not run"  # noqa: E731
        scratch = f"{r['scratch']:.3f} ± {r['scratch_std']:.3f} ({r['scratch_train_accuracy']:.2f})" if "scratch" in r else "not run"
        lines.append(f"| {r['k']} | {r['pretrained']:.3f} ± {r['pretrained_std']:.3f} | {r['random_init']:.3f} ± {r['random_init_std']:.3f} | "
                     f"{scratch} | {r['intensity_stats']:.3f} ± {r['intensity_stats_std']:.3f} | "
                     f"{ci('vs_random_init')} | {ci('vs_scratch')} | {ci('vs_intensity_stats')} |")
    regional = [r for r in res["classification"] if "pretrained_regions" in r]
    if regional:
        lines += ["", "Region probe (`foundation.probes.bag_probe`: the same logistic regression fitted on each study's regions, "
                  "windows of the pretraining crop size, per-feature max and min; a study predicted by its regions' mean "
                  "probability), same splits:", "",
                  "| labels/class | MAE pretrained, regions | random init, regions | regions - random init regions [95% CI] | "
                  "regions - scratch [95% CI] | regions - whole-study probe [95% CI] | regions - stats [95% CI] |", "|---|---|---|---|---|---|---|"]
        for r in regional:
            ci = lambda o: format_interval(r[o]) if o in r else "not run"  # noqa: E731
            lines.append(f"| {r['k']} | {r['pretrained_regions']:.3f} ± {r['pretrained_regions_std']:.3f} | "
                         f"{r['random_init_regions']:.3f} ± {r['random_init_regions_std']:.3f} | {ci('regions_vs_random_init_regions')} | "
                         f"{ci('regions_vs_scratch')} | {ci('regions_vs_pretrained')} | {ci('regions_vs_intensity_stats')} |")
    tuned = [r for r in res["classification"] if "finetuned" in r]
    if tuned:
        lines += ["", "Fine-tuned from MAE (the from-scratch model, steps and grid, started from the pretrained encoder):", "",
                  "| labels/class | fine-tuned (train acc) | from scratch | fine-tuned - scratch [95% CI] |", "|---|---|---|---|"]
        for r in tuned:
            f = r["finetuned_vs_scratch"]
            lines.append(f"| {r['k']} | {r['finetuned']:.3f} ± {r['finetuned_std']:.3f} ({r['finetuned_train_accuracy']:.2f}) | {r['scratch']:.3f} ± {r['scratch_std']:.3f} | "
                         f"{format_interval(f)} |")
    c = res.get("ceiling")
    if c:
        lines += ["", f"Ceiling check: the from-scratch model trained on all {c['train_volumes']} labelled volumes of seed 0's split ({c['steps']} steps, "
                  f"setting {c['setting']} chosen on training accuracy): training accuracy {c['train_accuracy']:.3f}, held-out accuracy {c['test_accuracy']:.3f}."]
    s = res.get("segmentation")
    if s:
        lines += ["", f"Segmentation ({s['train_volumes']} labelled volumes, {s['steps']} steps for both, mean foreground Dice on {s['test_volumes']} held-out "
                  f"volumes, {s.get('seeds', len(res['seeds']))} paired seeds):", "",
                  "| fine-tuned from MAE | from scratch | difference [95% CI] |", "|---|---|---|",
                  f"| {s['pretrained']:.3f} ± {s['pretrained_std']:.3f} | {s['scratch']:.3f} ± {s['scratch_std']:.3f} | {format_interval(s)} |"]
        r = s.get("restored")
        if r:
            lines += ["", f"Restoration-pretrained UNETR (MAE encoder and decoder, {r['restoration_steps']} restoration steps on the pretraining "
                      f"cohort, `modalities.medical.restoration`), fine-tuned the same way: {r['dice']:.3f} ± {r['dice_std']:.3f}; "
                      f"minus from scratch {format_interval(r['vs_scratch'])}; minus fine-tuned from MAE {format_interval(r['vs_pretrained'])}."]
        if s.get("per_structure"):  # the cohort's structures: 1 body, 2 organs, 3 lesions
            lines += ["", "Mean Dice per structure (body / organs / lesions): " + "; ".join(
                f"{m} " + " / ".join(f"{x:.3f}" for x in v) for m, v in s["per_structure"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
