"""A learnable synthetic grid dataset whose classes trivial statistics cannot tell apart.

Each image is a field of small isotropic dots laid along parallel lines; the class is the
orientation of the lines (0, 45, 90 or 135 degrees). Line spacing, dot spacing along the lines,
phase, positional jitter and noise are random, and every image is standardised to zero mean and
unit variance. Dots are round, so a single 4x4 patch carries almost no orientation cue and the
per-sample mean/std/histogram sits at chance: the class lives only in how dots relate *across*
patches, which masked reconstruction has to learn and a random encoder does not expose linearly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = {"deg000": 0.0, "deg045": 45.0, "deg090": 90.0, "deg135": 135.0}


def dotted_lines_image(rng: np.random.Generator, angle_deg: float, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.deg2rad(angle_deg + rng.normal(0, 4))
    along, across = rng.uniform(4.5, 5.5), rng.uniform(5.5, 7.0)
    u, v = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
    reach = int(np.ceil(size / min(along, across))) + 2
    centre = size / 2 + rng.uniform(-across, across, 2)
    points = []
    for i in range(-reach, reach + 1):
        shift = rng.uniform(0, along)
        j = np.arange(-reach, reach + 1)
        p = centre + np.outer(j * along + shift + rng.normal(0, 0.6, j.size), u) + np.outer(i * across + rng.normal(0, 0.4, j.size), v)
        points.append(p[(p > -3).all(1) & (p < size + 3).all(1)])
    pts = np.concatenate(points)
    d2 = (xx[None] - pts[:, 0, None, None]) ** 2 + (yy[None] - pts[:, 1, None, None]) ** 2
    img = np.exp(-d2 / 2.0).sum(0)
    img += rng.normal(0, rng.uniform(0.02, 0.06), img.shape)
    img = (img - img.mean()) / (img.std() + 1e-6)
    return img[None].astype(np.float32)


def write_texture_dataset(out_dir: Path, n: int, seed: int = 0, size: int = 32) -> None:
    """Write ``n`` images as ``<class>/<index>.npy`` (balanced classes)."""
    rng = np.random.default_rng(seed)
    names = list(CLASSES)
    for i in range(n):
        name = names[i % len(names)]
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        np.save(out_dir / name / f"{i:05d}.npy", dotted_lines_image(rng, CLASSES[name], size))


def interaction_image(rng: np.random.Generator, same: bool, size: tuple[int, int] = (4, 8), patch: int = 2) -> np.ndarray:
    """One image whose class needs two tokens compared: exactly half of the ``patch``-sized tokens are
    positive (the rest negative), magnitudes i.i.d.; the class says whether the first and the last
    token have the same sign. Every token's values and every permutation-invariant statistic (mean,
    std, histogram, the set of tokens) have the same distribution in both classes: only a model that
    relates tokens at two positions can tell them apart."""
    rows, cols = size[0] // patch, size[1] // patch
    n = rows * cols
    while True:
        signs = rng.permutation(np.repeat([1.0, -1.0], n // 2))
        if (signs[0] == signs[-1]) == same:
            break
    mag = np.abs(rng.normal(1.0, 0.3, (rows, cols, patch, patch)))
    img = (signs.reshape(rows, cols, 1, 1) * mag).transpose(0, 2, 1, 3).reshape(size)
    return img[None].astype(np.float32)


def write_interaction_dataset(out_dir: Path, n: int, seed: int = 0, size: tuple[int, int] = (4, 8), patch: int = 2) -> dict:
    """``n`` balanced images as ``same|differ/<index>.npy`` (see :func:`interaction_image`); read them
    with ``GridAdapter({"patch": [patch, patch], "flip": False})`` (a flip would move the tokens)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = ("same", "differ")[i % 2]
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        np.save(out_dir / name / f"{i:05d}.npy", interaction_image(rng, name == "same", size, patch))
    return {"root": str(out_dir), "labels": "folder"}
