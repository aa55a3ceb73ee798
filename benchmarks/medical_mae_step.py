"""One 3-d pretraining step: our MAE and JEPA (medical adapter + core) vs MONAI's ``MaskedAutoEncoderViT``.

All three run in this process, alternating round by round so background load hits them alike; the
speed ratio reported is the median over rounds of the per-round ratio. Settings are identical where
the methods share them: input and patch size, width, depth, heads, MLP width (MONAI's ``mlp_dim`` set
explicitly), qkv bias, decoder width/depth/heads/MLP, mask ratio, batch, threads, AdamW (fused on a
GPU and CPU, for all). The timed step is the whole step: forward (masking included), loss on the masked
patches' per-patch normalised targets, backward, optimiser (plus the EMA update for JEPA). Inputs are
prepared beforehand (ours come from DataLoader workers in training). Peak memory: CUDA's allocator
peak on a GPU; on CPU the peak of the profiler's memory timeline for one step (tensors made during
the step; weights and optimiser state excluded).

A per-component profile (tokenizer, encoder, decoder or predictor, target encoder, head + loss,
masking and glue, backward, optimiser) comes from module hooks on separate, synchronised steps.

    python benchmarks/medical_mae_step.py                   # the shipped comparison (width 192)
    python benchmarks/medical_mae_step.py --preset monai768 # MONAI's defaults: width 768, decoder 384x4

Writes benchmarks/results/medical_mae_step[-PRESET][-cuda].json (commit, settings, machine, wall time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import LOAD_CAVEAT, time_steps, timing_lock, write_results  # noqa: E402

warnings.filterwarnings("ignore")

# MONAI MaskedAutoEncoderViT's defaults (hidden 768, mlp 512, 12 layers, 12 heads; decoder 384, mlp 512, 4 layers, 12 heads)
PRESETS = {
    "default": dict(width=192, depth=6, heads=6, mlp=768, dec_width=96, dec_depth=2, dec_heads=4, dec_mlp=384),
    "monai768": dict(width=768, depth=12, heads=12, mlp=512, dec_width=384, dec_depth=4, dec_heads=12, dec_mlp=512),
}


def build_ours(a, device):
    from foundation.model import Encoder
    from foundation.objectives.jepa import JEPA
    from foundation.objectives.mae import MAE
    from foundation.trunk import Transformer
    from modalities.medical.adapter import MedicalAdapter

    adapter = MedicalAdapter({"patch": [a.patch] * 3, "roi": [a.size] * 3, "sw_roi": [a.size] * 3, "spacing": None, "cache": "none"})
    cfg = {"width": a.width, "depth": a.depth, "heads": a.heads, "mlp_ratio": a.mlp / a.width, "qkv_bias": True}
    torch.manual_seed(0)
    mae = MAE(Encoder.build(adapter, cfg), {"kind": "random", "ratio": a.mask_ratio}, a.dec_width, a.dec_depth, a.dec_heads)
    mae.decoder = Transformer(a.dec_width, a.dec_depth, a.dec_heads, mlp_ratio=a.dec_mlp / a.dec_width)  # MONAI's decoder MLP width
    jepa = JEPA(Encoder.build(adapter, cfg), {"targets": 4}, a.dec_width, a.dec_depth, a.dec_heads)
    jepa.predictor = Transformer(a.dec_width, a.dec_depth, a.dec_heads, mlp_ratio=a.dec_mlp / a.dec_width)
    for m in (mae, jepa):  # a float MLP ratio must give exactly MONAI's hidden sizes
        assert m.encoder.trunk.blocks[0].mlp.fc1.out_features == a.mlp
    return mae.to(device), jepa.to(device), adapter


def build_monai(a, device):
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(
        in_channels=1, img_size=[a.size] * 3, patch_size=[a.patch] * 3, hidden_size=a.width, mlp_dim=a.mlp,
        num_layers=a.depth, num_heads=a.heads, masking_ratio=a.mask_ratio, decoder_hidden_size=a.dec_width,
        decoder_mlp_dim=a.dec_mlp, decoder_num_layers=a.dec_depth, decoder_num_heads=a.dec_heads,
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


class Clock:
    """Wall-clock marks around modules (forward hooks) and step phases, synchronising a GPU at each."""

    def __init__(self, device):
        self.device, self.spent, self.open = device, defaultdict(float), {}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def watch(self, module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.open.__setitem__(name, self.now()))
        module.register_forward_hook(lambda *_: self.spent.__setitem__(name, self.spent[name] + self.now() - self.open.pop(name)))


def profile_step(step_parts, watch, device, steps: int) -> dict:
    """Mean ms per component over ``steps`` synchronised steps. ``step_parts`` returns the forward
    loss, then runs backward and optimiser when called in turn; ``watch(clock)`` hooks modules."""
    clock = Clock(device)
    watch(clock)
    totals = defaultdict(float)
    for _ in range(steps):
        clock.spent.clear()
        t0 = clock.now()
        forward, backward, optimise = step_parts()
        loss = forward()
        t1 = clock.now()
        backward(loss)
        t2 = clock.now()
        optimise()
        t3 = clock.now()
        inside = dict(clock.spent)
        for k, v in inside.items():
            totals[k] += v
        totals["masking + glue + head + loss"] += (t1 - t0) - sum(inside.values())
        totals["backward"] += t2 - t1
        totals["optimiser"] += t3 - t2
    return {k: round(1000 * v / steps, 2) for k, v in totals.items()}


def peak_memory(fn, device) -> float:
    """Peak MB allocated during ``fn()``: CUDA allocator peak, or the CPU profiler's memory timeline."""
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


