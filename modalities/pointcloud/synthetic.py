"""A small, realistic synthetic object dataset: 10 shape classes scanned like a depth sensor would.

Each object is a union of parametric surfaces sampled uniformly by area, with random proportions
(within-class variation), a random rotation about the up axis and anisotropic scale (so per-axis
extents overlap between classes), Gaussian sensor noise, a share of partial views (the half of the
object facing away from a random viewpoint is missing) and a few outliers. Files are written as
binary PLY under ``<out>/<class>/``, so ``data.labels=folder`` reads them. Hundreds of objects take
about a second.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from modalities.pointcloud.io import write_ply

CLASSES = ["sphere", "box", "cylinder", "cone", "torus", "pyramid", "capsule", "table", "mug", "spring"]


def _sphere(n, rng, r=1.0, centre=(0, 0, 0)):
    v = rng.normal(size=(n, 3))
    return np.asarray(centre) + r * v / np.linalg.norm(v, axis=1, keepdims=True)


def _box(n, rng, size=(1, 1, 1), centre=(0, 0, 0)):
    sx, sy, sz = size
    areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
    face = rng.choice(6, n, p=areas / areas.sum())
    p = (rng.random((n, 3)) - 0.5) * np.asarray(size)
    axis, sign = face // 2, np.where(face % 2 == 0, -0.5, 0.5)
    p[np.arange(n), axis] = sign * np.asarray(size)[axis]
    return p + np.asarray(centre)


def _disk(n, rng, r, z):
    a, rad = rng.random(n) * 2 * math.pi, r * np.sqrt(rng.random(n))
    return np.stack([rad * np.cos(a), rad * np.sin(a), np.full(n, z)], 1)


def _tube(n, rng, r, h, z0=0.0):
    a = rng.random(n) * 2 * math.pi
    return np.stack([r * np.cos(a), r * np.sin(a), z0 + rng.random(n) * h], 1)


def _split(n, weights):
    w = np.asarray(weights, float)
    counts = np.floor(n * w / w.sum()).astype(int)
    counts[0] += n - counts.sum()
    return counts


def _cylinder(n, rng, r, h):
    c = _split(n, [2 * math.pi * r * h, math.pi * r * r, math.pi * r * r])
    return np.concatenate([_tube(c[0], rng, r, h, -h / 2), _disk(c[1], rng, r, -h / 2), _disk(c[2], rng, r, h / 2)])


def _cone(n, rng, r, h):
    slant = math.hypot(r, h)
    c = _split(n, [math.pi * r * slant, math.pi * r * r])
    t = np.sqrt(rng.random(c[0]))  # uniform by area on the lateral surface
    a = rng.random(c[0]) * 2 * math.pi
    side = np.stack([r * t * np.cos(a), r * t * np.sin(a), h / 2 - h * t], 1)
    return np.concatenate([side, _disk(c[1], rng, r, -h / 2)])


def _torus(n, rng, big, small):
    out = []
    while sum(len(o) for o in out) < n:
        u, v = rng.random(2 * n) * 2 * math.pi, rng.random(2 * n) * 2 * math.pi
        keep = rng.random(2 * n) < (big + small * np.cos(v)) / (big + small)  # uniform by area
        u, v = u[keep], v[keep]
        out.append(np.stack([(big + small * np.cos(v)) * np.cos(u), (big + small * np.cos(v)) * np.sin(u), small * np.sin(v)], 1))
    return np.concatenate(out)[:n]


def _triangles(n, rng, tris):
    tris = np.asarray(tris, float)
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    t = rng.choice(len(tris), n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    f = u + v > 1
    u[f], v[f] = 1 - u[f], 1 - v[f]
    a, b, c = tris[t, 0], tris[t, 1], tris[t, 2]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def _pyramid(n, rng, w, h):
    b = [(-w, -w, -h / 2), (w, -w, -h / 2), (w, w, -h / 2), (-w, w, -h / 2)]
    apex = (0, 0, h / 2)
    tris = [(b[0], b[1], b[2]), (b[0], b[2], b[3])] + [(b[i], b[(i + 1) % 4], apex) for i in range(4)]
    return _triangles(n, rng, tris)


def _capsule(n, rng, r, h):
    c = _split(n, [2 * math.pi * r * h, 4 * math.pi * r * r])
    caps = _sphere(c[1], rng, r)
    caps[:, 2] += np.where(caps[:, 2] > 0, h / 2, -h / 2)
    return np.concatenate([_tube(c[0], rng, r, h, -h / 2), caps])


def _table(n, rng, w, d, h, leg):
    top_t = 0.06 * h
    c = _split(n, [2 * w * d + 2 * (w + d) * top_t] + [4 * leg * h] * 4)
    parts = [_box(c[0], rng, (w, d, top_t), (0, 0, h / 2 - top_t / 2))]
    for k, (sx, sy) in enumerate([(-1, -1), (1, -1), (1, 1), (-1, 1)]):
        parts.append(_box(c[k + 1], rng, (leg, leg, h - top_t), (sx * (w / 2 - leg), sy * (d / 2 - leg), -top_t / 2)))
    return np.concatenate(parts)


def _mug(n, rng, r, h):
    c = _split(n, [2 * math.pi * r * h, math.pi * r * r, 0.6 * math.pi * r * h])
    handle = _torus(c[2], rng, 0.3 * h, 0.06 * h)
    handle = handle[:, [0, 2, 1]]  # stand the ring up in the x-z plane
    handle[:, 0] += r
    return np.concatenate([_tube(c[0], rng, r, h, -h / 2), _disk(c[1], rng, r, -h / 2), handle])


def _spring(n, rng, big, small, turns, h):
    t = rng.random(n) * turns * 2 * math.pi
    a = rng.random(n) * 2 * math.pi
    centre = np.stack([big * np.cos(t), big * np.sin(t), -h / 2 + h * t / (turns * 2 * math.pi)], 1)
    radial = np.stack([np.cos(t), np.sin(t), np.zeros(n)], 1)
    return centre + small * (np.cos(a)[:, None] * radial + np.sin(a)[:, None] * np.array([0, 0, 1.0]))


def make_shape(cls: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` clean surface points of one random instance of class ``cls``."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if cls == "sphere":
        return _sphere(n, rng, 1.0)
    if cls == "box":
        return _box(n, rng, (u(0.6, 1.6), u(0.6, 1.6), u(0.6, 1.6)))
    if cls == "cylinder":
        return _cylinder(n, rng, u(0.3, 0.8), u(0.8, 2.0))
    if cls == "cone":
        return _cone(n, rng, u(0.4, 0.9), u(0.8, 2.0))
    if cls == "torus":
        big = u(0.6, 1.0)
        return _torus(n, rng, big, big * u(0.2, 0.45))
    if cls == "pyramid":
        return _pyramid(n, rng, u(0.4, 0.9), u(0.8, 1.8))
    if cls == "capsule":
        return _capsule(n, rng, u(0.25, 0.5), u(0.6, 1.6))
    if cls == "table":
        return _table(n, rng, u(1.0, 2.0), u(0.6, 1.2), u(0.6, 1.1), u(0.06, 0.14))
    if cls == "mug":
        return _mug(n, rng, u(0.3, 0.5), u(0.8, 1.3))
    if cls == "spring":
        return _spring(n, rng, u(0.4, 0.8), u(0.05, 0.12), int(rng.integers(3, 7)), u(1.0, 2.0))
    raise ValueError(f"unknown synthetic class {cls!r}")


def scan_object(cls: str, rng: np.random.Generator, points: int = 2048, noise: float = 0.01,
                partial_prob: float = 0.3, outlier_ratio: float = 0.02) -> np.ndarray:
    """One object as a sensor sees it: posed, stretched, noisy, maybe partial, with outliers."""
    xyz = make_shape(cls, points, rng)
    xyz = xyz * rng.uniform(0.8, 1.25, size=3)
    a = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    xyz = xyz @ rot.T
    if rng.random() < partial_prob:  # a single view: the far side is missing
        view = rng.normal(size=3)
        view /= np.linalg.norm(view)
        proj = (xyz - xyz.mean(0)) @ view
        xyz = xyz[proj > np.quantile(proj, rng.uniform(0.3, 0.5))]
    xyz = xyz[rng.permutation(len(xyz))[:points]]
    extent = np.ptp(xyz, axis=0).max()
    xyz = xyz + rng.normal(scale=noise * extent, size=xyz.shape)
    k = int(round(outlier_ratio * len(xyz)))
    if k:
        lo, hi = xyz.min(0), xyz.max(0)
        pad = 0.1 * (hi - lo)
        xyz[rng.choice(len(xyz), k, replace=False)] = rng.uniform(lo - pad, hi + pad, size=(k, 3))
    return (xyz * rng.uniform(0.5, 5.0)).astype(np.float32)  # arbitrary units, as real scans have


def write_synthetic(out_dir: str | Path, n: int, seed: int = 0, points: int = 2048, classes: list[str] | None = None) -> dict:
    """Write ``n`` objects (classes balanced) as binary PLY; return the ``data`` keys that read them."""
    classes = classes or CLASSES
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = classes[i % len(classes)]
        (out / cls).mkdir(parents=True, exist_ok=True)
        write_ply(out / cls / f"{cls}_{i:05d}.ply", scan_object(cls, rng, points))
    return {"root": str(out), "labels": "folder"}


def scan_scene(rng: np.random.Generator, points: int = 4096, size: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """A small airborne-LiDAR-like tile with per-point LAS classes: 2 ground (a gently sloped,
    bumpy plane), 6 building (box roofs and walls), 5 high vegetation (trunk + crown). For the
    segmentation head's tests and demos; coordinates in metres with a UTM-like offset."""
    parts, labels = [], []
    n_ground = points // 2
    g = rng.random((n_ground, 2)) * size
    slope = rng.normal(scale=0.03, size=2)
    z = g @ slope + 0.3 * np.sin(g[:, 0] / 5) * np.cos(g[:, 1] / 7) + rng.normal(scale=0.05, size=n_ground)
    parts.append(np.column_stack([g, z]))
    labels.append(np.full(n_ground, 2))
    rest = points - n_ground
    kinds = rng.integers(0, 2, size=int(rng.integers(3, 7)))
    counts = _split(rest, np.ones(len(kinds)))
    for kind, n in zip(kinds, counts):
        cx, cy = rng.uniform(5, size - 5, size=2)
        base = float(np.array([cx, cy]) @ slope)
        if kind == 0:  # building
            w, d, h = rng.uniform(4, 10), rng.uniform(4, 10), rng.uniform(3, 12)
            p = _box(n, rng, (w, d, h), (cx, cy, base + h / 2))
            labels.append(np.full(n, 6))
        else:  # tree
            h, r = rng.uniform(4, 10), rng.uniform(1.5, 3.5)
            c = _split(n, [1, 6])
            trunk = _tube(c[0], rng, 0.2, h * 0.5, 0) + [cx, cy, base]
            crown = _sphere(c[1], rng, r) * rng.uniform(0.7, 1.0, size=(c[1], 1)) + [cx, cy, base + h * 0.5 + r]
            p = np.concatenate([trunk, crown])
            labels.append(np.full(n, 5))
        parts.append(p)
    xyz = np.concatenate(parts) + rng.normal(scale=0.03, size=(points, 3)) + [500000.0, 4100000.0, 50.0]
    return xyz, np.concatenate(labels)
