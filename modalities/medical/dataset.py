"""A dataset of medical volumes: sources -> cached preprocessed volumes -> 3-d crops -> tokens.

Layouts: a folder of NIfTI volumes, a folder of DICOM series folders (each one volume), a single
series folder, or a manifest (CSV/JSONL) with ``path`` (file or series folder) and optional label,
segmentation, patient id and extra-sequence columns. Ids are source paths (plus ``#crop<k>``), never
DICOM header fields, so no patient name or birth date leaks into embeddings files or logs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from safetensors import SafetensorError

from foundation.grid import normalized_targets, patchify
from foundation.inputs import InputPolicy
from foundation.sources import Source, class_index, find_sources
from foundation.tokens import SampleTokens
from modalities.base import TokenDataset
from modalities.medical.io import DICOM_EXTENSIONS, NIFTI_EXTENSIONS, MedicalInputError, check_source, is_series_dir, quiet_monai_warnings
from modalities.medical.preprocess import IMAGE, SEG, VALID, center_crop, deterministic_transforms, random_crops

log = logging.getLogger(__name__)

# settings that change the cached (deterministic) output; the cache folder is keyed by them
CACHE_KEYS = ("channels", "orientation", "spacing", "interpolation", "intensity", "ct_window", "mr_percentiles",
              "crop_foreground", "foreground_threshold", "foreground_margin", "spacing_tolerance")


def root_cause(err: BaseException) -> BaseException:
    """MONAI wraps transform errors; find our own MedicalInputError underneath if there is one."""
    seen = err
    while seen is not None:
        if isinstance(seen, MedicalInputError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


@lru_cache(maxsize=4096)
def _series_dir(path: str) -> bool:
    return is_series_dir(path)


# file names that are segmentation masks, not images, in the folder layout (``data.exclude`` overrides)
EXCLUDE = r"(_seg|_mask|_label|_labels)\.nii(\.gz)?$"


def list_sources(data: dict) -> list[Source]:
    """Sources for ``data`` (root/manifest/labels); a series folder given as root is one volume.

    In the folder layout, masks named ``*_seg``/``*_mask``/``*_label(s)`` ``.nii[.gz]`` are not volumes.
    """
    root, manifest, labels = data.get("root"), data.get("manifest"), data.get("labels")
    if root and not manifest and _series_dir(str(root)):
        return [Source(str(root), None)]
    found = find_sources(root, manifest, labels, extensions=NIFTI_EXTENSIONS + DICOM_EXTENSIONS,
                         is_sample_dir=lambda p: _series_dir(str(p)))
    skip = re.compile(data.get("exclude") or EXCLUDE) if not manifest else None
    if skip is not None:  # segmentation masks stored beside their images are not volumes to pretrain on
        found = [s for s in found if not skip.search(Path(s.path).name)]
        if not found:
            raise FileNotFoundError(f"only files matching {skip.pattern!r} (masks) under {root}")
    if labels == "folder":  # a series folder's class is the folder above it, as for a file
        for s in found:
            if Path(s.path).is_dir():
                s.label = Path(s.path).parent.name
    return found


class MedicalDataset(TokenDataset):
    """Volumes as token samples. ``train``: ``crops_per_volume`` random ``roi`` crops per volume.

    Evaluation view (``dataset[i]``): the whole preprocessed volume, or its central ``eval_roi``.
    """

    def __init__(self, cfg: dict[str, Any], data: dict, train: bool, with_seg: bool = False) -> None:
        quiet_monai_warnings()
        self.cfg, self.train, self.with_seg = cfg, train, with_seg
        self.inputs = InputPolicy.from_data(data)
        self.on_error = self.inputs.on_error
        self.manifest_dir = Path(data["manifest"]).parent if data.get("manifest") else None
        items, sources = [], []
        found = list_sources(data)
        self.inputs.found = len(found)
        for src in found:
            item = self._item(src)
            keys = [k for k in item if k.startswith(IMAGE) or k == SEG]
            if self.inputs.load(src.path, lambda: [check_source(item[k]) for k in keys], check=False) is None:
                continue
            items.append(item)
            sources.append(src)
        self.headers_checked()
        if not items:
            raise MedicalInputError(f"no readable volume in {data.get('manifest') or data.get('root')}")
        self.items, self.sources = items, sources
        self._index = {item["source"]: i for i, item in enumerate(items)}
        self.labels, self.classes = class_index([s.label for s in sources])
        self.patients = [str(s.extra.get(cfg["patient_column"])) if s.extra.get(cfg["patient_column"]) else None for s in sources]
        self.k = int(cfg["crops_per_volume"]) if train else 1
        pad = list(cfg["roi"]) if train else None
        # kept: inverting it (predicted masks back to the source space) needs these very instances
        self.transform = deterministic_transforms(cfg, with_seg=with_seg, pad_to=pad)
        self.volumes = self._cached(self.transform, pad)
        self.crops = random_crops(cfg, with_seg)
        self.center = center_crop(cfg["eval_roi"], with_seg) if cfg.get("eval_roi") else None

    def _item(self, src: Source) -> dict:
        cfg = self.cfg
        item = {IMAGE: src.path, "source": src.path}
        for i, col in enumerate(cfg["channel_columns"], start=1):
            if not src.extra.get(col):
                raise MedicalInputError(f"{src.path}: manifest column {col!r} (an extra channel) is empty")
            item[f"{IMAGE}{i}"] = _resolve(src.extra[col], self.manifest_dir)
        if len(cfg["channel_columns"]) + 1 != int(cfg["channels"]):
            raise ValueError(f"medical adapter: channels={cfg['channels']} but {len(cfg['channel_columns'])} channel_columns (+1 image)")
        if self.with_seg:
            seg = src.extra.get(cfg["seg_column"])
            if not seg:
                raise MedicalInputError(f"{src.path}: no segmentation (manifest column {cfg['seg_column']!r})")
            item[SEG] = _resolve(seg, self.manifest_dir)
        item["mtime"] = max(_mtime(v) for k, v in item.items() if k.startswith(IMAGE) or k == SEG)
        return item

    def _cached(self, transform, pad) -> Dataset:
        kind = self.cfg["cache"]
        if kind == "none":
            return Dataset(self.items, transform)
        if kind == "memory":
            return CacheDataset(self.items, transform, cache_rate=1.0, num_workers=0, progress=False, runtime_cache=True)
        if kind == "disk":
            key = json.dumps({k: self.cfg[k] for k in CACHE_KEYS} | {"seg": self.with_seg, "pad": pad}, sort_keys=True)
            base = Path(self.cfg["cache_dir"] or os.environ.get("DOMAINFM_CACHE", Path.home() / ".cache" / "domainfm")) / "medical"
            folder = base / hashlib.sha1(key.encode()).hexdigest()[:16]
            folder.mkdir(parents=True, exist_ok=True)
            # MetaTensors keep affine and the applied operations (needed to write masks back in the source
            # space): voxels go to safetensors, metadata to tagged JSON; nothing is unpickled.
            return SafeDiskCache(self.items, transform, folder)
        raise ValueError(f"medical adapter: cache must be 'disk', 'memory' or 'none', not {kind!r}")

    # -- TokenDataset ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items) * self.k

    def label(self, index: int) -> int | None:
        return None if self.labels is None else self.labels[index // self.k]

    def unit(self, index: int) -> str:
        """The volume sample ``index`` is a crop of: crops of one volume stay on one side of every split."""
        return self.items[index // self.k]["source"]

    def _read(self, index: int, fetch):
        """``fetch()`` for volume ``index`` under the bad-input policy, errors naming the source."""
        src = self.items[index]["source"]

        def read():
            try:
                return fetch()
            except Exception as err:  # MONAI wraps reader errors in RuntimeError
                cause = root_cause(err)
                if isinstance(cause, MedicalInputError):
                    raise cause from err
                raise MedicalInputError(f"{src}: cannot load ({type(cause).__name__}: {cause})") from err

        return self.inputs.load(src, read, check=False)

    def volume(self, index: int) -> dict | None:
        """The preprocessed volume ``index`` (of ``len(items)``), errors naming the source.

        Under ``data.on_error=skip`` a volume that fails is counted once, never read again, and comes
        back as None (no other volume stands in for it).
        """
        return self._read(index, lambda: self.volumes[index])

    def voxel_dict(self, index: int) -> dict[str, torch.Tensor] | None:
        """Image [C, X, Y, Z], validity [1, X, Y, Z], spacing and, when the dataset was read with it, the
        segmentation (``seg``, cut like the image by the dense task's crops) of preprocessed volume ``index``
        as plain tensors: what a training crop needs, without rebuilding MONAI's MetaTensors and their
        history on every read (from the disk cache, that rebuild cost more than the crop and tokens
        together). None under ``data.on_error=skip`` when the volume failed."""
        keys = (IMAGE, VALID) + ((SEG,) if self.with_seg else ())
        if isinstance(self.volumes, SafeDiskCache):
            return self._read(index, lambda: self.volumes.voxels(index, keys))
        d = self.volume(index)
        return None if d is None else {k: _plain(d[k]) for k in keys} | {"spacing": _spacing(d[IMAGE])}

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens | None:
        vi, j = divmod(index, self.k)
        src = self.items[vi]["source"]
        label = None if self.labels is None else self.labels[vi]
        if rng is not None:  # one random roi crop (the k crops of a volume are k independent draws)
            got = self.voxel_dict(vi)
            if got is None:  # skipped under data.on_error=skip
                return None
            window = (slice(None), *random_window(got[IMAGE].shape[1:], self.cfg["roi"], rng))
            s = to_tokens(got[IMAGE][window], got[VALID][window], self.cfg, f"{src}#crop{j}", src, label, spacing=got["spacing"])
            if SEG in got:  # read with its segmentation: per-voxel targets of the dense task
                s.dense = dense_labels(got[SEG][window], got[VALID][window], self.cfg)
            return s
        d = self.volume(vi)
        if d is None:  # skipped under data.on_error=skip
            return None
        if self.center is not None:
            d = self.center(d)
        s = to_tokens(d[IMAGE], d[VALID], self.cfg, src, src, label)
        if SEG in d:
            s.dense = dense_labels(d[SEG], d[VALID], self.cfg)
        return s


def dense_labels(seg, valid, cfg: dict) -> torch.Tensor:
    """A segmentation [1, X, Y, Z] cut like the image: [N, prod(patch)] voxel labels per token, -1 where
    no source voxel is (the crop's padding, the edge padding that makes the grid whole patches)."""
    gp = patchify(_plain(seg).float(), tuple(int(p) for p in cfg["patch"]), _plain(valid)[0] > 0.5)
    out = gp.patches.round().long()
    out[~gp.valid] = -1
    return out


class SafeDiskCache(torch.utils.data.Dataset):
    """MONAI's PersistentDataset without pickles: each item's deterministic output is cached as
    ``<hash>.safetensors`` (tensors) plus ``<hash>.json`` (metadata, applied operations, other values)
    under ``folder``; the hash covers the item (source paths and modification times), so an edited
    file is preprocessed again. Values JSON cannot hold (numpy arrays, tensors, MONAI enums) are tagged."""

    def __init__(self, items: list[dict], transform, folder: Path) -> None:
        self.items, self.transform, self.folder = items, transform, Path(folder)
        self._layout: dict[int, tuple[Path, dict[str, str], torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _base(self, item: dict) -> Path:
        return self.folder / hashlib.sha1(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()

    def voxels(self, index: int, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Plain tensors of ``keys`` plus ``spacing``. An entry's JSON is decoded once per process;
        after that only its safetensors file is read."""
        from safetensors.torch import load_file

        layout = self._layout.get(index)
        if layout is not None:
            base, names, spacing = layout
            try:
                tensors = load_file(str(base.with_suffix(".safetensors")))
                return {k: tensors[name] for k, name in names.items()} | {"spacing": spacing}
            except (OSError, KeyError, SafetensorError):  # a damaged or replaced entry: rebuilt below
                del self._layout[index]
        d = self[index]
        spacing = _spacing(d[keys[0]])
        base = self._base(self.items[index])
        try:
            self._layout[index] = (base, _cached_names(base, keys), spacing)
        except (OSError, ValueError, KeyError):
            pass  # not cached (e.g. an uncacheable value): later reads decode again
        return {k: _plain(d[k]) for k in keys} | {"spacing": spacing}

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        base = self._base(item)
        if base.with_suffix(".json").exists():
            try:
                return _decode_cached(base)
            except (OSError, ValueError, KeyError, SafetensorError):
                pass  # a damaged cache entry is rebuilt from the source
        out = self.transform(dict(item))
        _encode_cached(base, out)
        return out


def _encode_cached(base: Path, out: dict) -> None:
    from monai.data import MetaTensor
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}

    def enc(v):
        if isinstance(v, MetaTensor):
            name = f"t{len(tensors)}"
            tensors[name] = v.as_tensor().contiguous()
            return {"__metatensor__": name, "meta": enc(dict(v.meta)), "ops": enc(list(v.applied_operations))}
        if isinstance(v, torch.Tensor):
            return {"__tensor__": v.detach().cpu().tolist(), "dtype": str(v.dtype).removeprefix("torch.")}
        if isinstance(v, np.ndarray):
            return {"__ndarray__": v.tolist(), "dtype": v.dtype.str}
        if isinstance(v, np.generic):
            return {"__ndarray__": v.item(), "dtype": v.dtype.str, "scalar": True}
        if isinstance(v, Enum):
            return {"__enum__": f"{type(v).__module__}:{type(v).__qualname__}", "value": v.value}
        if isinstance(v, dict):
            return {"__dict__": [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        raise TypeError(f"cannot cache a {type(v).__name__}")

    try:
        meta = enc(out)
    except TypeError as err:
        log.warning("medical disk cache: not caching %s (%s)", out.get("source"), err)
        return
    tmp = base.with_suffix(f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, base.with_suffix(".safetensors"))
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, base.with_suffix(".json"))  # written last: a complete entry has both files


def _decode_cached(base: Path) -> dict:
    import importlib

    from monai.data import MetaTensor
    from safetensors.torch import load_file

    tensors = load_file(str(base.with_suffix(".safetensors")))

    def dec(v):
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__metatensor__" in v:
            return MetaTensor(tensors[v["__metatensor__"]], meta=dec(v["meta"]), applied_operations=dec(v["ops"]))
        if "__tensor__" in v:
            return torch.tensor(v["__tensor__"], dtype=getattr(torch, v["dtype"]))
        if "__ndarray__" in v:
            arr = np.asarray(v["__ndarray__"], dtype=np.dtype(v["dtype"]))
            return arr[()] if v.get("scalar") else arr
        if "__enum__" in v:
            module, name = v["__enum__"].split(":")
            if not module.startswith("monai."):
                raise ValueError(f"unexpected enum {v['__enum__']} in the cache")
            return getattr(importlib.import_module(module), name)(v["value"])
        if "__tuple__" in v:
            return tuple(dec(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {dec(k): dec(x) for k, x in v["__dict__"]}
        raise ValueError(f"unknown cache entry {sorted(v)}")

    return dec(json.loads(base.with_suffix(".json").read_text()))


def _cached_names(base: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The safetensors names under which ``_encode_cached`` stored the MetaTensors of ``keys``."""
    entry = json.loads(base.with_suffix(".json").read_text())
    names = {k: v["__metatensor__"] for k, v in entry["__dict__"] if isinstance(v, dict) and "__metatensor__" in v}
    missing = [k for k in keys if k not in names]
    if missing:
        raise KeyError(f"{base}: no cached tensor for {missing}")
    return {k: names[k] for k in keys}


def random_window(shape, roi, rng: torch.Generator) -> tuple[slice, ...]:
    """A uniformly placed ``roi`` window inside ``shape`` (the volume is padded to at least ``roi``)."""
    out = []
    for size, r in zip(shape, roi):
        r = min(int(r), int(size))
        start = int(torch.randint(int(size) - r + 1, (1,), generator=rng))
        out.append(slice(start, start + r))
    return tuple(out)


def to_tokens(image, valid, cfg: dict, ident: str, path: str, label: int | None,
              spacing: torch.Tensor | None = None) -> SampleTokens:
    """One preprocessed (crop of a) volume [C, X, Y, Z] -> tokens with per-patch normalised targets."""
    patch = tuple(int(p) for p in cfg["patch"])
    spacing = _spacing(image) if spacing is None else spacing
    gp = patchify(_plain(image).float(), patch, _plain(valid)[0] > 0.5)
    unit = torch.tensor(patch, dtype=torch.float32) * spacing / float(cfg["position_unit_mm"])
    values, ok = pooled_patches(gp.patches, gp.valid, patch, int(cfg["channels"]), target_pool(cfg))
    return SampleTokens(
        patches=gp.patches,
        coords=gp.coords * unit,
        targets=mae_targets(values, ok, int(cfg["channels"]), cfg["target_norm"]),
        target_valid=ok,
        padding=gp.token_padding,
        meta={"spacing": spacing},
        id=ident,
        path=path,
        label=label,
    )


def mae_targets(values: torch.Tensor, valid: torch.Tensor, channels: int, norm: str) -> torch.Tensor:
    """MAE targets from (pooled) patch values: standardised per patch (``patch``, MAE's norm_pix; a
    uniform patch is then noise whatever its brightness) or over the whole sample (``sample``: the
    brightness of a patch against the rest of the scan is kept, e.g. a patch inside a lesion)."""
    if norm == "patch":
        return normalized_targets(values, valid, channels)
    if norm != "sample":
        raise ValueError(f"medical adapter: target_norm must be 'patch' or 'sample', not {norm!r}")
    n, k = values.shape
    flat = values.reshape(n, channels, k // channels).transpose(0, 1).reshape(channels, -1)
    ok = valid.reshape(n, channels, k // channels).transpose(0, 1).reshape(channels, -1)
    out = normalized_targets(flat, ok, 1)  # one row per channel: statistics over every token
    return out.reshape(channels, n, k // channels).transpose(0, 1).reshape(n, k)


def target_pool(cfg: dict) -> tuple[int, ...]:
    """Per-axis average-pooling factor of the MAE target inside a patch (never more than the patch)."""
    return tuple(min(int(cfg["target_pool"]), int(p)) for p in cfg["patch"])


def pooled_patches(patches: torch.Tensor, valid: torch.Tensor, patch: tuple[int, ...], channels: int,
                   pool: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``pool`` voxels per axis inside each patch over valid voxels only: [N, C*prod(p)] ->
    [N, C*prod(p/pool)] values and validity. A smoothed MAE target: voxel noise averages out, structure stays."""
    if all(k == 1 for k in pool):
        return patches, valid
    n = patches.shape[0]
    shape = [n * channels] + [v for p, k in zip(patch, pool) for v in (p // k, k)]
    w = valid.float().reshape(shape)
    axes = tuple(range(2, 2 * len(patch) + 1, 2))
    count = w.sum(axes)
    mean = (patches.reshape(shape) * w).sum(axes) / count.clamp(min=1)
    return mean.reshape(n, -1), (count > 0).reshape(n, -1)


def _plain(x) -> torch.Tensor:
    """A plain tensor (MetaTensors carry their metadata into every op; tokens need none of it)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _spacing(image) -> torch.Tensor:
    pixdim = getattr(image, "pixdim", None)
    return torch.as_tensor(pixdim, dtype=torch.float32)[:3] if pixdim is not None else torch.ones(3)


def _resolve(value: str, manifest_dir: Path | None) -> str:
    """Extra manifest paths (segmentation, sequences) are relative to the manifest, like ``path``."""
    p = Path(str(value))
    return str(p if p.is_absolute() or manifest_dir is None else manifest_dir / p)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
