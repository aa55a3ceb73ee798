"""align-speech-text on FSDD, leave one speaker out: does aligning a FROZEN speech tower to text lose anything?

For each held-out speaker (4 folds), `domainfm align align-speech-text` (THE engine) trains on the other three
speakers' clips paired with text: each clip with its digit word ("seven") or a compositional text
("jackson says seven", alternating by take), with some speaker x digit combinations held out entirely.
Then, on the held-out speaker:
- zero-shot digit accuracy from the prompts ``{}`` -> "zero".."nine" (no label used after alignment);
- logistic regression on the SAME frozen speech features with all training labels (tuned by inner CV,
  foundation.probes.linear_probe), paired over folds: parity means |zero-shot - logreg| <= 3 points;
and, on the held-out combinations of the training speakers, retrieval of the right compositional text among
all 40 ("<speaker> says <digit>") against chance. Run for a pretrained and a random speech tower.

    python benchmarks/align_speech_text.py --encoder runs/speech-mae/encoder      # writes results/align_speech_text.json|md
    python benchmarks/align_speech_text.py --encoder runs/speech-mae/encoder --towers pretrained \
        --tune label-s50 label-s150 label label-mlp-s150 --out benchmarks/results/align_speech_text_tuned   # nested choice
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPEAKERS = ["jackson", "nicolas", "theo", "yweweler"]
HELD_COMBOS = {("jackson", 3), ("jackson", 8), ("nicolas", 1), ("nicolas", 6), ("theo", 0), ("theo", 5), ("yweweler", 2), ("yweweler", 9)}


def clips(root: Path) -> list[dict]:
    out = []
    for p in sorted(root.glob("*.wav")):
        digit, speaker, take = p.stem.split("_")
        out.append({"path": str(p), "digit": int(digit), "speaker": speaker, "take": int(take)})
    return out


def text_of(c: dict) -> str:
    return f"{c['speaker']} says {WORDS[c['digit']]}" if c["take"] % 2 else WORDS[c["digit"]]


def write_manifests(all_clips: list[dict], held_speaker: str, out: Path) -> dict:
    from foundation.pairs import write_paired_manifest

    cols = ["speech", "text", "label", "group"]
    train = [c for c in all_clips if c["speaker"] != held_speaker and (c["speaker"], c["digit"]) not in HELD_COMBOS]
    test = [c for c in all_clips if c["speaker"] == held_speaker]
    combos = [c for c in all_clips if c["speaker"] != held_speaker and (c["speaker"], c["digit"]) in HELD_COMBOS]
    row = lambda c, text: {"speech": c["path"], "text": text, "label": c["digit"], "group": c["speaker"]}
    return {
        "train": write_paired_manifest(out / "train.csv", [row(c, text_of(c)) for c in train], cols),
        "test": write_paired_manifest(out / "test.csv", [row(c, WORDS[c["digit"]]) for c in test], cols),
        "combos": [(c["path"], f"{c['speaker']} says {WORDS[c['digit']]}") for c in combos],
        "train_clips": train, "test_clips": test,
    }


# Alignment settings tried by --tune, each a list of overrides; chosen per outer fold by inner leave-one-speaker-out
# zero-shot accuracy on the training speakers only (the held-out speaker never informs the choice).
CONFIGS = {
    "recipe": [],  # texts sharing a string are positives; linear head; --steps steps
    "label": ["align.positives=label"],  # every clip and text of one digit are positives (word and "<speaker> says <digit>")
    "label-mlp": ["align.positives=label", "towers.speech.head=mlp"],
    "label-mlp-long": ["align.positives=label", "towers.speech.head=mlp", "train.steps=1000"],
    # fewer steps: the number of steps is the alignment's regulariser across speakers, as C is the probe's
    "label-s50": ["align.positives=label", "train.steps=50"],
    "label-s150": ["align.positives=label", "train.steps=150"],
    "label-mlp-s150": ["align.positives=label", "towers.speech.head=mlp", "train.steps=150"],
    # the frozen features standardised per feature with the training rows' statistics, as the logistic regression's are
    "std-s50": ["align.positives=label", "towers.speech.head=standardized", "train.steps=50"],
    "std-s150": ["align.positives=label", "towers.speech.head=standardized", "train.steps=150"],
    "std": ["align.positives=label", "towers.speech.head=standardized"],
}


def inner_zero_shot(args, outer: str, val: str, tower_init: str | None, tag: str, all_clips: list[dict], config: str) -> float:
    """Zero-shot accuracy on training speaker ``val`` of an alignment trained on the other training speakers."""
    from foundation.cli import main as cli

    work = Path(args.work) / tag / outer / "inner" / config / val
    m = write_manifests([c for c in all_clips if c["speaker"] != outer], val, work)
    overrides = [f"data.manifest={m['train']}", f"run.dir={work / 'run'}", f"align.eval_manifest={m['test']}",
                 f"align.cache_dir={Path(args.work) / tag / 'cache'}", f"train.steps={args.steps}", f"run.seed={args.seed}", *CONFIGS[config]]
    overrides += [f"towers.speech.init={tower_init}"] if tower_init else []
    if not (work / "run" / "align_eval.json").exists():
        assert cli(["align", "align-speech-text", *overrides, "--quiet"]) == 0
    return float(json.loads((work / "run" / "align_eval.json").read_text())["zero_shot"]["accuracy"])


def tuned_fold(args, held: str, tower_init: str | None, tag: str, all_clips: list[dict]) -> dict:
    """Choose the config by inner folds (the other training speakers held out in turn), then run the outer fold with it."""
    inner = {c: [inner_zero_shot(args, held, v, tower_init, tag, all_clips, c) for v in SPEAKERS if v != held] for c in args.tune}
    best = max(args.tune, key=lambda c: (float(np.mean(inner[c])), -args.tune.index(c)))
    return {**run_fold(args, held, tower_init, tag, all_clips, CONFIGS[best]), "config": best,
            "inner_zero_shot": {c: float(np.mean(v)) for c, v in inner.items()}}


def run_fold(args, held: str, tower_init: str | None, tag: str, all_clips: list[dict], extra: list[str] | tuple = ()) -> dict:
    from foundation.align_eval import retrieval
    from foundation.align_task import load_towers
    from foundation.cli import main as cli
    from foundation.pairs import PairedDataset, write_paired_manifest
    from foundation.probes import linear_probe
    from safetensors.torch import load_file

    work = Path(args.work) / tag / held
    m = write_manifests(all_clips, held, work)
    overrides = [f"data.manifest={m['train']}", f"run.dir={work / 'run'}", f"align.eval_manifest={m['test']}",
                 f"align.cache_dir={Path(args.work) / tag / 'cache'}", f"train.steps={args.steps}", f"run.seed={args.seed}", *extra]
    overrides += [f"towers.speech.init={tower_init}"] if tower_init else []  # random: the speech-mae architecture, untrained
    t0 = time.perf_counter()
    assert cli(["align", "align-speech-text", *overrides, "--quiet"]) == 0
    wall = time.perf_counter() - t0
    ev = json.loads((work / "run" / "align_eval.json").read_text())
    # the logistic-regression reference on the very same frozen features (the tower's cache)
    cache = next((Path(args.work) / tag / "cache").glob("speech-*.safetensors"))
    feats = load_file(str(cache))
    missing = [c for c in m["train_clips"] + m["test_clips"] if c["path"] not in feats]
    if missing:  # rows the training epochs' dropped partial batches never drew
        from foundation.tokens import collate

        tower = load_towers(work / "run")["speech"]
        ds = tower.encoder.adapter.dataset({"root": None, "manifest": str(write_paired_manifest(work / "missing.csv", [{"path": c["path"]} for c in missing], ["path"])),
                                            "labels": None}, train=False)
        with __import__("torch").no_grad():
            for i, c in enumerate(missing):
                feats[c["path"]] = tower.backbone_features(collate([ds[i]]))[0]
    xtr = np.stack([feats[c["path"]].numpy() for c in m["train_clips"]])
    xte = np.stack([feats[c["path"]].numpy() for c in m["test_clips"]])
    ytr = np.array([c["digit"] for c in m["train_clips"]])
    yte = np.array([c["digit"] for c in m["test_clips"]])
    lr = linear_probe(xtr, ytr, xte, yte, seed=args.seed)
    # held-out compositions: each clip must retrieve "<speaker> says <digit>" among all 40 compositional texts
    towers = load_towers(work / "run")
    texts = [f"{s} says {w}" for s in SPEAKERS for w in WORDS]
    cm = write_paired_manifest(work / "combos.csv", [{"speech": p, "text": t} for p, t in m["combos"]], ["speech", "text"])
    cdata = PairedDataset(cm, {"speech": {"kind": "encoder", "adapter": towers["speech"].encoder.adapter, "frozen": True}, "text": {"kind": "text"}},
                          train=False, work_dir=work / "combos")
    from foundation.align_task import embed_rows

    zs = embed_rows(towers["speech"], cdata, "speech", list(range(len(cdata))))
    zt = towers["text"](texts).detach().numpy()
    comp = retrieval(zs, zt, np.array([texts.index(t) for _, t in m["combos"]]), np.arange(len(texts)), names=("speech", "text"))
    return {"fold": held, "zero_shot": ev["zero_shot"]["accuracy"], "logreg": lr["accuracy"], "logreg_train": lr["train_accuracy"],
            "composition_recall@1": comp["speech->text recall@1"], "composition_recall@5": comp["speech->text recall@5"],
            "composition_chance@1": comp["speech->text chance@1"], "composition_chance@5": comp["speech->text chance@5"],
            "wall_s": wall}


def main() -> None:
    from foundation.probes import paired_difference

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fsdd" / "recordings"))
    p.add_argument("--encoder", default=None, help="pretrained speech encoder export (e.g. runs/speech-mae/encoder); omit for random only")
    p.add_argument("--folds", nargs="*", default=SPEAKERS)
    p.add_argument("--towers", nargs="*", default=["random", "pretrained"], help="which speech towers to run")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/bench_align_speech_text")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "align_speech_text"))
    p.add_argument("--tune", nargs="*", default=None, choices=list(CONFIGS),
                   help="choose among these alignment settings per outer fold by inner leave-one-speaker-out zero-shot accuracy")
    args = p.parse_args()
    t0 = time.perf_counter()
    all_clips = clips(Path(args.data))
    towers = {t: i for t, i in ({"random": None} | ({"pretrained": args.encoder} if args.encoder else {})).items() if t in args.towers}
    results = {}
    for tag, init in towers.items():
        folds = [tuned_fold(args, held, init, tag, all_clips) if args.tune else run_fold(args, held, init, tag, all_clips) for held in args.folds]
        results[tag] = {"folds": folds,
                        "zero_shot_minus_logreg": paired_difference([f["zero_shot"] for f in folds], [f["logreg"] for f in folds]),
                        **{k: float(np.mean([f[k] for f in folds])) for k in folds[0] if k not in ("fold", "config", "inner_zero_shot")}}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    out = {"results": results, "commit": commit, "seed": args.seed, "steps": args.steps, "folds": args.folds,
           "tune": {c: CONFIGS[c] for c in args.tune or []},
           "machine": f"{platform.machine()} {os.cpu_count()} cpus, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
           "wall_s": time.perf_counter() - t0, "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    lines = ["| speech tower | zero-shot | logreg (train acc) | zero-shot - logreg [95% CI] | held-out compositions R@1 / R@5 (chance) |",
             "|---|---|---|---|---|"]
    for tag, r in results.items():
        d = r["zero_shot_minus_logreg"]
        lines.append(f"| {tag} | {r['zero_shot']:.3f} | {r['logreg']:.3f} ({r['logreg_train']:.2f}) | {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
                     f"{r['composition_recall@1']:.3f} / {r['composition_recall@5']:.3f} ({r['composition_chance@1']:.3f} / {r['composition_chance@5']:.3f}) |")
    if args.tune:
        lines += ["", "Settings chosen per outer fold by inner leave-one-speaker-out zero-shot accuracy (training speakers only):", "",
                  "| speech tower | held-out speaker | chosen | inner zero-shot per setting | outer zero-shot | logreg |", "|---|---|---|---|---|---|"]
        lines += [f"| {tag} | {f['fold']} | {f['config']} | " + ", ".join(f"{c} {v:.3f}" for c, v in f["inner_zero_shot"].items())
                  + f" | {f['zero_shot']:.3f} | {f['logreg']:.3f} |" for tag, r in results.items() for f in r["folds"]]
        lines += ["", "Settings: " + "; ".join(f"`{c}`: {' '.join(v) or '(the recipe)'}" for c, v in out["tune"].items())]
    Path(args.out + ".md").write_text(f"# align-speech-text, FSDD leave-one-speaker-out ({len(args.folds)} folds)\n\n`{out['command']}` "
                                      f"(commit {commit[:10]}, {out['machine']}, {out['wall_s']:.0f} s)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
