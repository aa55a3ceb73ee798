"""One MAE training step: ours (medical adapter + core MAE) vs MONAI's ``MaskedAutoEncoderViT``.

Both run in this process with identical settings: input and patch size, width, depth, heads, MLP
width (MONAI's ``mlp_dim`` set explicitly), qkv bias, decoder width/depth/heads/MLP, mask ratio,
batch, threads, AdamW. The timed step is the whole step: forward (masking included), loss on the
masked patches' per-patch normalised targets, backward, optimiser. Inputs are prepared beforehand
for both (our tokens come from DataLoader workers in training; MONAI's loop also needs the target
patches). Peak memory: CUDA's allocator peak on a GPU; on CPU the peak of the profiler's
memory timeline for one step (tensor allocations made during the step, weights and optimiser state excluded).

    python benchmarks/medical_mae_step.py [--size 96 --patch 16 --width 384 --depth 6 ...]

Writes benchmarks/results/medical_mae_step.json (git commit, settings, machine, wall time).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import time_steps  # noqa: E402

warnings.filterwarnings("ignore")


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, cwd=Path(__file__).parent).strip()
    except Exception:
        return "unknown"


def build_ours(a, device):
    from foundation.model import Encoder
    from foundation.objectives.mae import MAE
    from modalities.medical.adapter import MedicalAdapter

    p = [a.patch] * 3
    adapter = MedicalAdapter({"patch": p, "roi": [a.size] * 3, "sw_roi": [a.size] * 3, "spacing": None, "cache": "none"})
    enc = Encoder.build(adapter, {"width": a.width, "depth": a.depth, "heads": a.heads, "mlp_ratio": a.mlp_ratio, "qkv_bias": True})
    return MAE(enc, {"kind": "random", "ratio": a.mask_ratio}, decoder_width=a.dec_width, decoder_depth=a.dec_depth, decoder_heads=a.dec_heads).to(device), adapter


def build_monai(a, device):
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(
        in_channels=1, img_size=[a.size] * 3, patch_size=[a.patch] * 3, hidden_size=a.width, mlp_dim=int(a.width * a.mlp_ratio),
        num_layers=a.depth, num_heads=a.heads, masking_ratio=a.mask_ratio, decoder_hidden_size=a.dec_width,
        decoder_mlp_dim=int(a.dec_width * a.mlp_ratio), decoder_num_layers=a.dec_depth, decoder_num_heads=a.dec_heads,
        qkv_bias=True, pos_embed_type="sincos", decoder_pos_embed_type="sincos",
    ).to(device)


def make_inputs(a, adapter, device):
    from foundation.tokens import collate
    from modalities.medical.dataset import to_tokens

    g = torch.Generator().manual_seed(0)
    images = torch.rand(a.batch, 1, a.size, a.size, a.size, generator=g)
    valid = torch.ones(1, a.size, a.size, a.size)
    batch = collate([to_tokens(img, valid, adapter.config, f"x{i}", "", None) for i, img in enumerate(images)]).to(device)
    # MONAI's patch order is its Conv3d's output order, i.e. the same (x, y, z) grid raster as ours
    return batch, images.to(device), batch.targets


def step_ours(model, opt, batch):
    loss, _ = model(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def step_monai(model, opt, images, targets):
    pred, mask = model(images)
    w = mask.unsqueeze(-1).float()
    loss = (((pred - targets) ** 2) * w).sum() / (w.sum() * pred.shape[-1])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def peak_memory(fn, device) -> float:
    """Peak bytes allocated during ``fn()`` (MB): CUDA allocator peak, or the CPU profiler's timeline."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    cur = peak = 0  # tensors alive before the step (weights, optimiser state) are PREEXISTING: not counted
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--mlp-ratio", type=float, default=4.0)
    ap.add_argument("--dec-width", type=int, default=96)  # MONAI's 3-d sin-cos needs a multiple of 6
    ap.add_argument("--dec-depth", type=int, default=2)
    ap.add_argument("--dec-heads", type=int, default=4)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "medical_mae_step.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    t0 = time.time()
    torch.manual_seed(0)
    ours, adapter = build_ours(a, device)
    theirs = build_monai(a, device)
    batch, images, targets = make_inputs(a, adapter, device)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_m = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    run_o = lambda: step_ours(ours, opt_o, batch)  # noqa: E731
    run_m = lambda: step_monai(theirs, opt_m, images, targets)  # noqa: E731
    for _ in range(2):  # warm-up (optimiser state, allocator, kernels)
        run_o()
        run_m()
    t_o, t_m = [], []
    for _ in range(a.rounds):  # alternate so background load hits both alike
        t_o.append(time_steps(run_o, device, a.steps))
        t_m.append(time_steps(run_m, device, a.steps))
    mem_o, mem_m = peak_memory(run_o, device), peak_memory(run_m, device)
    so, sm = a.batch / sorted(t_o)[len(t_o) // 2], a.batch / sorted(t_m)[len(t_m) // 2]
    params = {"ours": sum(p.numel() for p in ours.parameters()), "monai": sum(p.numel() for p in theirs.parameters())}
    res = {
        "benchmark": "medical_mae_step", "git_commit": git_commit(), "settings": vars(a), "device": str(device),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "samples_per_s": {"ours": so, "monai": sm}, "peak_memory_mb": {"ours": mem_o, "monai": mem_m},
        "speed_ratio_ours_over_monai": so / sm, "memory_ratio_ours_over_monai": mem_o / max(mem_m, 1e-9),
        "parameters": params, "wall_time_s": time.time() - t0, "seed": 0,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print("| model | samples/s | peak memory (MB) | parameters |\n|---|---|---|---|")
    print(f"| ours (domainfm medical MAE) | {so:.2f} | {mem_o:.0f} | {params['ours']:,} |")
    print(f"| MONAI MaskedAutoEncoderViT | {sm:.2f} | {mem_m:.0f} | {params['monai']:,} |")
    print(f"ratio ours/MONAI: speed {so / sm:.2f}x, memory {mem_o / max(mem_m, 1e-9):.2f}x  ({device}, {a.threads} threads, wrote {a.out})")


if __name__ == "__main__":
    main()
