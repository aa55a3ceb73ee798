"""How does a 13-band EuroSAT encoder embed the same chips given only 4 bands (B02 B03 B04 B08)?

Every EuroSAT chip of the shared data is written again with only those 4 bands, named in its band
descriptions, and embedded through ``foundation.load_encoder`` (the files' descriptions choose the bands; the
export's band views are restricted to them). Reported: the cosine between a chip's 4-band and 13-band
embeddings, and leave-one-out 1-nearest-neighbour land-cover accuracy (standardised features, cosine) with
13 bands, with 4 bands, and 4-band queries against the 13-band gallery.

    python benchmarks/earth_band_subset.py ENCODER_DIR     # an export or a run directory of earth-mae on EuroSAT
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import foundation  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

EUROSAT = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
SUBSET = ["B02", "B03", "B04", "B08"]


def standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (x - ref.mean(0)) / (ref.std(0) + 1e-8)


def one_nn(query: np.ndarray, gallery: np.ndarray, yq: np.ndarray, yg: np.ndarray, same: bool) -> float:
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sim = q @ g.T
    np.fill_diagonal(sim, -np.inf)  # leave one out (the same chip, 13- or 4-band, is never its own neighbour)
    return float((yg[sim.argmax(1)] == yq).mean())


def main(encoder_dir: str) -> None:
    t0 = time.time()
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "earth" / "eurosat_ms"
    chips = sorted(root.rglob("*.tif"))
    labels = np.array([c.parent.name for c in chips])
    idx = [EUROSAT.index(b) + 1 for b in SUBSET]
    with tempfile.TemporaryDirectory() as tmp:
        subset = []
        for i, chip in enumerate(chips):
            with rasterio.open(chip) as s:
                data, profile = s.read(idx), s.profile
            profile.update(count=len(idx))
            path = Path(tmp) / f"{i:04d}.tif"
            with rasterio.open(path, "w", **profile) as d:
                d.write(data)
                d.descriptions = tuple(SUBSET)
            subset.append(path)
        full = foundation.load_encoder(encoder_dir).embed(chips).embeddings
        four = foundation.load_encoder(encoder_dir).embed(subset).embeddings
    cos = (full * four).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(four, axis=1))
    fs, ff = standardise(full, full), standardise(four, four)
    result = {
        "encoder": str(encoder_dir), "chips": len(chips), "classes": int(len(set(labels))), "bands_subset": SUBSET,
        "pooling": foundation.load_encoder(encoder_dir).pooling,
        "cosine_4band_vs_13band": {"mean": float(cos.mean()), "min": float(cos.min())},
        "loo_1nn_accuracy": {"13_bands": one_nn(fs, fs, labels, labels, True), "4_bands": one_nn(ff, ff, labels, labels, True),
                             "4band_queries_vs_13band_gallery": one_nn(standardise(four, full), fs, labels, labels, False)},
        "chance": 1 / len(set(labels)),
    }
    print(write_results("earth_band_subset", result, t0))
    print(result)


if __name__ == "__main__":
    main(sys.argv[1])
