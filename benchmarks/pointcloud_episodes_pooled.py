"""Pool the few-shot episodes of several ModelNet10 results files into one paired comparison.

Why: a setting whose first 10 episodes leave a comparison open gets retested on fresh draws
(``pointcloud_modelnet10.py --episode-seed``). Reporting only the fresh draw would be optional
stopping; the honest summary is every episode ever drawn for that setting, pooled. This script
does that, and refuses files that are not one protocol: another fingerprint (shapes, split,
architecture), another pretrained encoder, other from-scratch settings, or a repeated episode seed
(the same episodes counted twice).

    python benchmarks/pointcloud_episodes_pooled.py benchmarks/results/pointcloud_modelnet10-jepa-gpu.json \\
        benchmarks/results/pointcloud_modelnet10-jepa-gpu-fresh-5w20s.json --setting 5w20s --tag jepa-gpu-5w20s-pooled

Writes ``benchmarks/results/pointcloud_modelnet10-<tag>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, write_results  # noqa: E402
from benchmarks.pointcloud_modelnet10 import FROZEN, build_parser, parse  # noqa: E402
from foundation.probes import paired_difference  # noqa: E402

SAME = ("sup_steps", "sup_batch", "sup_lr", "sup_precision", "steps")  # from-scratch and pretraining settings that must agree


def run_settings(res: dict) -> dict:
    """The flags a results file ran with, its argv read back by the benchmark's own parser, so a flag
    an older file predates takes its default (e.g. ``--sup-precision fp32``, ``--episode-seed 0``)."""
    return vars(parse(build_parser(), res["meta"]["argv"]))


def pool_episodes(results: dict[str, dict], setting: str) -> dict:
    """Every method's episode accuracies of ``setting``, concatenated file by file (the pairing holds within
    each file, so it holds in the concatenation), and the pretrained encoder's paired differences."""
    first_name, first = next(iter(results.items()))
    first_args = run_settings(first)
    seeds = {}
    for name, res in results.items():
        args = run_settings(res)
        if res.get("protocol") is None or res.get("protocol") != first.get("protocol"):
            raise SystemExit(f"{name}: protocol fingerprint {res.get('protocol')} differs from {first_name}'s {first.get('protocol')}")
        if res["svm_all_labels"]["pretrained"] != first["svm_all_labels"]["pretrained"]:
            raise SystemExit(f"{name}: another pretrained encoder (its all-labels SVM differs from {first_name}'s)")
        for key in SAME:
            if args[key] != first_args[key]:
                raise SystemExit(f"{name}: {key}={args[key]}, {first_name} has {first_args[key]}")
        seed = args["episode_seed"]
        if seed in seeds:
            raise SystemExit(f"{name} and {seeds[seed]} drew their episodes with the same seed {seed}: they would count twice")
        seeds[seed] = name
        if "accs" not in res["episodes"].get("pretrained", {}).get(setting, {}):
            raise SystemExit(f"{name}: no {setting} episodes")
    methods = [m for m in (*FROZEN, "scratch_supervised")
               if all("accs" in r["episodes"].get(m, {}).get(setting, {}) for r in results.values())]
    accs = {m: [a for r in results.values() for a in r["episodes"][m][setting]["accs"]] for m in methods}
    return {"setting": setting, "files": list(results), "episode_seeds": sorted(seeds), "episodes": len(accs["pretrained"]),
            "per_file": {n: len(r["episodes"]["pretrained"][setting]["accs"]) for n, r in results.items()},
            "mean": {m: sum(v) / len(v) for m, v in accs.items()}, "accs": accs,
            "comparison": {m: paired_difference(accs["pretrained"], accs[m]) for m in methods if m != "pretrained"}}


def markdown(p: dict, commit: str) -> str:
    lines = [f"# ModelNet10 few-shot episodes, {p['setting']}, pooled over every draw ({p['episodes']} episodes)", "",
             f"commit {commit}; files: " + ", ".join(f"`{Path(n).name}` ({p['per_file'][n]} episodes)" for n in p["files"])
             + f"; episode seeds {p['episode_seeds']}. Linear SVM per episode on frozen features, or the from-scratch model "
             "trained on the episode's support set; paired t-interval over all episodes.", "",
             "| method | mean accuracy |", "| --- | --- |"]
    lines += [f"| {m} | {v:.3f} |" for m, v in p["mean"].items()]
    lines += ["", "| paired difference, pretrained vs | mean | 95% CI | beats |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {'yes' if c['beats'] else 'no'} |"
              for m, c in p["comparison"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", type=Path, nargs="+", help="results files of pointcloud_modelnet10.py")
    ap.add_argument("--setting", required=True, help="an episode setting, e.g. 5w20s")
    ap.add_argument("--tag", required=True)
    args = ap.parse_args(argv)
    started = time.time()
    pooled = pool_episodes({str(f): json.loads(f.read_text()) for f in args.files}, args.setting)
    out = write_results(f"pointcloud_modelnet10-{args.tag}", pooled, started)
    payload = json.loads(out.read_text())  # with the commit, machine and wall time write_results added
    md = markdown(payload, payload["commit"])
    (RESULTS / f"pointcloud_modelnet10-{args.tag}.md").write_text(md)
    print(md)
    return payload


if __name__ == "__main__":
    main()
