"""ViT-B/16-sized pretraining steps on one GPU: samples/s, peak memory and MFU, eager and compiled,
beside timm's ViT-B/16 training step at equal tokens, all in one process.

Rows (bf16 autocast, fused AdamW, 224x224x3 images, 16x16 patches = 196 tokens):
- ``encoder@196`` / ``encoder@49``: our encoder alone, forward + backward + AdamW on all 196 tokens,
  and on the 49 visible tokens of a 0.75 mask (what the MAE encoder sees); ``timm@196`` / ``timm@49``:
  timm's ``vit_base_patch16_224`` on the same token counts (224 px and 112 px inputs), same loss form.
  The acceptance ratio is ours over timm at equal tokens.
- ``mae`` and ``jepa``: the whole objective step at the largest batch that fits (doubling until out
  of memory, capped by ``--max-batch``).
MFU = FLOPs per step (``torch.utils.flop_counter``, forward + backward, counted once at a small batch
and scaled by batch) x steps/s / the device's dense bf16 peak, looked up from its name.

    python benchmarks/gpu_step.py [--compile] [--smoke]     # --smoke: tiny sizes, runs on CPU too

Writes benchmarks/results/gpu_step[-smoke].json (commit, machine, wall time, dynamo counters).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import LOAD_CAVEAT, time_steps, timing_lock, write_results  # noqa: E402

# dense bf16 tensor-core peaks (vendor datasheets, without sparsity), matched by substring of the device name
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12),
             ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
             ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12)]


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16 if key in name), None)


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


class Bench:
    def __init__(self, a, device):
        from modalities.grid.adapter import GridAdapter

        self.a, self.device = a, device
        self.adapter = GridAdapter({"channels": 3, "patch": [a.patch, a.patch]})
        self.gen = torch.Generator(device=device).manual_seed(0)

    def batch(self, n: int, image: int):
        from foundation.tokens import collate

        g = torch.Generator().manual_seed(0)
        return collate([self.adapter.to_patches(torch.randn(3, image, image, generator=g)) for _ in range(n)]).to(self.device)

    def model(self, kind: str):
        from foundation.model import Encoder
        from foundation.objectives.jepa import JEPA
        from foundation.objectives.mae import MAE
        from foundation.trunk import compile_trunks

        a = self.a
        torch.manual_seed(0)
        if kind.startswith("timm"):
            import timm

            m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=a.image if kind == "timm@196" else a.image // 2,
                                  embed_dim=a.width, depth=a.depth, num_heads=a.heads, patch_size=a.patch)
            if a.compile:
                for b in m.blocks:
                    b.compile()
            return m.to(self.device)
        enc = Encoder(self.adapter, a.width, a.depth, a.heads)
        m = enc if kind.startswith("encoder") else MAE(enc, {"kind": "random", "ratio": 0.75}, a.dec_width, a.dec_depth, a.dec_heads) \
            if kind == "mae" else JEPA(enc, {"targets": 4}, a.pred_width, a.pred_depth, a.heads)
        if a.compile:
            compile_trunks(m)
        return m.to(self.device)

    def step_fn(self, kind: str, model, n: int):
        from foundation.masking import Visible
        from foundation.objectives.jepa import ema_update

        a, dev = self.a, self.device
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        teacher = model.make_teacher() if kind == "jepa" else None
        if kind.startswith("timm"):
            x = torch.randn(n, 3, *(2 * [a.image if kind == "timm@196" else a.image // 2]), device=dev)
            forward = lambda: model.forward_features(x).float().square().mean()  # noqa: E731
        else:
            b = self.batch(n, a.image)
            if kind == "encoder@49":
                # exactly a quarter of the tokens, unpadded (visible_tokens would round a GPU count up to a multiple of 16)
                n_tok = b.padding.shape[1]
                index = torch.rand(n, n_tok, generator=torch.Generator().manual_seed(0)).argsort(1)[:, : n_tok // 4].sort(1).values.to(dev)
                keep = Visible(index, torch.zeros_like(index, dtype=torch.bool), has_padding=False)
                forward = lambda: model(b, keep=keep).tokens.float().square().mean()  # noqa: E731
            elif kind == "encoder@196":
                forward = lambda: model(b).tokens.float().square().mean()  # noqa: E731
            else:
                forward = lambda: (model(b, self.gen, teacher=teacher) if teacher is not None else model(b, self.gen))[0]  # noqa: E731

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = forward()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if teacher is not None:
                ema_update(teacher, model.encoder, 0.996)

        return step, forward

    def largest_batch(self, kind: str) -> int:
        best, n = None, self.a.min_batch
        while n <= self.a.max_batch:
            try:
                model = self.model(kind)
                step, _ = self.step_fn(kind, model, n)
                step()
                step()
                best = n
            except torch.OutOfMemoryError:
                break
            finally:
                model = step = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            n *= 2
        return best or self.a.min_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="torch.compile every trunk block (ours) / block (timm)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check that the script runs)")
    ap.add_argument("--batch", type=int, default=128, help="batch for the timm-vs-ours rows")
    ap.add_argument("--min-batch", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    vit_b = dict(image=224, patch=16, width=768, depth=12, heads=12, dec_width=512, dec_depth=8, dec_heads=16, pred_width=384, pred_depth=6)
    tiny = dict(image=64, patch=16, width=48, depth=2, heads=4, dec_width=32, dec_depth=1, dec_heads=4, pred_width=32, pred_depth=1)
    for k, v in (tiny if a.smoke else vit_b).items():
        setattr(a, k, v)
    if a.smoke:
        a.batch, a.min_batch, a.max_batch, a.steps, a.rounds = 4, 2, 4, 2, 2
    device = torch.device(a.device)
    started = time.time()
    bench, peak = Bench(a, device), peak_flops(device)
    torch._dynamo.utils.counters.clear()

    def prepare(kind: str, n: int) -> dict:
        model = bench.model(kind)
        step, forward = bench.step_fn(kind, model, n)
        for _ in range(3):
            step()  # warm-up (and compilation)
        _, fwd_small = bench.step_fn(kind, model, min(n, 8))
        flops = flops_of(lambda: fwd_small().backward()) * n / min(n, 8)
        model.zero_grad(set_to_none=True)
        return {"kind": kind, "n": n, "step": step, "flops": flops, "times": []}

    def measure(*prepared: dict) -> list[dict]:
        """Alternate the prepared steps round by round; peak memory from the last round of each."""
        for _ in range(a.rounds):
            for p in prepared:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                p["times"].append(time_steps(p["step"], device, a.steps))
                p["mem"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        out = []
        for p in prepared:
            s = statistics.median(p["times"])
            out.append({"row": p["kind"], "batch": p["n"], "compiled": a.compile, "samples_per_s": round(p["n"] / s, 1),
                        "seconds_per_step": round(s, 5), "peak_mem_gib": None if p["mem"] is None else round(p["mem"], 2),
                        "tflops_per_step": round(p["flops"] / 1e12, 4), "mfu": None if peak is None else round(p["flops"] / s / peak, 4),
                        "per_round_seconds": [round(t, 5) for t in p["times"]]})
        return out

    rows = []
    with timing_lock():
        for tokens in (196, 49):  # ours vs timm at equal tokens, alternating rounds
            pair = measure(prepare(f"encoder@{tokens}", a.batch), prepare(f"timm@{tokens}", a.batch))
            pair[0]["vs_timm"] = round(statistics.median(t / o for o, t in zip(pair[0]["per_round_seconds"], pair[1]["per_round_seconds"])), 3)
            rows += pair
            print(pair[0]["row"], pair[0]["samples_per_s"], "vs timm", pair[1]["samples_per_s"], "ratio", pair[0]["vs_timm"], flush=True)
        for kind in ("mae", "jepa"):
            rows += measure(prepare(kind, bench.largest_batch(kind)))
            print(kind, rows[-1], flush=True)
    counters = {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if k in ("stats", "recompiles", "graph_break", "unimplemented")}
    name = "gpu_step" + ("-smoke" if a.smoke else "") + ("-compiled" if a.compile else "-eager")
    out = write_results(name, {"benchmark": "gpu_step", "settings": vars(a), "device": str(device), "peak_bf16_flops": peak,
                               "rows": rows, "dynamo_counters": counters, "caveat": "" if device.type == "cuda" else LOAD_CAVEAT},
                        started, Path(a.out) if a.out else None)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
