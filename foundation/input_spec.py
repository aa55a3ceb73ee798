"""The input an exported encoder expects, declared in its config.json, and how a user describes other files.

In the spirit of MONAI bundles' ``network_data_format``: ``input_spec(adapter)`` names the modality, units and
value range, channel and band names with centre wavelengths and polarisations, normalisation statistics, sample
rate and mel settings, voxel spacing and orientation, point columns, node and edge feature meanings, and the patch
tensors the ONNX / torch.export programs take.

Input-description overrides (``input.bands=[B02,B03,B04,B08]``, ``input.columns=[x,y,z,intensity]``,
``input.units=dB``, ``input.max_seconds=600``) say what the files at hand hold. They set only the adapter keys that
describe files (:data:`INPUT_KEYS`), never the model; anything else is refused with the keys that are accepted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from foundation.errors import DomainfmError

# input.<name> -> the adapter key it sets, per modality (only keys that describe files, not the model)
INPUT_KEYS: dict[str, dict[str, str]] = {
    "earth": {"bands": "bands", "preset": "preset", "units": "sar_units", "nodata": "nodata", "reflectance_scale": "reflectance_scale",
              "reflectance_offset": "reflectance_offset", "layout": "layout"},
    "pointcloud": {"columns": "columns", "up_axis": "up_axis"},
    "speech": {"max_seconds": "max_seconds"},
    "medical": {"orientation": "orientation"},
    "graph": {},
    "grid": {},
}
UNITS = {"db": "db", "linear": "linear"}


class InputSpecError(DomainfmError, ValueError):
    """An input description the command cannot apply, or files that contradict the encoder's declared input."""


def input_overrides(modality: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"input.bands": [...], "adapter.bands": [...]}`` -> adapter keys to set for reading the files.

    ``adapter.<key>`` is accepted for the same file-describing keys, so the readers' own advice
    (``set adapter.bands``) works with ``embed``; a model-defining key is refused, naming what is accepted.
    """
    allowed = INPUT_KEYS.get(modality, {})
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        prefix, _, name = key.partition(".")
        target = allowed.get(name) if prefix == "input" else name if prefix == "adapter" and name in allowed.values() else None
        if target is None:
            accepted = ", ".join(f"input.{k}" for k in allowed) or "none for this modality"
            raise InputSpecError(f"{key}: not an input description for {modality} files; {key} would change the model, "
                                 f"which embed never does (accepted: {accepted})")
        if target == "sar_units":
            if str(value).lower() not in UNITS:
                raise InputSpecError(f"{key}={value}: units must be dB or linear (e.g. input.units=dB)")
            value = UNITS[str(value).lower()]
        if target == "max_seconds" and value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError) as err:
                raise InputSpecError(f"{key}={value!r}: must be a number of seconds or null (whole recordings), e.g. input.max_seconds=600") from err
        if target == "preset":  # a preset declares files: its bands, scaling and units replace the export's
            from modalities.earth.bands import PRESETS

            if value not in PRESETS:
                raise InputSpecError(f"{key}={value}: unknown preset; known: {sorted(PRESETS)} (or describe the bands with input.bands=[...])")
            out.update({k: v for k, v in PRESETS[value].items() if k in ("bands", "layout", "reflectance_scale", "reflectance_offset", "sar_units", "nodata")})
        out[target] = value
    return out


def described_bands(path: str) -> list[str] | None:
    """The band names a GeoTIFF's band descriptions give (canonical), or None when they do not name bands."""
    from modalities.earth.bands import canonical
    from modalities.earth.io import open_checked

    with open_checked(path) as ds:
        desc = list(ds.descriptions)
    try:
        return [canonical(d) for d in desc] if desc and all(desc) else None
    except KeyError:
        return None


def resolve_bands(paths: list[str], model_bands: list[str], declared: list[str] | None) -> list[str] | None:
    """The bands to read ``paths`` with at embed time, from the files' band descriptions and the declaration.

    - descriptions that contradict ``declared`` (``input.bands``) fail, naming the file and both lists;
    - without a declaration, descriptions naming the encoder's bands in another set or order are used when their
      count differs from the encoder's (a band subset), and fail when it is the same (a contradiction, unless
      described with ``input.bands``);
    - bands the encoder was not trained with fail (it has no statistics for them).
    Returns the band list for the dataset, or None to keep the adapter's.
    """
    from modalities.earth.bands import canonical

    model_bands = [canonical(b) for b in model_bands]
    declared = [canonical(b) for b in declared] if declared else None
    found: dict[tuple, str] = {}
    for path in paths:
        if not str(path).lower().endswith((".tif", ".tiff")) or Path(path).is_dir():
            continue
        bands = described_bands(path)
        if bands is None:
            continue
        if declared is not None and bands != declared:
            raise InputSpecError(f"{path}: the file's band descriptions say {bands} but input.bands declares {declared}; "
                                 f"describe the file as it is (input.bands=[{','.join(bands)}]) or fix its descriptions")
        if declared is None and bands != model_bands and len(bands) == len(model_bands):
            raise InputSpecError(f"{path}: the file's band descriptions say {bands} but the encoder declares {model_bands}; "
                                 f"if the file is right, describe it with input.bands=[{','.join(bands)}]")
        unknown = [b for b in bands if b not in model_bands]
        if unknown:
            raise InputSpecError(f"{path}: bands {unknown} (from the file's band descriptions) were not in the encoder's training "
                                 f"bands {model_bands}; embed a subset of those (input.bands=[...])")
        found.setdefault(tuple(bands), path)
    if len(found) > 1:
        (a, pa), (b, pb) = list(found.items())[:2]
        raise InputSpecError(f"{pb}: bands {list(b)} differ from {pa}'s {list(a)}; embed files with one band set at a time")
    if declared is None and found:
        return list(next(iter(found)))
    return None


