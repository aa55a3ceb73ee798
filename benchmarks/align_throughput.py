"""Alignment step throughput and peak memory against global batch size (CPU, and GPU where one is available).

    python benchmarks/align_throughput.py                 # batches 16 32 64 128, writes results/align_throughput.json
    python benchmarks/align_throughput.py --small         # reduced, as CI runs it

One whole optimiser step (both towers forward, InfoNCE or SigLIP over the batch, backward, AdamW) of an
encoder tower (generic grid adapter, 64 tokens, width 128, depth 4) against a small local BERT text tower,
both trained, each batch size measured in a fresh process so the CPU's peak resident memory is its own.
On one process the global batch is the local batch; under DDP each process scores its rows against the
whole gathered batch, so the similarity matrix grows as local x global.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(batch: int, loss: str, steps: int, device_name: str, text_dir: str) -> dict:
    import resource

    import torch

    from benchmarks.common import time_steps
    from foundation.model import Encoder
    from foundation.objectives.align import AlignModel
    from foundation.pairs import PairBatch
    from foundation.tokens import collate
    from foundation.towers import EncoderTower, TextTower
    from modalities.grid.adapter import GridAdapter

    device = torch.device(device_name)
    torch.manual_seed(0)
    adapter = GridAdapter({"patch": [4, 4]})
    towers = {"x": EncoderTower("x", Encoder(adapter, 128, 4, 4), 128, mode="train"), "text": TextTower("text", text_dir, 128, mode="train")}
    model = AlignModel(towers, ["x|text"], kind=loss).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    xs = collate([adapter.to_patches(torch.randn(1, 32, 32, generator=g), id=str(i)) for i in range(batch)]).to(device)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    texts = [f"speaker {i % 7} says {words[i % 10]}" for i in range(batch)]
    b = PairBatch(("x", "text"), (xs, texts), ([str(i) for i in range(batch)], texts), torch.arange(batch))

    def step():
        l, _ = model(b)
        opt.zero_grad(set_to_none=True)
        l.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = time_steps(step, device, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"batch": batch, "loss": loss, "device": device.type, "steps_per_s": 1 / sec, "samples_per_s": batch / sec, "peak_mem_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="*", default=[16, 32, 64, 128])
    p.add_argument("--losses", nargs="*", default=["infonce", "siglip"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--small", action="store_true", help="batches 8 16, 3 steps")
    p.add_argument("--one", nargs=4, metavar=("BATCH", "LOSS", "STEPS", "DEVICE"), help=argparse.SUPPRESS)
    p.add_argument("--text-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], int(args.one[2]), args.one[3], args.text_dir)))
        return
    import torch

    from benchmarks.common import timing_lock, write_results
    from foundation.towers import build_tiny_text_tower

    started = time.time()
    batches, steps = ([8, 16], 3) if args.small else (args.batches, args.steps)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp, timing_lock():
        text_dir = build_tiny_text_tower(Path(tmp) / "text", [f"speaker {i} says {w}" for i in range(7) for w in
                                                              ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]])
        for device in devices:
            for loss in args.losses:
                for batch in batches:
                    out = subprocess.run([sys.executable, __file__, "--one", str(batch), loss, str(steps), device, "--text-dir", str(text_dir)],
                                         capture_output=True, text=True, check=True)
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    r = rows[-1]
                    print(f"{device} {loss:8s} batch {batch:4d}: {r['steps_per_s']:.2f} steps/s, {r['samples_per_s']:.0f} samples/s, "
                          f"peak {r['peak_mem_mb']:.0f} MB", flush=True)
    path = write_results("align_throughput" + ("_small" if args.small else ""), {"rows": rows, "steps": steps, "command": " ".join(sys.argv)}, started)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