def volume_step_parser(description: str, steps: int) -> argparse.ArgumentParser:
    """The 3-d step configuration this benchmark and benchmarks/token_dropping.py share (volume, patch, mask
    ratio, batch, threads, steps per timing round), so both measure the same configuration by the same names."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=steps, help="steps per timing round")
    return ap


def main() -> None:
    ap = volume_step_parser(__doc__.splitlines()[0], steps=3)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median of per-round ratios)")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for all three (GPU)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for k, v in PRESETS[a.preset].items():
        setattr(a, k, v)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    started = time.time()
    ours, jepa, adapter = build_ours(a, device)
    teacher = jepa.make_teacher().to(device)
    theirs = build_monai(a, device)
    batch, images, targets = make_inputs(a, adapter, device)
    fused = True  # fused AdamW (CPU and GPU) for all three: the same optimiser, the fastest one
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=fused) for n, m in (("ours", ours), ("jepa", jepa), ("monai", theirs))}
    gen = torch.Generator(device=device).manual_seed(0)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16)

    def parts(name):
        model, opt = {"ours": ours, "jepa": jepa, "monai": theirs}[name], opts[name]

        def forward():
            with autocast():
                if name == "monai":
                    pred, mask = theirs(images)
                    w = mask.unsqueeze(-1).float()
                    return (((pred.float() - targets) ** 2) * w).sum() / (w.sum() * pred.shape[-1])
                return (model(batch, gen, teacher=teacher) if name == "jepa" else model(batch, gen))[0]

        def optimise():
            opt.step()
            opt.zero_grad(set_to_none=True)
            if name == "jepa":
                from foundation.objectives.jepa import ema_update

                ema_update(teacher, jepa.encoder, 0.996)

        return forward, lambda loss: loss.backward(), optimise

    def step(name):
        forward, backward, optimise = parts(name)
        backward(forward())
        optimise()

    names = ("ours", "jepa", "monai")
    with timing_lock():
        for _ in range(2):  # warm-up (optimiser state, allocator, kernels)
            for n in names:
                step(n)
        times = {n: [] for n in names}
        for _ in range(a.rounds):  # alternate so background load hits all three alike
            for n in names:
                times[n].append(time_steps(lambda: step(n), device, a.steps))
        memory = {n: peak_memory(lambda: step(n), device) for n in names}

        def watch_ours(clock):
            clock.watch(ours.encoder.tokenizer, "tokenizer")
            clock.watch(ours.encoder.trunk, "encoder")
            clock.watch(ours.decoder, "decoder")

        def watch_jepa(clock):
            clock.watch(jepa.encoder.tokenizer, "tokenizer")
            clock.watch(jepa.encoder.trunk, "encoder")
            clock.watch(teacher.trunk, "target encoder")
            clock.watch(jepa.predictor, "predictor")

        def watch_monai(clock):
            clock.watch(theirs.patch_embedding, "tokenizer")
            clock.watch(theirs.blocks, "encoder")
            clock.watch(theirs.decoder_blocks, "decoder")

        # hooks are added last, after every timed step, so they never touch the throughput numbers
        profile = {n: profile_step(lambda n=n: parts(n), w, device, a.profile_steps)
                   for n, w in (("ours", watch_ours), ("jepa", watch_jepa), ("monai", watch_monai))}
    sps = {n: a.batch / statistics.median(times[n]) for n in names}
    ratio = {n: statistics.median(tm / to for to, tm in zip(times[n], times["monai"])) for n in ("ours", "jepa")}
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("ours", ours), ("jepa", jepa), ("monai", theirs))}
    rows = [{"model": label, "samples_per_s": round(sps[n], 3), "peak_memory_mb": round(memory[n], 1), "parameters": params[n],
             "speed_vs_monai": round(ratio[n], 3) if n in ratio else 1.0, "memory_vs_monai": round(memory[n] / memory["monai"], 3)}
            for n, label in (("ours", "ours: MAE"), ("jepa", "ours: JEPA"), ("monai", "MONAI MaskedAutoEncoderViT"))]
    name = "medical_mae_step" + ("" if a.preset == "default" else f"-{a.preset}") + ("-cuda" if device.type == "cuda" else "")
    payload = {"benchmark": "medical_mae_step", "settings": vars(a), "device": str(device), "rows": rows,
               "speed_ratio_ours_over_monai": round(ratio["ours"], 3), "memory_ratio_ours_over_monai": round(memory["ours"] / memory["monai"], 3),
               "per_round_seconds": {n: [round(t, 4) for t in times[n]] for n in names},
               "profile_ms_per_step": profile, "seed": 0, "caveat": LOAD_CAVEAT if device.type == "cpu" else ""}
    out = write_results(name, payload, started, Path(a.out) if a.out else None)
    print("| model | samples/s | peak memory (MB) | parameters | speed vs MONAI | memory vs MONAI |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['samples_per_s']:.2f} | {r['peak_memory_mb']:.0f} | {r['parameters']:,} | {r['speed_vs_monai']:.2f}x | {r['memory_vs_monai']:.2f}x |")
    print("profile (ms per step):")
    for n, p in profile.items():
        print(f"  {n}: " + ", ".join(f"{k} {v}" for k, v in p.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
