"""Training-step throughput and peak memory of one MAE and one JEPA configuration of the core.

    python benchmarks/core_throughput.py            # full table (ViT-S-like width, 196 tokens)
    python benchmarks/core_throughput.py --small    # reduced, as CI runs it

Times whole optimiser steps (forward, loss, backward, AdamW) on the generic grid adapter, so the
numbers are the core's cost, independent of any modality's I/O.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import time_steps, timing_lock, write_results  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.objectives.jepa import JEPA, ema_update  # noqa: E402
from foundation.objectives.mae import MAE  # noqa: E402
from foundation.tokens import collate  # noqa: E402
from modalities.grid.adapter import GridAdapter  # noqa: E402


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(objective: str, width: int, depth: int, heads: int, image: int, batch: int, steps: int, device, precision: str) -> dict:
    torch.manual_seed(0)
    adapter = GridAdapter({"channels": 3, "patch": [16, 16]})
    enc = Encoder(adapter, width, depth, heads)
    model = (MAE(enc, {"kind": "random", "ratio": 0.75}, 256, 4, 8) if objective == "mae"
             else JEPA(enc, {"targets": 4}, 192, 4, 6)).to(device)
    teacher = model.make_teacher().to(device) if objective == "jepa" else None
    opt = torch.optim.AdamW(model.parameters(), 1e-4, fused=device.type == "cuda" or None)
    data = collate([adapter.to_patches(torch.randn(3, image, image)) for _ in range(batch)]).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = model(data, g, teacher=teacher) if teacher is not None else model(data, g)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if teacher is not None:
            ema_update(teacher, model.encoder, 0.996)

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dt = time_steps(step, device, steps) * steps
    return {"objective": objective, "width": width, "depth": depth, "tokens": (image // 16) ** 2, "batch": batch,
            "precision": precision, "samples_per_s": round(batch * steps / dt, 1), "peak_mem_mb": round(peak_mb(device))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="reduced sizes (CI)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="no", choices=["no", "bf16"])
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = dict(width=96, depth=2, heads=4, image=64, batch=8, steps=3) if args.small else dict(width=384, depth=12, heads=6, image=224, batch=32 if device.type == "cuda" else 8, steps=10)
    started = time.time()
    with timing_lock():
        rows = [measure(obj, device=device, precision=args.precision, **cfg) for obj in ("mae", "jepa")]
    print(f"{'objective':>9} {'width':>5} {'depth':>5} {'tokens':>6} {'batch':>5} {'samples/s':>10} {'peak MB':>8}")
    for r in rows:
        print(f"{r['objective']:>9} {r['width']:>5} {r['depth']:>5} {r['tokens']:>6} {r['batch']:>5} {r['samples_per_s']:>10} {r['peak_mem_mb']:>8}")
    out = write_results("core_throughput" + ("_small" if args.small else f"_{device.type}"), {"rows": rows, "args": vars(args)}, started)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
