"""A synthetic cohort of labelled 3-d scans with segmentation masks, written as NIfTI with spacing.

Each volume holds a body (ellipsoid with smooth texture), several organs of random size, position and
contrast, and bright lesions whose *spread* is the class: two larger foci (``oligofocal``) or eight small ones
(``multifocal``, as in multifocal disease), with the same total lesion volume and the
same contrast distribution in both classes. So the per-volume mean, std and histogram do not give
the class away (a test checks this); seeing how the lesion burden is laid out in space does. A
multiplicative bias field, Rician-like noise and a random global gain make it scanner-like.

Segmentation labels: 0 background, 1 body, 2 organs, 3 lesions.
"""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import zoom

CLASSES = ("oligofocal", "multifocal")
LESIONS = (2, 8)  # lesions per volume in each class
LESION_VOLUME = 0.05  # their total volume, as a fraction of the field of view


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: int) -> np.ndarray:
    """Low-frequency noise: random values on a coarse grid, linearly upsampled, standardised."""
    coarse = rng.standard_normal(tuple(max(2, s // scale) for s in shape))
    z = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1)
    return (z - z.mean()) / (z.std() + 1e-6)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid(grid: np.ndarray, c: np.ndarray, rot: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of an ellipsoid (centre ``c``, axes ``rot`` columns, semi-axes ``radii``) on ``grid``,
    computed in its bounding box only (the same mask as over the whole grid, much faster)."""
    size = np.array(grid.shape[:3])
    lo = np.floor(c + (size - 1) / 2 - radii.max()).astype(int) - 1
    hi = np.ceil(c + (size - 1) / 2 + radii.max()).astype(int) + 2
    m = np.zeros(grid.shape[:3], bool)
    if (lo < 0).any() or (hi > size).any():  # touches the border: the plain whole-grid test
        m[:] = ((((grid - c) @ rot) / radii) ** 2).sum(-1) <= 1
        return m
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    m[box] = ((((grid[box] - c) @ rot) / radii) ** 2).sum(-1) <= 1
    return m


def make_volume(label: int, rng: np.random.Generator, size: tuple[int, int, int] = (48, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, segmentation uint8) pair of class ``label`` (0 oligofocal, 1 multifocal)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in size], indexing="ij"), -1)
    n = np.array(size, dtype=np.float32)
    seg = np.zeros(size, np.uint8)
    coarse, mid, fine = (_smooth_noise(rng, size, k) for k in (6, 4, 3))  # textures, drawn once per volume
    img = np.zeros(size, np.float32)
    # body: a rotated ellipsoid filling most of the field of view, with soft-tissue texture
    centre = rng.uniform(-0.05, 0.05, 3) * n
    radii = rng.uniform(0.36, 0.46, 3) * n
    rot = _rotation(rng)
    local = (grid - centre) @ rot
    body = ((local / radii) ** 2).sum(-1) <= 1
    seg[body] = 1
    base = rng.uniform(90, 110)
    img[body] = base + 8 * coarse[body]
    # organs: 2-4 ellipsoids of random size, contrast and place inside the body
    for _ in range(rng.integers(2, 5)):
        r = rng.uniform(0.07, 0.16, 3) * n
        c = centre + (rng.uniform(-0.5, 0.5, 3) * radii) @ rot.T
        m = ((((grid - c) @ _rotation(rng)) / r) ** 2).sum(-1) <= 1
        m &= body
        seg[m] = 2
        img[m] = base + rng.choice([-1, 1]) * rng.uniform(15, 35) + 5 * mid[m]
    # lesions: the class is how the lesion burden is spread, one focus or many (solitary vs multifocal
    # disease): LESIONS[label] ellipsoids sharing the same total volume and contrast distribution in
    # both classes, so the voxel histogram does not tell them apart; only the spatial pattern does
    contrast = rng.uniform(50, 90)
    placed = np.zeros(size, bool)
    count = LESIONS[label]
    total = rng.uniform(0.8, 1.2) * LESION_VOLUME * n.prod()
    for _ in range(count):
        vol = total / count * rng.uniform(0.8, 1.2)
        axes = rng.uniform(1.0, 1.5, 3)
        radii_l = axes * (vol / (4 / 3 * np.pi * axes.prod())) ** (1 / 3)
        rot_l = _rotation(rng)
        for _ in range(200):  # inside the body, apart from each other
            c = centre + (rng.uniform(-0.6, 0.6, 3) * radii) @ rot.T
            m = _ellipsoid(grid, c, rot_l, radii_l)
            if not (m & placed).any() and (m & body).sum() == m.sum():
                break
        placed |= m
        seg[m] = 3
        img[m] = base + contrast + 4 * fine[m]
    # scanner: smooth multiplicative bias field, global gain, noise (magnitude, so never negative)
    bias = np.exp(0.15 * _smooth_noise(rng, size, 16))
    img = img * bias * rng.uniform(0.85, 1.15)
    sigma = rng.uniform(3, 7)
    img = np.sqrt((img + sigma * rng.standard_normal(size)) ** 2 + (sigma * rng.standard_normal(size)) ** 2)
    return img.astype(np.float32), seg


def write_cohort(out_dir: str | Path, n: int, seed: int = 0, size: tuple[int, int, int] = (48, 48, 48),
                 spacing: tuple[float, float, float] = (1.5, 1.5, 1.5), patients_per_volume: int = 1) -> dict:
    """Write ``n`` volumes ``<class>/vol_<i>.nii.gz`` and masks ``masks/vol_<i>_seg.nii.gz`` plus a
    manifest (path, label, seg, patient); return the ``data`` keys that read it.

    Classes alternate so every prefix is balanced. ``patients_per_volume`` > 1 is not used; each
    volume is its own patient (``p<i>``), so patient-wise splits equal volume-wise ones here.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    rows = []
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % 2
        img, seg = make_volume(label, np.random.default_rng(rng.integers(2**63)), size)
        folder = out / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"vol_{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(img, affine), str(path))
        seg_path = out / "masks" / f"vol_{i:04d}_seg.nii.gz"
        nib.save(nib.Nifti1Image(seg, affine), str(seg_path))
        rows.append({"path": str(path.relative_to(out)), "label": CLASSES[label], "seg": str(seg_path.relative_to(out)), "patient": f"p{i:04d}"})
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "seg", "patient"])
        w.writeheader()
        w.writerows(rows)
    return {"manifest": str(out / "manifest.csv"), "labels": "column:label"}
