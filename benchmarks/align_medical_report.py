"""align-medical-report: do scans and reports compose? Retrieval of the right report for held-out combinations.

Synthetic volumes (modalities/medical/report_synthetic.py) carry lesions of one finding (``nodule`` round,
``band`` elongated) on one side (``left``/``right``) in one count (``one``/``two``/``three``): 12 combinations,
each with its report ("two nodules on the left"). Three combinations (``HELD_OUT``) never appear in training;
every word does. Per seed (new volumes, new training seed):

- `domainfm align align-medical-report` (THE engine) trains both towers from scratch on the 9 seen combinations;
- the scan tower embeds volumes of the HELD-OUT combinations (`domainfm embed`'s path, ``embed_aligned``) and
  the report tower all 12 reports; recall@1 of the right report among all 12 (chance 1/12) and among the 3
  held-out reports (chance 1/3), plus how often the top report has the right finding, side and count;
- the same for new volumes of the seen combinations (in-distribution reference);
- the trivial baseline: a logistic regression (standardised, C by inner CV: foundation.probes.linear_probe)
  on per-volume intensity statistics (mean, std, 1/5/25/50/75/95/99% quantiles), 5-fold over all volumes of
  the seed, for the composition and for each part, against chance: it must sit near chance, or a win would
  prove nothing.

Intervals: mean over seeds of (held-out recall@1 - chance) with a 95% t-interval (foundation.probes.paired_difference).

    OMP_NUM_THREADS=1 python benchmarks/align_medical_report.py --seeds 5     # writes results/align_medical_report.json|md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARTS = ("finding", "side", "count")


def build(work: Path, seed: int, per_combo: int, held_per_combo: int, test_per_combo: int) -> dict[str, list[dict]]:
    from modalities.medical.report_synthetic import COMBOS, HELD_OUT, write_report_cohort

    seen = [c for c in COMBOS if c not in HELD_OUT]
    return {"train": write_report_cohort(work / "train", seen, per_combo, seed=1000 * seed),
            "held": write_report_cohort(work / "held", list(HELD_OUT), held_per_combo, seed=1000 * seed + 1),
            "seen_test": write_report_cohort(work / "seen_test", seen, test_per_combo, seed=1000 * seed + 2)}


def scores(z_scan: np.ndarray, z_text: np.ndarray, texts: list[str], rows: list[dict], gallery: list[str]) -> dict:
    """Recall@1 of each volume's report among ``gallery`` and whether the top report has each part right."""
    from modalities.medical.report_synthetic import COMBOS, report

    parts_of = {report(*c): dict(zip(PARTS, c)) for c in COMBOS}
    cols = [texts.index(t) for t in gallery]
    top = [gallery[i] for i in (z_scan @ z_text[cols].T).argmax(1)]
    out = {"recall@1": float(np.mean([t == r["report"] for t, r in zip(top, rows)])), "chance@1": 1 / len(gallery)}
    for part in PARTS:
        out[f"{part}_right"] = float(np.mean([parts_of[t][part] == r[part] for t, r in zip(top, rows)]))
    return out


def trivial_statistics(rows: list[dict], seed: int) -> dict:
    """5-fold logistic regression on intensity statistics: accuracy for the composition and each part, with
    chance, on an equal number of volumes per combination (so chance is 1/12, 1/2, 1/2, 1/3)."""
    from sklearn.model_selection import StratifiedKFold

    from foundation.probes import linear_probe
    from modalities.medical.report_synthetic import intensity_statistics

    per = min(sum(r["report"] == t for r in rows) for t in {r["report"] for r in rows})
    rows = [r for i, r in enumerate(rows) if sum(q["report"] == r["report"] for q in rows[:i]) < per]
    x = np.stack([intensity_statistics(r["path"]) for r in rows])
    out = {}
    for target in ("report", *PARTS):
        y = np.array([r[target] for r in rows])
        accs = [linear_probe(x[tr], y[tr], x[te], y[te], seed)["accuracy"]
                for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y)]
        out[target] = {"accuracy": float(np.mean(accs)), "chance": float(1 / len(set(y)))}
    return out


