"""Frozen features of a dataset: every sample exactly once, in dataset order, on every process."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from foundation.data import eval_loader
from foundation.model import Encoder

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_dataset(encoder: Encoder, dataset, batch_size: int = 64, device: str | torch.device | None = None,
                  num_workers: int = 0, progress: bool = False) -> dict:
    """Pooled embeddings under every pooling, plus ids, paths and labels, as numpy arrays.

    A feature model may also give a key a list, one [instances, D] tensor per sample (medical: a
    study's regions, for ``foundation.probes.bag_probe``); that key stays a list of arrays.

    Under torch.distributed each rank embeds a contiguous slice and the slices are gathered back
    in order, so the result is identical whatever the number of processes.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
    if isinstance(encoder, Encoder):  # the adapter may embed several views of a sample (earth band views)
        encoder = encoder.adapter.feature_model(encoder, dataset)
    encoder = encoder.to(device).eval()
    feats: dict[str, list] = {}
    ragged: set[str] = set()
    ids, paths, labels = [], [], []
    # a feature model that fetches each sample from the dataset itself (medical: whole studies by
    # sliding windows) names a light dataset for the loader (ids, paths, labels), so no sample is
    # tokenised and collated only to be thrown away
    source = dataset if getattr(encoder, "loader_dataset", None) is None else encoder.loader_dataset
    for batch in tqdm(eval_loader(source, batch_size, world, rank, num_workers), disable=not progress, desc="embed"):
        batch = batch.to(device)
        for k, v in encoder.pooled(batch).items():
            if isinstance(v, list):  # ragged: one array per sample
                ragged.add(k)
                feats.setdefault(k, []).extend(t.float().cpu().numpy() for t in v)
            else:
                feats.setdefault(k, []).append(v.float().cpu().numpy())
        ids += batch.ids
        paths += batch.paths
        labels += batch.labels.tolist() if batch.labels is not None else [-1] * batch.size
    out = {k: v if k in ragged else np.concatenate(v) for k, v in feats.items()}
    out.update(ids=np.array(ids), paths=np.array(paths), labels=np.array(labels))
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (out, sorted(ragged)))
        ragged = {k for _, r in parts for k in r}
        outs = [o for o, _ in parts]
        keys = dict.fromkeys(k for o in outs for k in o)  # a rank with no samples has no feature keys
        out = {k: [a for o in outs for a in o.get(k, [])] if k in ragged
               else np.concatenate([o[k] for o in outs if k in o and len(o["ids"])]) for k in keys}
    return out


# -- an exported encoder, ready to embed files ------------------------------------------------------------
@dataclass
class Embeddings:
    """What :meth:`LoadedEncoder.embed` returns: one row per sample, in input order."""

    embeddings: np.ndarray  # [N, D] float32
    ids: list[str]
    paths: list[str]
    pooling: str
    weights_sha256: str


