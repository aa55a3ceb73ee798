"""align-s1s2 on the shared Sen1Floods11 chip: Sentinel-1 SAR <-> Sentinel-2 optical, 32-pixel windows.

The 512x512 chip's bottom-right quadrant is held out behind a 16-pixel buffer (no training crop touches it or
the buffer); training uses random 32x32 crops of the same place from the rest. On the held-out quadrant's
non-overlapping windows:
- recall@1/@5 in both directions against chance (k / windows), against CCA on per-window band statistics
  (mean and std per band, fitted on the training crops), and against random towers (the same architecture,
  backbones frozen at initialisation, heads trained the same way);
- cross-modal transfer: a logistic regression trained on S2 embeddings of the training crops to tell
  wetter-than-median windows (water fraction from the hand label) is applied to S1 embeddings of the held-out
  windows, against the majority-class rate.

    python benchmarks/align_s1s2.py --crops 800 --seeds 3
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
W, BUF = 32, 16


def read_chip(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import rasterio

    with rasterio.open(next(root.glob("*_S1Hand.tif"))) as r:
        s1 = r.read().astype(np.float32)
    with rasterio.open(next(root.glob("*_S2Hand.tif"))) as r:
        s2 = r.read().astype(np.float32) / 10000.0
    with rasterio.open(next(root.glob("*_LabelHand.tif"))) as r:
        label = r.read(1)
    s1 = np.where(np.isnan(s1), np.nanmean(s1, axis=(1, 2), keepdims=True), s1)  # SAR nodata: the band mean
    return s1, s2, label


def windows(s1, s2, label, crops: int, seed: int, out: Path) -> dict[str, list[dict]]:
    """Random training crops outside the held-out quadrant + buffer; a grid of held-out windows inside it."""
    rng = np.random.default_rng(seed)
    h = s1.shape[1]
    half = h // 2
    out.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "held": []}

    def save(kind, i, y, x):
        a, b = out / f"{kind}_{i}_s1.npy", out / f"{kind}_{i}_s2.npy"
        np.save(a, s1[:, y:y + W, x:x + W])
        np.save(b, s2[:, y:y + W, x:x + W])
        lab = label[y:y + W, x:x + W]
        rows[kind].append({"s1": str(a), "s2": str(b), "water": float((lab == 1).sum() / max(1, (lab >= 0).sum())),
                           "s1_stats": np.concatenate([s1[:, y:y + W, x:x + W].mean((1, 2)), s1[:, y:y + W, x:x + W].std((1, 2))]).tolist(),
                           "s2_stats": np.concatenate([s2[:, y:y + W, x:x + W].mean((1, 2)), s2[:, y:y + W, x:x + W].std((1, 2))]).tolist()})

    while len(rows["train"]) < crops:
        y, x = rng.integers(0, h - W + 1, 2)
        if y + W > half - BUF and x + W > half - BUF:  # touches the held-out quadrant or its buffer
            continue
        save("train", len(rows["train"]), y, x)
    for y in range(half + BUF, h - W + 1, W):
        for x in range(half + BUF, h - W + 1, W):
            save("held", len(rows["held"]), y, x)
    return rows


def cca_retrieval(train: list[dict], held: list[dict], dims: int = 4) -> dict:
    from sklearn.cross_decomposition import CCA
    from sklearn.preprocessing import StandardScaler

    from foundation.align_eval import retrieval

    a_tr, b_tr = np.array([r["s1_stats"] for r in train]), np.array([r["s2_stats"] for r in train])
    sa, sb = StandardScaler().fit(a_tr), StandardScaler().fit(b_tr)
    cca = CCA(n_components=dims, max_iter=2000).fit(sa.transform(a_tr), sb.transform(b_tr))
    za, zb = cca.transform(sa.transform(np.array([r["s1_stats"] for r in held])), sb.transform(np.array([r["s2_stats"] for r in held])))
    norm = lambda z: z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-9)
    return retrieval(norm(za), norm(zb), names=("s1", "s2"))


def main() -> None:
    from benchmarks.common import git_commit, machine
    from foundation.align_eval import retrieval
    from foundation.align_task import embed_rows, load_towers
    from foundation.cli import main as cli
    from foundation.pairs import PairedDataset, write_paired_manifest
    from foundation.probes import linear_probe, paired_difference

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "earth" / "sen1floods11"))
    p.add_argument("--crops", type=int, default=800)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--work", default="runs/bench_align_s1s2")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "align_s1s2"))
    args = p.parse_args()
    t0 = time.perf_counter()
    work = Path(args.work).resolve()  # manifest paths are absolute: a manifest's relative paths resolve from its own folder
    s1, s2, label = read_chip(Path(args.data))
    per_seed = []
    for seed in range(args.seeds):
        rows = windows(s1, s2, label, args.crops, seed, work / f"windows{seed}")
        train = write_paired_manifest(work / f"train{seed}.csv", rows["train"], ["s1", "s2"])
        held = write_paired_manifest(work / f"held{seed}.csv", rows["held"], ["s1", "s2"])
        res = {"seed": seed, "windows": len(rows["held"]), "cca": cca_retrieval(rows["train"], rows["held"])}
        for tag, mode in (("aligned", "train"), ("random", "frozen")):
            run = work / f"{tag}{seed}"
            extra = [f"run.seed={seed}", "--quiet", f"towers.s1.mode={mode}", f"towers.s2.mode={mode}"] + ([f"train.steps={args.steps}"] if args.steps else [])
            assert cli(["align", "align-s1s2", f"data.manifest={train}", f"align.eval_manifest={held}", f"run.dir={run}", *extra]) == 0
            res[tag] = json.loads((run / "align_eval.json").read_text())["s1|s2"]
            if tag == "aligned":  # cross-modal transfer: S2-trained water classifier applied to S1 embeddings
                towers = load_towers(run)
                specs = {n: {"kind": "encoder", "adapter": towers[n].encoder.adapter, "frozen": True} for n in ("s1", "s2")}
                dtr = PairedDataset(train, specs, train=False, work_dir=run / "tr")
                dte = PairedDataset(held, specs, train=False, work_dir=run / "te")
                z2 = embed_rows(towers["s2"], dtr, "s2", list(range(len(dtr))))
                z1 = embed_rows(towers["s1"], dte, "s1", list(range(len(dte))))
                cut = float(np.median([r["water"] for r in rows["train"]]))
                ytr = np.array([r["water"] > cut for r in rows["train"]], int)
                yte = np.array([r["water"] > cut for r in rows["held"]], int)
                lp = linear_probe(z2, ytr, z1, yte, seed=seed)
                res["transfer_s2_to_s1"] = {"accuracy": lp["accuracy"], "majority": float(max(yte.mean(), 1 - yte.mean())), "cut": cut}
        per_seed.append(res)
    keys = [f"{d} recall@{k}" for d in ("s1->s2", "s2->s1") for k in (1, 5)]
    summary = {"per_seed": per_seed, "wall_s": time.perf_counter() - t0, "command": " ".join(sys.argv),
               "commit": git_commit(), "machine": machine(), "crops": args.crops,
               "mean": {m: {k: float(np.mean([r[m][k] for r in per_seed])) for k in keys} for m in ("aligned", "random", "cca")},
               "chance": {k: per_seed[0]["aligned"][k.replace("recall", "chance")] for k in keys},
               "aligned_minus_cca": {k: paired_difference([r["aligned"][k] for r in per_seed], [r["cca"][k] for r in per_seed]) for k in keys},
               "transfer": paired_difference([r["transfer_s2_to_s1"]["accuracy"] for r in per_seed],
                                             [r["transfer_s2_to_s1"]["majority"] for r in per_seed])}
    Path(args.out + ".json").parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("mean", "chance", "aligned_minus_cca", "transfer", "wall_s")}, indent=2))


if __name__ == "__main__":
    main()