def input_spec(adapter) -> dict:
    """The declared input of ``adapter`` as it is configured (after fit: statistics included)."""
    c = adapter.config
    spec: dict[str, Any] = {"modality": adapter.name, "patch_dim": adapter.patch_dim, "coord_dims": adapter.coord_dims,
                            "program_inputs": "patches [B,N,P] float32, coords [B,N,C] float32, padding [B,N] bool (True = padding)"
                                              + (", meta.<key> [B,...]" if adapter.name in ("earth", "medical") else "")
                                              + (", attn_bias [B,N,N] int64" if adapter.attn_bias_buckets else "")}
    describe = SPECS.get(adapter.name)
    if describe is not None:
        spec.update(describe(c))
    spec["input_overrides"] = [f"input.{k}" for k in INPUT_KEYS.get(adapter.name, {})]
    return spec


def _earth(c: dict) -> dict:
    from modalities.earth.bands import BANDS, canonical

    bands = [canonical(b) for b in (c.get("bands") or [])]
    info = [BANDS.get(b) for b in bands]
    return {"units": "optical: reflectance = (DN + reflectance_offset) * reflectance_scale; SAR: backscatter in dB",
            "bands": bands, "wavelengths_um": [b.wavelength_um if b else None for b in info],
            "polarisations": [b.polarisation if b else None for b in info],
            "reflectance_scale": c.get("reflectance_scale"), "reflectance_offset": c.get("reflectance_offset"),
            "sar_units": c.get("sar_units"), "nodata": c.get("nodata"), "chip_size": c.get("chip_size"), "patch_size": c.get("patch_size"),
            "normalisation": c.get("stats"), "band_subsets": "any subset of the declared bands, named by the file's band "
            "descriptions or input.bands (the tokenizer is conditioned on wavelength)"}


def _speech(c: dict) -> dict:
    return {"units": "waveform amplitude, float in [-1, 1] (WAV/FLAC/OGG read with soundfile, mixed to mono)",
            "sample_rate_hz": c.get("sample_rate"), "mel": {k: c.get(k) for k in ("n_mels", "low_freq", "high_freq", "frame_length_ms", "frame_shift_ms")},
            "patch_frames_bands": c.get("patch"), "max_seconds_per_window": c.get("max_seconds"),
            "normalisation": {"mel_mean": c.get("mel_mean"), "mel_std": c.get("mel_std")}}


def _medical(c: dict) -> dict:
    return {"units": "CT in Hounsfield units" if c.get("intensity") == "ct" else "MR intensities (per-volume percentile scaling)"
            if c.get("intensity") == "mr" else "raw intensities", "intensity": c.get("intensity"), "ct_window": c.get("ct_window"),
            "mr_percentiles": c.get("mr_percentiles"), "orientation": c.get("orientation"), "voxel_spacing_mm": c.get("spacing"),
            "channels": c.get("channels"), "patch_voxels": c.get("patch"), "sliding_window": {"roi": c.get("sw_roi"), "overlap": c.get("sw_overlap")}}


def _pointcloud(c: dict) -> dict:
    return {"units": "coordinates in the file's units (normalised per cloud: " + str(c.get("normalize")) + ")",
            "columns": c.get("columns") or "x y z (+ the formats' own fields)", "features": c.get("features"),
            "up_axis": c.get("up_axis"), "points": c.get("points"), "groups": c.get("groups"), "group_size": c.get("group_size")}


def _graph(c: dict) -> dict:
    return {"node_features": f"{c.get('feature_dim')} columns per node (TU node labels one-hot, then attributes), standardised",
            "degree_features": c.get("degree_features"), "feature_mean": c.get("feature_mean"), "feature_std": c.get("feature_std"),
            "positional_encodings": {"laplacian_dims": c.get("lap_dims"), "random_walk_steps": c.get("rw_steps")},
            "edges": f"shortest-path distance clipped at {c.get('max_distance')} and {c.get('edge_types')} edge types, as attention-bias codes"}


SPECS = {"earth": _earth, "speech": _speech, "medical": _medical, "pointcloud": _pointcloud, "graph": _graph}