class LoadedEncoder:
    """An export (or a run directory's encoder) with its stored preprocessing and recommended pooling.

    ``embed(paths_or_arrays)`` reads files with the adapter's real readers (arrays are first written to a
    temporary file of the modality's format, so they take the same path), embeds them deterministically
    (eval mode, no masking; a sample's embedding does not depend on its batch) and returns :class:`Embeddings`.
    ``overrides`` are input descriptions (``{"input.bands": [...]}``), never model changes.
    """

    def __init__(self, model_dir: str | Path, pooling: str | None = None, device: str | None = None,
                 overrides: dict | None = None) -> None:
        from foundation.export import encoder_from_run, recommended_pooling
        from foundation.input_spec import input_overrides
        from foundation.model import WEIGHTS, file_sha256

        self.model_dir = Path(model_dir)
        self.encoder = encoder_from_run(self.model_dir)
        described = input_overrides(self.encoder.adapter.name, dict(overrides or {}))
        self.model_preprocessing = self.encoder.adapter.preprocessing()
        self.described = described
        if described:  # re-read files as described; the weights and the model's preprocessing stay
            self.encoder.adapter = type(self.encoder.adapter)({**self.model_preprocessing, **described})
        weights = next((p for p in (self.model_dir / WEIGHTS, self.model_dir / "encoder" / WEIGHTS) if p.exists()), None)
        self.weights_sha256 = file_sha256(weights) if weights is not None else encoder_sha256(self.encoder)
        config = self.encoder.export_config()
        self.pooling = pooling or stored_pooling(self.model_dir) or recommended_pooling(config["modality"])
        self.device = device or "cpu"

    @property
    def adapter(self):
        return self.encoder.adapter

    def dataset(self, data: dict):
        """``data`` (root/manifest) read as the export was trained, with the input descriptions; earth files' band
        descriptions are checked against the declared bands and name a band subset (foundation.input_spec)."""
        data = {"labels": None, **data}
        if self.adapter.name == "earth" and self.model_preprocessing.get("bands"):
            from foundation.input_spec import resolve_bands
            from foundation.sources import find_sources

            paths = [s.path for s in find_sources(data.get("root"), data.get("manifest"), extensions=(".tif", ".tiff"))]
            bands = resolve_bands(paths, self.model_preprocessing["bands"], self.described.get("bands"))
            if bands is not None and bands != self.adapter.config.get("bands"):
                log.info("reading %s with the bands its band descriptions name: %s", data.get("root") or data.get("manifest"), bands)
                self.encoder.adapter = type(self.adapter)({**self.model_preprocessing, **self.described, "bands": bands})
        if self.adapter.name == "speech" and "max_seconds" in self.described and self.adapter.config.get("max_seconds"):
            log.warning("speech clips longer than %ss are cropped to their centre %ss, as input.max_seconds asks",
                        self.adapter.config["max_seconds"], self.adapter.config["max_seconds"])
        return self.adapter.dataset(data, train=False)

    def embed(self, items, batch_size: int = 16) -> Embeddings:
        import tempfile

        items = [items] if isinstance(items, (str, Path, np.ndarray)) else list(items)
        with tempfile.TemporaryDirectory(prefix="domainfm-embed-") as tmp:
            paths = [str(x) if not isinstance(x, np.ndarray) else write_array(self.adapter, x, Path(tmp) / f"array{i}")
                     for i, x in enumerate(items)]
            manifest = Path(tmp) / "inputs.csv"
            manifest.write_text("path\n" + "".join(f"\"{p}\"\n" for p in paths))
            return self.embed_dataset(self.dataset({"manifest": str(manifest)}), batch_size)

    def embed_recording(self, path: str | Path, window_seconds: float | None = None, batch_windows: int = 8) -> dict:
        """A whole recording (speech), window by window in bounded memory: ``embedding`` [D] under the export's
        pooling, ``windows`` [W, D] with ``starts``/``ends`` in seconds (modalities/speech/windows.py)."""
        from foundation.errors import DomainfmError

        if self.adapter.name != "speech":
            raise DomainfmError(f"embed_recording is for speech; a {self.adapter.name} encoder embeds whole inputs with embed()")
        from modalities.speech.windows import embed_windows

        return {**embed_windows(self.encoder.to(self.device), path, self.pooling, window_seconds, batch_windows),
                "weights_sha256": self.weights_sha256}

    def embed_raster(self, path: str | Path, out_tif: str | Path | None = None, batch_size: int = 16) -> dict:
        """A whole GeoTIFF scene (earth) by tiles; ``out_tif`` receives a GeoTIFF of embeddings with the source CRS
        and the source transform scaled by the stride (modalities/earth/raster.py)."""
        from foundation.errors import DomainfmError

        if self.adapter.name != "earth":
            raise DomainfmError(f"embed_raster is for earth observation; a {self.adapter.name} encoder embeds whole inputs with embed()")
        from modalities.earth.raster import embed_raster

        return embed_raster(self, path, out_tif, batch_size)

    def feature_model(self, dataset):
        """The adapter's feature model; for an earth band subset, the export's band views restricted to the bands
        present (a view left equal to another is kept), so the embedding has the export's width whatever the bands."""
        model_bands = self.model_preprocessing.get("bands") or []
        bands = self.adapter.config.get("bands") or []
        if self.adapter.name == "earth" and self.adapter.config.get("embed_views") == "resolution" and model_bands and bands != model_bands:
            from modalities.earth.bands import canonical
            from modalities.earth.views import BandViewEncoder, resolution_views

            present = [canonical(b) for b in bands]
            views = [[b for b in present if b in view] or present for view in resolution_views([canonical(b) for b in model_bands])]
            return BandViewEncoder(self.encoder, present, views)
        return self.encoder

    def embed_dataset(self, dataset, batch_size: int = 16, progress: bool = False) -> Embeddings:
        out = embed_dataset(self.feature_model(dataset), dataset, batch_size, device=self.device, progress=progress)
        if self.pooling not in out or isinstance(out[self.pooling], list):
            choices = [k for k, v in out.items() if k not in ("ids", "paths", "labels") and not isinstance(v, list)]
            from foundation.errors import DomainfmError

            raise DomainfmError(f"unknown pooling {self.pooling!r}; choose from {choices} (--pooling NAME)")
        emb = Embeddings(out[self.pooling].astype(np.float32), list(out["ids"]), list(out["paths"]), self.pooling, self.weights_sha256)
        return self.whole_recordings(dataset, emb)

    def whole_recordings(self, dataset, emb: Embeddings) -> Embeddings:
        """Speech: a recording longer than the export's ``max_seconds`` (the window it was trained on) is embedded
        whole, window by window (modalities/speech/windows.py), instead of by the evaluation view's centre crop,
        which made a 10-minute recording its middle 2 s. Cropping happens only when asked (``input.max_seconds``)."""
        max_s = self.adapter.config.get("max_seconds")
        if self.adapter.name != "speech" or not max_s or "max_seconds" in self.described:
            return emb
        long = {str(seg.path) for seg in getattr(dataset, "segments", [])
                if seg.seconds > max_s + 1e-6 and seg.start is None and seg.end is None}
        rows = [i for i, p in enumerate(emb.paths) if str(p) in long]
        if not rows:
            return emb
        from modalities.speech.windows import embed_windows

        encoder = self.encoder.to(self.device)
        for i in rows:
            try:
                emb.embeddings[i] = embed_windows(encoder, emb.paths[i], self.pooling)["embedding"]
            except ValueError as err:  # a pooling with no whole-recording form
                from foundation.errors import DomainfmError

                raise DomainfmError(f"{emb.paths[i]}: {err}; or crop on purpose with input.max_seconds={max_s}") from err
        log.info("%d recording(s) longer than %ss embedded whole, by %ss windows (input.max_seconds=%s crops them instead)",
                 len(rows), max_s, max_s, max_s)
        return emb


