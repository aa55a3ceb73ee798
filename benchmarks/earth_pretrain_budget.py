"""Pretrain several earth-mae variants side by side within one wall-clock budget (issue 6: does longer
or wider-batch pretraining close the EuroSAT gap to band mean/std?).

A borrowed GPU comes for minutes, and a schedule's length must be fixed before training starts (the
learning rate decays to zero at the last step), so each variant is first timed on a short run and then
given as many steps as the budget allows, all variants at once (a small model leaves the GPU mostly idle,
so they share it well). Each variant is an ``earth_eurosat.py`` pretraining (``--sections none``) in its own
work folder; its encoder and summary are packed so ``earth_eurosat.py`` can probe it later on a CPU with the
same ``--steps`` and ``--override`` (the run folder is named by them).

    python benchmarks/earth_pretrain_budget.py --budget-s 420 --out OUT \\
        --variant b32="data.num_workers=4" --variant b256="train.batch_size=256 train.lr=3e-3 data.num_workers=4"
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "earth_eurosat.py"


def launch(work: Path, steps: int, overrides: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(BENCH), "--work", str(work), "--steps", str(steps), "--sections", "none",
           "--override", *overrides]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def run_dir(work: Path, steps: int) -> Path:
    return next(work.glob(f"run-{steps}-*"))


def wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"variant {name} failed:\n{logs[name].read_text()[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, required=True, help="wall-clock seconds for everything, calibration included")
    ap.add_argument("--variant", action="append", required=True, help="NAME=\"override override ...\"")
    ap.add_argument("--calib-steps", type=int, default=200)
    ap.add_argument("--round", type=int, default=1000, help="main-run steps are rounded down to a multiple of this")
    ap.add_argument("--safety", type=float, default=0.8, help="share of the remaining budget planned for training")
    ap.add_argument("--work", default="/tmp/earth-budget")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    variants = {v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in args.variant}
    root, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    logs = {n: root / f"{n}-calib.log" for n in variants}

    # 1. time each variant on a short run, all at once (as they will run)
    procs = {n: launch(root / f"calib-{n}", args.calib_steps, o, logs[n]) for n, o in variants.items()}
    wait_all(procs, logs)
    per_step = {}
    for n, o in variants.items():
        s = json.loads((run_dir(root / f"calib-{n}", args.calib_steps) / "summary.json").read_text())
        per_step[n] = s["wall_s"] / args.calib_steps  # includes start-up: errs on the short side
    left = args.budget_s - (time.perf_counter() - t0)
    startup = 30.0
    steps = {n: int((left - startup) * args.safety / per_step[n]) // args.round * args.round for n in variants}
    print(json.dumps({"calibration_s": time.perf_counter() - t0, "s_per_step": per_step, "steps": steps}), flush=True)
    # a variant whose schedule cannot end inside the budget is dropped, not started: killed at the limit it
    # would leave nothing (on an H200, 3 variants x 4 workers fed only ~700 chips/s each: input-bound)
    variants = {n: o for n, o in variants.items() if steps[n] > 0}
    if not variants:
        raise SystemExit("no variant fits the budget: fewer variants, a smaller batch, or a longer budget")

    # 2. the main runs, all at once
    logs = {n: out / f"{n}.log" for n in variants}
    procs = {n: launch(root / n, steps[n], o, logs[n]) for n, o in variants.items()}
    for n, o in variants.items():  # each packed as soon as it ends: a later one overrunning loses only itself
        wait_all({n: procs[n]}, logs)
        rd = run_dir(root / n, steps[n])
        with tarfile.open(out / f"{n}.tgz", "w:gz") as tar:
            for part in ("encoder", "summary.json", "metrics.csv", "recipe.yaml"):
                tar.add(rd / part, arcname=f"{rd.name}/{part}")
        print(n, rd.name, (rd / "summary.json").read_text(), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