def one_seed(work: Path, seed: int, args) -> dict:
    from foundation.align_task import embed_aligned
    from foundation.cli import main as cli
    from foundation.pairs import write_paired_manifest
    from modalities.medical.report_synthetic import COMBOS, HELD_OUT, report

    sets = build(work / "data", seed, args.per_combo, args.held_per_combo, args.test_per_combo)
    rows = lambda s: [{"scan": r["path"], "report": r["report"]} for r in sets[s]]  # noqa: E731
    train = write_paired_manifest(work / "train.csv", rows("train"), ["scan", "report"])
    run = work / "run"
    extra = [f"train.steps={args.steps}"] if args.steps else []
    t0 = time.perf_counter()
    if not (run / "summary.json").exists():  # a finished seed of the same work directory is reused (adding seeds)
        assert cli(["align", args.recipe, f"data.manifest={train}", f"run.dir={run}", f"run.seed={seed}", "--quiet", *extra]) == 0
    train_s = time.perf_counter() - t0
    all_texts = [report(*c) for c in COMBOS]
    z_text = embed_aligned(run, texts=all_texts)["embeddings"]
    out = {"seed": seed, "train_s": train_s, "summary": json.loads((run / "summary.json").read_text()).get("final_loss")}
    for name, gallery_all in (("held", True), ("seen_test", True)):
        manifest = write_paired_manifest(work / f"{name}.csv", rows(name), ["scan", "report"])
        emb = embed_aligned(run, "scan", {"manifest": str(manifest)})
        z = emb["embeddings"]
        assert [str(p) for p in emb["paths"]] == [r["path"] for r in sets[name]]
        out[name] = {"all_12": scores(z, z_text, all_texts, sets[name], all_texts)}
        if name == "held":
            out[name]["held_3"] = scores(z, z_text, all_texts, sets[name], [report(*c) for c in HELD_OUT])
    out["trivial_statistics"] = trivial_statistics(sets["train"] + sets["held"] + sets["seen_test"], seed)
    return out


def markdown(summary: dict) -> str:
    from foundation.probes import format_interval

    r = summary["results"]
    mean = lambda f: float(np.mean([f(x) for x in r]))  # noqa: E731
    lines = [f"# align-medical-report: held-out report combinations ({summary['seeds']} seeds)", "",
             f"`{summary['command']}`, commit {summary['commit']}, {summary['machine']}, {summary['wall_s']:.0f} s, "
             f"{summary['settings']}", "",
             "| volumes | gallery | recall@1 | chance | finding right | side right | count right |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, gal, label in (("held", "all_12", "held-out combinations"), ("held", "held_3", "held-out combinations"),
                             ("seen_test", "all_12", "new volumes, seen combinations")):
        g = lambda k: mean(lambda x: x[name][gal][k])  # noqa: E731
        lines.append(f"| {label} | {gal.replace('_', ' ')} reports | {g('recall@1'):.3f} | {g('chance@1'):.3f} | "
                     f"{g('finding_right'):.3f} | {g('side_right'):.3f} | {g('count_right'):.3f} |")
    d = summary["held_recall_minus_chance"]
    lines += ["", f"Held-out recall@1 (all 12 reports) minus chance, over seeds: {format_interval(d)}", "",
              "Trivial baseline, logistic regression on intensity statistics (mean, std, quantiles), 5-fold:", "",
              "| target | accuracy | chance |", "| --- | --- | --- |"]
    for t in ("report", *PARTS):
        lines.append(f"| {t} | {mean(lambda x: x['trivial_statistics'][t]['accuracy']):.3f} | "
                     f"{mean(lambda x: x['trivial_statistics'][t]['chance']):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from benchmarks.common import git_commit, machine
    from foundation.probes import paired_difference

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="align-medical-report")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--per-combo", type=int, default=40, help="training volumes per seen combination")
    p.add_argument("--held-per-combo", type=int, default=10)
    p.add_argument("--test-per-combo", type=int, default=4)
    p.add_argument("--steps", type=int, default=500, help="0: the recipe's")
    p.add_argument("--work", default="runs/bench_align_medical_report")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "align_medical_report"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = [one_seed(Path(args.work) / f"seed{s}", s, args) for s in range(args.seeds)]
    held = [r["held"]["all_12"] for r in results]
    summary = {"seeds": args.seeds, "settings": f"{args.per_combo} training volumes per seen combination (9), "
               f"{args.held_per_combo} per held-out combination (3), steps {args.steps or 'recipe'}, 1 thread",
               "held_out": [list(c) for c in __import__("modalities.medical.report_synthetic", fromlist=["HELD_OUT"]).HELD_OUT],
               "results": results,
               "held_recall_minus_chance": paired_difference([h["recall@1"] for h in held], [h["chance@1"] for h in held]),
               "wall_s": time.perf_counter() - t0, "command": " ".join(sys.argv), "commit": git_commit(), "machine": machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(summary, indent=2))
    Path(args.out + ".md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
