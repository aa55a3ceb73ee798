"""Does token dropping pay what it should? MAE with the encoder on visible tokens only vs the same
model with every token in the encoder (hidden ones as a mask embedding, SimMIM-style), next to the
speed-up ``torch.utils.flop_counter`` predicts from the two steps' FLOPs.

Both variants share encoder, decoder, mask ratio, batch and data (the medical 3-d configuration of
``medical_mae_step.py``); they alternate round by round in one process and the measured speed-up is
the median of per-round ratios. Target: at least 80% of the predicted speed-up at mask ratio 0.75.

    python benchmarks/token_dropping.py [--mask-ratio 0.75 --batch 4 --rounds 5]

Writes benchmarks/results/token_dropping[-cuda].json.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import LOAD_CAVEAT, time_steps, timing_lock, write_results  # noqa: E402
from benchmarks.medical_mae_step import PRESETS, make_inputs, volume_step_parser  # noqa: E402


def build(a, all_tokens: bool, device):
    from foundation.model import Encoder
    from foundation.objectives.mae import MAE
    from modalities.medical.adapter import MedicalAdapter

    adapter = MedicalAdapter({"patch": [a.patch] * 3, "roi": [a.size] * 3, "sw_roi": [a.size] * 3, "spacing": None, "cache": "none"})
    torch.manual_seed(0)
    enc = Encoder.build(adapter, {"width": a.width, "depth": a.depth, "heads": a.heads, "mlp_ratio": a.mlp / a.width})
    model = MAE(enc, {"kind": "random", "ratio": a.mask_ratio}, a.dec_width, a.dec_depth, a.dec_heads, mask_tokens_in_encoder=all_tokens)
    return model.to(device), adapter


def step_fn(model, batch, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        loss, _ = model(batch, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_flops(model, batch, device) -> int:
    """Forward + backward FLOPs of one step (matmuls, attention, convolutions), as flop_counter counts them."""
    gen = torch.Generator(device=device).manual_seed(0)
    with FlopCounterMode(display=False) as fc:
        loss, _ = model(batch, gen)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def main() -> None:
    ap = volume_step_parser(__doc__.splitlines()[0], steps=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for k, v in PRESETS[a.preset].items():
        setattr(a, k, v)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    started = time.time()
    drop, adapter = build(a, False, device)
    full, _ = build(a, True, device)
    batch, _, _ = make_inputs(a, adapter, device)
    flops = {"dropping": step_flops(drop, batch, device), "all_tokens": step_flops(full, batch, device)}
    steps = {"dropping": step_fn(drop, batch, device), "all_tokens": step_fn(full, batch, device)}
    with timing_lock():
        for _ in range(2):
            for s in steps.values():
                s()
        times = {k: [] for k in steps}
        for _ in range(a.rounds):
            for k, s in steps.items():
                times[k].append(time_steps(s, device, a.steps))
    predicted = flops["all_tokens"] / flops["dropping"]
    measured = statistics.median(f / d for d, f in zip(times["dropping"], times["all_tokens"]))
    payload = {"benchmark": "token_dropping", "settings": vars(a), "device": str(device),
               "gflops_per_step": {k: round(v / 1e9, 3) for k, v in flops.items()},
               "seconds_per_step": {k: round(statistics.median(v), 4) for k, v in times.items()},
               "per_round_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
               "predicted_speedup": round(predicted, 3), "measured_speedup": round(measured, 3),
               "fraction_of_predicted": round((measured - 1) / (predicted - 1), 3) if predicted > 1 else None,
               "ratio_of_speedups": round(measured / predicted, 3),
               "target": "measured speed-up >= 0.8 x predicted at mask ratio 0.75",
               "caveat": LOAD_CAVEAT if device.type == "cpu" else ""}
    name = "token_dropping" + ("" if a.preset == "default" else f"-{a.preset}") + ("-cuda" if device.type == "cuda" else "")
    out = write_results(name, payload, started, Path(a.out) if a.out else None)
    print(f"GFLOPs/step: dropping {flops['dropping'] / 1e9:.2f}, all tokens {flops['all_tokens'] / 1e9:.2f}; "
          f"speed-up predicted {predicted:.2f}x, measured {measured:.2f}x ({measured / predicted:.0%} of predicted); wrote {out}")


if __name__ == "__main__":
    main()
