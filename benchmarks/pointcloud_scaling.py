"""How grouping (FPS + kNN) and a training step cost grow with points per cloud: 1k, 8k, 32k.

Grouping runs in DataLoader workers on the CPU, once per sample; the training step (MAE, block
masking, Chamfer loss) runs on the device. Groups grow with the cloud (``points / 16`` centres,
capped at 512, of 32 points) as scene-scale Point-MAE variants do, so token counts grow too.

    OMP_NUM_THREADS=1 python benchmarks/pointcloud_scaling.py [--points 1024 8192 32768]

Writes ``benchmarks/results/pointcloud_scaling.json`` and ``.md`` (git commit, machine, wall time).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import lock_path, time_steps  # noqa: E402
from foundation.model import Encoder  # noqa: E402
from foundation.objectives.mae import MAE  # noqa: E402
from foundation.tokens import SampleTokens, collate  # noqa: E402
from modalities.base import adapter_class  # noqa: E402
from modalities.pointcloud.dataset import tokens_from_points  # noqa: E402
from modalities.pointcloud.ops import farthest_point_sample, knn  # noqa: E402


def acquire(lock, timeout: float | None) -> bool:
    """Take the shared benchmark lock; with ``timeout``, give up after that many seconds (returns False)."""
    if timeout is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return True
    end = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > end:
                print(f"benchmark lock still held after {timeout:.0f} s: timing anyway (recorded as had_benchmark_lock=false)")
                return False
            time.sleep(1)


def timed(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    """Mean seconds per call after one warm-up (GPU work included: time_steps synchronises)."""
    fn()  # warm-up
    return time_steps(fn, device, repeats)


def bench(n: int, args) -> dict:
    groups, k = min(512, n // 16), 32
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(n, 3, generator=g) * 2 - 1
    fps_s = timed(lambda: farthest_point_sample(xyz[None], groups), args.repeats)
    centres = xyz[farthest_point_sample(xyz[None], groups)[0]]
    knn_s = timed(lambda: knn(centres[None], xyz[None], k), args.repeats)
    group_s = timed(lambda: tokens_from_points(xyz, torch.zeros(n, 0), groups, k), args.repeats)
    adapter = adapter_class("pointcloud")({"points": n, "groups": groups, "group_size": k})
    device = torch.device(args.device)
    model = MAE(Encoder.build(adapter, {"width": args.width, "depth": args.depth, "heads": 4}), {"kind": "block", "ratio": 0.6, "blocks": 4}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = collate([SampleTokens(**tokens_from_points(xyz, torch.zeros(n, 0), groups, k)) for _ in range(args.batch)]).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step_s = timed(step, args.repeats, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"peak_mem_mb": peak, "points": n, "groups": groups, "group_size": k, "fps_ms": 1e3 * fps_s, "knn_ms": 1e3 * knn_s,
            "grouping_ms": 1e3 * group_s, "clouds_per_s_grouping": 1 / group_s, "train_step_s": step_s,
            "train_clouds_per_s": args.batch / step_s, "batch": args.batch}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[1024, 8192, 32768])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--lock-timeout", type=float, default=None,
                    help="seconds to wait for the shared timed-benchmark lock before running anyway (recorded in the results)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default="cpu", help="where the training step runs (grouping stays on the CPU, as in DataLoader workers)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the training step")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lock = open(lock_path(), "w")
    locked = acquire(lock, args.lock_timeout)  # timed benchmarks take turns
    try:
        rows = []
        for n in args.points:
            rows.append(bench(n, args))
            print(rows[-1], flush=True)
    finally:
        if locked:
            fcntl.flock(lock, fcntl.LOCK_UN)
    # growth exponent between consecutive sizes: cost ~ points^e
    for a, b in zip(rows, rows[1:]):
        r = np.log(b["points"] / a["points"])
        b["grouping_exponent"] = float(np.log(b["grouping_ms"] / a["grouping_ms"]) / r)
        b["train_step_exponent"] = float(np.log(b["train_step_s"] / a["train_step_s"]) / r)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = {"git_commit": commit, "argv": sys.argv[1:] if argv is None else argv, "device": args.device, "bf16": args.bf16,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                        "load_avg_end": os.getloadavg()}, "wall_s": time.perf_counter() - t0,
            "had_benchmark_lock": locked, "model": {"width": args.width, "depth": args.depth}, "batch": args.batch}
    where = f"training step on {meta['gpu']}{' (bf16)' if args.bf16 else ''}, grouping on the CPU" if meta["gpu"] else "CPU"
    lines = [f"# Point-cloud grouping and training-step cost vs points per cloud ({where}, {args.threads} thread(s))", "",
             f"commit {commit}, {meta['machine']['platform']}, {'' if locked else 'WITHOUT the benchmark lock (other jobs running), '}load avg at end {meta['machine']['load_avg_end'][0]:.1f}, "
             f"wall {meta['wall_s']:.0f} s; MAE width {args.width} depth {args.depth}, batch {args.batch}", "",
             "| points | groups x K | FPS ms | kNN ms | grouping ms/cloud | train step s | train clouds/s | peak MB (GPU) | cost exponent (grouping, step) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        exp = f"{r['grouping_exponent']:.2f}, {r['train_step_exponent']:.2f}" if "grouping_exponent" in r else "-"
        lines.append(f"| {r['points']} | {r['groups']} x {r['group_size']} | {r['fps_ms']:.1f} | {r['knn_ms']:.1f} | {r['grouping_ms']:.1f} | "
                     f"{r['train_step_s']:.3f} | {r['train_clouds_per_s']:.2f} | {r['peak_mem_mb']:.0f} | {exp} |")
    table = "\n".join(lines)
    name = "pointcloud_scaling" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / f"{name}.md").write_text(table + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
