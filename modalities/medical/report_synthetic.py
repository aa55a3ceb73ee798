"""Synthetic scans with compositional reports (finding x side x count), for alignment with text.

Each volume is built like :func:`modalities.medical.synthetic.make_volume` (a textured body with organs,
a bias field, gain and Rician-like noise) and carries ``count`` lesions of one ``finding`` on one
``side`` of the body; its report says so: ``"two nodules on the left"``. Findings differ by SHAPE only
(``nodule``: round; ``band``: elongated, 3:1:1), with the same total lesion volume for every count and
finding and the same contrast distribution, and sides mirror each other; so per-volume intensity
statistics (mean, std, quantiles) carry next to nothing about the composition (the benchmark measures
that with a logistic regression), while the spatial layout carries all of it.

``HELD_OUT`` combinations never appear in training; every finding, side and count word does, so
retrieving the right report for a held-out combination needs the parts to compose.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np

from modalities.medical.synthetic import _ellipsoid, _rotation, _smooth_noise

FINDINGS = {"nodule": (1.0, 1.0, 1.0), "band": (3.0, 1.0, 1.0)}  # semi-axis ratios: round vs elongated
SIDES = ("left", "right")
COUNTS = {"one": 1, "two": 2, "three": 3}
COMBOS = list(itertools.product(FINDINGS, SIDES, COUNTS))
HELD_OUT = (("nodule", "left", "two"), ("band", "right", "one"), ("band", "left", "three"))
LESION_VOLUME = 0.02  # total lesion volume, as a fraction of the field of view, whatever the count


def report(finding: str, side: str, count: str) -> str:
    return f"{count} {finding}{'' if count == 'one' else 's'} on the {side}"


def _lesions(grid, centre, radii, rot, finding, side, count, rng, n):
    """Masks of ``count`` non-overlapping lesions inside the body on ``side``; None if they do not fit."""
    size = np.array(grid.shape[:3])
    body = ((((grid - centre) @ rot) / radii) ** 2).sum(-1) <= 1
    total = rng.uniform(0.85, 1.15) * LESION_VOLUME * n.prod()
    placed = np.zeros(tuple(size), bool)
    masks = []
    for _ in range(COUNTS[count]):
        vol = total / COUNTS[count] * rng.uniform(0.9, 1.1)
        axes = np.array(FINDINGS[finding]) * rng.uniform(0.9, 1.1, 3)
        radii_l = axes * (vol / (4 / 3 * np.pi * axes.prod())) ** (1 / 3)
        for _ in range(300):
            rot_l = _rotation(rng)
            c = centre + (rng.uniform(-0.7, 0.7, 3) * radii) @ rot.T
            off = c[0] - centre[0]  # axis 0 is left-right (RAS); a lesion sits wholly on its side
            if (side == "left" and off > -0.18 * radii.min()) or (side == "right" and off < 0.18 * radii.min()):
                continue
            m = _ellipsoid(grid, c, rot_l, radii_l)
            xs = np.nonzero(m.any((1, 2)))[0] - (size[0] - 1) / 2
            wholly = (xs < centre[0]).all() if side == "left" else (xs > centre[0]).all()
            if m.sum() and wholly and not (m & placed).any() and (m & body).sum() == m.sum():
                placed |= m
                masks.append(m)
                break
        else:
            return None
    return masks


def make_report_volume(finding: str, side: str, count: str, rng: np.random.Generator,
                       size: tuple[int, int, int] = (32, 32, 32)) -> np.ndarray:
    """One float32 volume with ``count`` lesions of ``finding`` shape on ``side`` (axis 0, RAS)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in size], indexing="ij"), -1)
    n = np.array(size, dtype=np.float32)
    for _ in range(50):
        centre = rng.uniform(-0.04, 0.04, 3) * n
        radii = rng.uniform(0.38, 0.46, 3) * n
        rot = _rotation(rng)
        masks = _lesions(grid, centre, radii, rot, finding, side, count, rng, n)
        if masks is not None:
            break
    else:
        raise RuntimeError(f"could not place {count} {finding} lesions on the {side} in {size}")
    coarse, mid, fine = (_smooth_noise(rng, size, k) for k in (6, 4, 3))
    body = ((((grid - centre) @ rot) / radii) ** 2).sum(-1) <= 1
    img = np.zeros(size, np.float32)
    base = rng.uniform(90, 110)
    img[body] = base + 8 * coarse[body]
    for _ in range(rng.integers(2, 5)):  # organs anywhere in the body, on either side alike
        r = rng.uniform(0.07, 0.15, 3) * n
        c = centre + (rng.uniform(-0.5, 0.5, 3) * radii) @ rot.T
        m = ((((grid - c) @ _rotation(rng)) / r) ** 2).sum(-1) <= 1
        m &= body
        img[m] = base + rng.choice([-1, 1]) * rng.uniform(15, 35) + 5 * mid[m]
    contrast = rng.uniform(50, 90)
    for m in masks:
        img[m] = base + contrast + 4 * fine[m]
    bias = np.exp(0.15 * _smooth_noise(rng, size, 16))
    img = img * bias * rng.uniform(0.85, 1.15)
    sigma = rng.uniform(3, 7)
    img = np.sqrt((img + sigma * rng.standard_normal(size)) ** 2 + (sigma * rng.standard_normal(size)) ** 2)
    return img.astype(np.float32)


def write_report_cohort(out_dir: str | Path, combos: list[tuple[str, str, str]], per_combo: int, seed: int = 0,
                        size: tuple[int, int, int] = (32, 32, 32), spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)) -> list[dict]:
    """``per_combo`` NIfTI volumes of each combination under ``out_dir``; rows with ``path``, ``report``,
    ``finding``, ``side``, ``count`` (paths absolute), in an order that cycles through the combinations."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    rows = []
    for i in range(per_combo):
        for finding, side, count in combos:
            img = make_report_volume(finding, side, count, np.random.default_rng(rng.integers(2**63)), size)
            path = out / f"{finding}_{side}_{count}_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(img, affine), str(path))
            rows.append({"path": str(path), "report": report(finding, side, count), "finding": finding, "side": side, "count": count})
    return rows


def intensity_statistics(path: str | Path) -> np.ndarray:
    """The trivial features a composition must not be read from: mean, std and quantiles of the volume."""
    v = np.asarray(nib.load(str(path)).dataobj, np.float32).ravel()
    return np.array([v.mean(), v.std(), *np.quantile(v, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])], np.float32)
