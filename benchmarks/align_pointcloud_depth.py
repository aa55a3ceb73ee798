"""align-pointcloud-depth and bind-text on ModelNet10: point clouds paired with depth maps rendered from them.

Depth maps: each shape normalised to the unit sphere, turned by a random yaw about its up axis, an
independent random half of its points projected orthographically onto a 32x32 grid, and the nearest point
kept per pixel (z-buffer); background 0. They are read by the generic grid adapter (.npy), the point clouds by
the point-cloud adapter (.pcd as shipped). Shapes are split per class into disjoint sets:

- ``--task pair`` (align-pointcloud-depth): instance pairs (pointcloud, depth) on the training shapes; on
  held-out shapes, instance retrieval recall@1/5 both ways against chance (1/N, 5/N).
- ``--task bind`` (bind-text): set A gives (pointcloud, depth) pairs, set B (depth, class text) pairs, with
  the depth tower as the anchor; on held-out shapes the point-cloud tower, never paired with text, classifies
  zero-shot through the text tower (emergent), against chance, over ``--seeds`` seeds with a 95% interval.

    python benchmarks/align_pointcloud_depth.py --task pair --per-class 40
    python benchmarks/align_pointcloud_depth.py --task bind --per-class 60 --seeds 3
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def render_depth(xyz: np.ndarray, rng: np.random.Generator, size: int = 32, keep: float = 0.5) -> np.ndarray:
    """z-buffer depth [1, size, size] of a random half of the points after a random yaw about z."""
    p = xyz - xyz.mean(0)
    p = p / (np.linalg.norm(p, axis=1).max() + 1e-9)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    p = p[rng.random(len(p)) < keep] @ rot.T
    u = np.clip(((p[:, 1] + 1) / 2 * size).astype(int), 0, size - 1)
    v = np.clip(((1 - (p[:, 2] + 1) / 2) * size).astype(int), 0, size - 1)
    depth = (p[:, 0] + 1) / 2  # nearer to a camera on +x = larger
    img = np.zeros((size, size), np.float32)
    np.maximum.at(img, (v, u), depth.astype(np.float32))
    return img[None]


def build(data: Path, work: Path, per_class: int, seed: int) -> dict[str, list[dict]]:
    """Depth maps for ``per_class`` shapes of every class, split 40/40/20 into sets A, B and held-out."""
    from modalities.pointcloud.io import read_pcd

    rng = np.random.default_rng(seed)
    (work / "depth").mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    sets = {"A": [], "B": [], "held": []}
    for c, name in enumerate(classes):
        files = sorted((data / name).glob("*.pcd"))
        files = [files[i] for i in rng.permutation(len(files))[:per_class]]
        for i, f in enumerate(files):
            d = work / "depth" / f"{f.stem}.npy"
            if not d.exists():
                np.save(d, render_depth(read_pcd(f).xyz, rng))
            row = {"pointcloud": str(f), "depth": str(d), "text": name.replace("_", " "), "label": c}
            sets["A" if i < 0.4 * len(files) else "B" if i < 0.8 * len(files) else "held"].append(row)
    return sets


def main() -> None:
    from benchmarks.common import git_commit, machine
    from foundation.align_eval import retrieval
    from foundation.cli import main as cli
    from foundation.pairs import write_paired_manifest
    from foundation.probes import paired_difference

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["pair", "bind"], default="pair")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pointcloud" / "modelnet10"))
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--work", default="runs/bench_align_pointcloud_depth")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "align_pointcloud_depth"))
    args = p.parse_args()
    t0 = time.perf_counter()
    work = Path(args.work).resolve()  # manifest paths are absolute: a manifest's relative paths resolve from its own folder
    sets = build(Path(args.data), work, args.per_class, 0)
    results = []
    for seed in range(args.seeds):
        run = work / f"{args.task}-seed{seed}"
        extra = [f"run.seed={seed}", "--quiet"] + ([f"train.steps={args.steps}"] if args.steps else [])
        if args.task == "pair":
            train = write_paired_manifest(work / "pair_train.csv", sets["A"] + sets["B"], ["pointcloud", "depth"])
            held = write_paired_manifest(work / "pair_held.csv", sets["held"], ["pointcloud", "depth"])
            assert cli(["align", "align-pointcloud-depth", f"data.manifest={train}", f"align.eval_manifest={held}", f"run.dir={run}", *extra]) == 0
            ev = json.loads((run / "align_eval.json").read_text())["pointcloud|depth"]
            results.append({k: v for k, v in ev.items() if "@1" in k or "@5" in k or "median" in k})
        else:
            train = write_paired_manifest(work / "bind_train.csv", [{**r, "text": None, "label": None} for r in sets["A"]] +
                                          [{**r, "pointcloud": None} for r in sets["B"]], ["pointcloud", "depth", "text", "label"])
            held = write_paired_manifest(work / "bind_held.csv", [{**r, "depth": None} for r in sets["held"]], ["pointcloud", "text", "label"])
            assert cli(["align", "bind-text", f"data.manifest={train}", f"align.eval_manifest={held}", f"run.dir={run}", *extra]) == 0
            ev = json.loads((run / "align_eval.json").read_text())
            results.append({"zero_shot": ev["zero_shot"]["accuracy"], "chance": ev["zero_shot"]["chance"],
                            **{k: v for k, v in ev["pointcloud|text"].items() if "@1" in k}})
    summary = {"task": args.task, "per_class": args.per_class, "seeds": args.seeds, "results": results,
               "wall_s": time.perf_counter() - t0, "command": " ".join(sys.argv),
               "commit": git_commit(), "machine": machine()}
    if args.task == "bind":
        summary["zero_shot_minus_chance"] = paired_difference([r["zero_shot"] for r in results], [r["chance"] for r in results])
    Path(args.out + f"_{args.task}.json").parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + f"_{args.task}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
