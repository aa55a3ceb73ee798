"""Does the input pipeline keep up? Loader throughput vs training-step throughput for each modality's
CPU recipe (``<modality>-mae``), on the adapter's synthetic data.

Both are measured on the same core, one thread, alternating round by round: a round times the
production of ``--batches`` batches (dataset reads, preprocessing, tokenising, collate: what DataLoader
workers do) and then the recipe's training step on those same batches (forward, backward, AdamW). So
the ratio is "how many steps one loader core feeds"; with ``num_workers`` cores loading, multiply.
Rounds start after one whole epoch has been read (what a run of many epochs sees: the medical disk
cache is filled); the first epoch's loader rate is reported beside it.
Target: loader at least 2x the step (loading then costs at most a third of a single-core run).

    python benchmarks/loader_throughput.py [--modalities medical earth ...] [--n 96 --rounds 3]

Writes benchmarks/results/loader_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import LOAD_CAVEAT, timing_lock, write_results  # noqa: E402
from foundation.data import TrainSampler, train_loader  # noqa: E402
from foundation.engine import build_objective, param_groups  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from modalities.base import adapter_from_config  # noqa: E402

MODALITIES = ("medical", "earth", "speech", "pointcloud", "graph")


def setup(modality: str, n: int, work: Path, overrides: list[str] = ()):
    base = load_recipe(f"{modality}-mae", list(overrides))
    data_dir = work / modality
    spec_file = data_dir / "spec.json"
    if not spec_file.exists():  # generated once, reused by later runs
        spec = adapter_from_config(base["modality"], base["adapter"]).synthetic(data_dir / "data", n, seed=0)
        spec_file.write_text(json.dumps(spec))
    spec = json.loads(spec_file.read_text())
    recipe = load_recipe(f"{modality}-mae", [f"data.{k}={v}" for k, v in spec.items()] + ["data.num_workers=0"] + list(overrides))
    adapter = adapter_from_config(recipe["modality"], recipe["adapter"])
    dataset = adapter.dataset(recipe["data"], train=True)
    adapter.fit(dataset)
    torch.manual_seed(0)
    model = build_objective(recipe, Encoder.build(adapter, recipe["model"]))
    opt = torch.optim.AdamW(param_groups(model, recipe["train"]["weight_decay"]), lr=1e-4, fused=True)
    bs = min(int(recipe["train"]["batch_size"]), len(dataset))
    sampler = TrainSampler(len(dataset), bs, seed=0, lengths=getattr(dataset, "lengths", None))
    return recipe, model, opt, train_loader(dataset, sampler, recipe["data"]), sampler


def measure(modality: str, a, work: Path) -> dict:
    recipe, model, opt, loader, sampler = setup(modality, a.n, work, a.override)
    gen = torch.Generator().manual_seed(0)
    epoch = 0

    def batches():
        nonlocal epoch
        while True:
            sampler.set_position(epoch)
            yield from loader
            epoch += 1

    source = batches()

    def step(batch):
        loss, _ = model(batch, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(next(source))  # warm-up: optimiser state, allocator
    t, seen = time.perf_counter(), 0
    for _ in range(sampler.batches_per_epoch - 1):  # the rest of the first epoch fills dataset caches (medical: disk cache)
        seen += next(source).size
    first_epoch = seen / max(time.perf_counter() - t, 1e-9)
    load_s, step_s = [], []
    for _ in range(a.rounds):
        t = time.perf_counter()
        got = [next(source) for _ in range(a.batches)]
        load_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for b in got:
            step(b)
        step_s.append(time.perf_counter() - t)
    bs = got[0].size
    ratio = statistics.median(s / ld for ld, s in zip(load_s, step_s))
    return {"modality": modality, "recipe": f"{modality}-mae", "batch_size": bs,
            "loader_samples_per_s": round(a.batches * bs / statistics.median(load_s), 1),
            "step_samples_per_s": round(a.batches * bs / statistics.median(step_s), 1),
            "loader_over_step": round(ratio, 2), "first_epoch_loader_samples_per_s": round(first_epoch, 1), "meets_2x": ratio >= 2.0,
            "per_round_seconds": {"load": [round(x, 3) for x in load_s], "step": [round(x, 3) for x in step_s]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    ap.add_argument("--n", type=int, default=96, help="synthetic samples per modality")
    ap.add_argument("--batches", type=int, default=2, help="batches per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default="/tmp/domainfm-loader-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--override", nargs="*", default=[], help="recipe overrides key=value for every modality measured "
                    "(e.g. --modalities pointcloud --override adapter.sampling=random)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    rows = []
    with timing_lock():
        for m in a.modalities:
            rows.append(measure(m, a, Path(a.work)))
            r = rows[-1]
            print(f"{m:>10}: loader {r['loader_samples_per_s']:8.1f} samples/s, step {r['step_samples_per_s']:7.1f} samples/s, "
                  f"loader/step {r['loader_over_step']:.2f}x", flush=True)
    out = write_results("loader_throughput", {"benchmark": "loader_throughput", "settings": vars(a), "rows": rows,
                                              "target": "loader >= 2x step per core", "caveat": LOAD_CAVEAT}, started,
                        Path(a.out) if a.out else None)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
