"""Where a ``pointcloud-*-gpu`` pretraining spends its time: the DataLoader alone (grouping runs in its
workers) against the training step alone on one fixed batch (no loader). When a whole run's rate sits
well below both, the workers and the main process are competing for the machine's cores.

    python benchmarks/pointcloud_gpu_bounds.py DATA_ROOT [--seconds 6] [--workers 1,4,14] [--batches 64,128]

Prints one line per part (clouds/s). A measurement for a lent GPU; it asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import time_steps, timing_lock  # noqa: E402
from foundation.data import TrainSampler, train_loader  # noqa: E402
from foundation.engine import build_objective  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.recipes import load_recipe  # noqa: E402
from foundation.tokens import collate  # noqa: E402
from modalities.base import adapter_class  # noqa: E402


def loader_rate(dataset, workers: int, batch: int, seconds: float, pin: bool) -> float:
    """Clouds/s the DataLoader delivers with ``workers`` workers, epochs restarted as they end."""
    loader = train_loader(dataset, TrainSampler(len(dataset), batch), {"num_workers": workers, "persistent_workers": True,
                                                                        "pin_memory": pin})
    it = iter(loader)
    for _ in range(max(2, workers)):  # every worker has started and read its files once
        next(it)
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        try:
            n += next(it).patches.shape[0]
        except StopIteration:
            it = iter(loader)
    return n / (time.perf_counter() - t)


def step_rate(recipe: dict, adapter, dataset, batch_size: int, seconds: float, device: str) -> float:
    """Clouds/s of the objective's training step (bf16 on CUDA; forward, backward, optimiser, without the
    engine's EMA update) repeated on one fixed batch, timed by the benchmarks' GPU-synchronised timer for
    about ``seconds``."""
    torch.manual_seed(0)
    model = build_objective(recipe, Encoder.build(adapter, recipe["model"])).to(device)
    teacher = model.make_teacher().to(device) if hasattr(model, "make_teacher") else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = collate([dataset[(i, i)] for i in range(batch_size)]).to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, _ = model(batch, gen, teacher=teacher) if teacher is not None else model(batch, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # the engine syncs once per step too

    for _ in range(4):
        step()
    steps = max(5, round(seconds / time_steps(step, torch.device(device), 1)))  # one more warm-up step sizes the run
    return batch_size / time_steps(step, torch.device(device), steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a folder of point clouds (e.g. ModelNet10)")
    ap.add_argument("--recipe", default="pointcloud-jepa-gpu")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per part")
    ap.add_argument("--workers", default="1,4,14")
    ap.add_argument("--batches", default="64,128")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    recipe = load_recipe(args.recipe, [f"data.root={args.root}"])
    adapter = adapter_class(recipe["modality"])(recipe["adapter"])
    dataset = adapter.dataset(recipe["data"], train=True)
    with timing_lock():  # timed benchmarks take turns
        for w in (int(v) for v in args.workers.split(",")):
            print(f"loader alone: {w} workers, batch 64: {loader_rate(dataset, w, 64, args.seconds, device == 'cuda'):.0f} clouds/s",
                  flush=True)
        for b in (int(v) for v in args.batches.split(",")):
            print(f"step alone ({device}): batch {b}: {step_rate(recipe, adapter, dataset, b, args.seconds, device):.0f} clouds/s",
                  flush=True)


if __name__ == "__main__":
    main()