def stored_pooling(model_dir: Path) -> str | None:
    import json

    for cfg in (model_dir / "config.json", model_dir / "encoder" / "config.json"):
        if cfg.exists():
            return json.loads(cfg.read_text()).get("pooling")
    return None


def encoder_sha256(encoder: Encoder) -> str:
    """sha256 of the weights as safetensors would write them (a run directory without an exported encoder)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_array(adapter, array: np.ndarray, stem: Path) -> str:
    """An in-memory sample as a file of the modality's format, so arrays and files share one read path:
    speech a mono waveform at the export's sample rate (WAV), point clouds [N, C] in the declared columns
    (.npy), medical a 3-D volume at the export's voxel spacing (NIfTI), earth [C, H, W] in the declared band
    order (GeoTIFF without georeference)."""
    from foundation.errors import DomainfmError

    c, name = adapter.config, adapter.name
    if name == "speech":
        import soundfile as sf

        sf.write(f"{stem}.wav", np.asarray(array, np.float32).reshape(-1), int(c["sample_rate"]), subtype="FLOAT")
        return f"{stem}.wav"
    if name == "pointcloud":
        np.save(f"{stem}.npy", np.asarray(array, np.float32))
        return f"{stem}.npy"
    if name == "medical":
        import nibabel as nib

        affine = np.diag([*(c.get("spacing") or [1.0, 1.0, 1.0]), 1.0])
        nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), f"{stem}.nii.gz")
        return f"{stem}.nii.gz"
    if name == "earth":
        import rasterio

        a = np.asarray(array)
        with rasterio.open(f"{stem}.tif", "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0], dtype=a.dtype) as ds:
            ds.write(a)
            if len(c.get("bands") or []) == a.shape[0]:
                ds.descriptions = tuple(c["bands"])
        return f"{stem}.tif"
    raise DomainfmError(f"{name} encoder: embed() takes file paths for this modality (arrays are accepted for speech, "
                        "pointcloud, medical and earth)")
