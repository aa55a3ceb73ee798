"""``train.compile=true`` per modality recipe: does it train like eager, how fast, how often does it compile?

For each ``<modality>-mae`` CPU recipe on its synthetic data, the engine pretrains a few steps eagerly
and then compiled (same seed, same data order) in one process. Reported: the largest difference
between the two runs' logged losses, the steady rate of each (from the logged rates, excluding the
first logging window, where compilation happens) and dynamo's compile count for the compiled run (one per distinct block shape, plus one per
recompile when token counts change).

    python benchmarks/compile_recipes.py [--modalities speech graph ...] [--steps 30]

Writes benchmarks/results/compile_recipes.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import LOAD_CAVEAT, timing_lock, write_results  # noqa: E402
from benchmarks.loader_throughput import MODALITIES  # noqa: E402
from foundation.engine import pretrain  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from modalities.base import adapter_from_config  # noqa: E402


def steady_rate(metrics: Path, batch: int) -> float:
    """Samples/s between the first and last logged rows (the logged rate is cumulative from the start)."""
    rows = list(csv.DictReader(metrics.open()))
    (s0, r0), (s1, r1) = [(int(r["step"]), float(r["samples_per_s"])) for r in (rows[0], rows[-1])]
    t0, t1 = s0 * batch / r0, s1 * batch / r1
    if s1 <= s0 or t1 <= t0:  # a single logging window: fall back to the cumulative rate
        return r1
    return (s1 - s0) * batch / (t1 - t0)


def run(modality: str, a, work: Path) -> dict:
    base = load_recipe(f"{modality}-mae")
    spec_file = work / "data" / modality / "spec.json"
    if not spec_file.exists():
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec = adapter_from_config(base["modality"], base["adapter"]).synthetic(spec_file.parent / "data", a.n, seed=0)
        spec_file.write_text(json.dumps(spec))
    spec = json.loads(spec_file.read_text())
    out = {}
    for compiled in (False, True):
        run_dir = work / "runs" / f"{modality}-{'compiled' if compiled else 'eager'}"
        recipe = load_recipe(f"{modality}-mae", [f"data.{k}={v}" for k, v in spec.items()] + [
            f"run.dir={run_dir}", f"train.steps={a.steps}", f"train.log_every={a.log_every}", "train.checkpoint_every=100000",
            "train.monitor_every=100000", f"train.batch_size={a.batch}", "data.num_workers=0", f"train.compile={str(compiled).lower()}"])
        torch._dynamo.reset()
        pretrain(recipe, progress=False)
        summary = json.loads((run_dir / "summary.json").read_text())
        losses = [float(r["loss"]) for r in csv.DictReader((run_dir / "metrics.csv").open())]
        out[compiled] = {"rate": steady_rate(run_dir / "metrics.csv", a.batch), "losses": losses, "summary": summary}
    diff = max(abs(x - y) for x, y in zip(out[False]["losses"], out[True]["losses"]))
    return {"recipe": f"{modality}-mae", "steps": a.steps, "batch": a.batch,
            "eager_samples_per_s": round(out[False]["rate"], 1), "compiled_samples_per_s": round(out[True]["rate"], 1),
            "speedup": round(out[True]["rate"] / out[False]["rate"], 3),
            "compiles": out[True]["summary"].get("compile", {}).get("compiles"),
            "graphs": out[True]["summary"].get("compile", {}).get("graphs"),
            "max_abs_loss_diff": float(f"{diff:.2e}"), "losses": {"eager": out[False]["losses"], "compiled": out[True]["losses"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    rows = []
    with timing_lock(), tempfile.TemporaryDirectory() as tmp:
        for m in a.modalities:
            rows.append(run(m, a, Path(tmp)))
            r = rows[-1]
            print(f"{r['recipe']}: eager {r['eager_samples_per_s']} samples/s, compiled {r['compiled_samples_per_s']} "
                  f"({r['speedup']}x), dynamo compiles {r['compiles']}, max loss diff {r['max_abs_loss_diff']}", flush=True)
            # written after every recipe, so a run cut short by a time limit keeps what it measured
            out = write_results("compile_recipes", {"benchmark": "compile_recipes", "settings": vars(a), "rows": rows,
                                                    "caveat": LOAD_CAVEAT + "; eager and compiled run one after the other"}, started,
                                Path(a.out) if a.out else None)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
