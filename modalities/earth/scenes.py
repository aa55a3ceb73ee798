"""From a folder or manifest to scenes: which files (and which bands of them) make one sample.

Layouts: ``stacked`` (one GeoTIFF holds all bands, EuroSAT/Sen1Floods11) or ``per_band`` (a folder
with one file per band, BigEarthNet's ``*_B01.tif``...). A SAR+optical pair adds a companion:
``pair=bigearthnet`` follows ``corresponding_s2_patch`` in each S1 ``*_labels_metadata.json``;
``pair=regex:<find>=><replace>`` names a sibling file (``S2Hand`` -> ``S1Hand``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from foundation.inputs import InputPolicy, precheck
from foundation.recipes import RecipeError
from foundation.sources import Source, find_sources
from modalities.earth.bands import PRESETS, canonical
from modalities.earth.io import EarthInputError, RasterPart, check_band_count, open_checked

RASTER_EXTS = (".tif", ".tiff")
BAND_FILE = re.compile(r"_(B\d{1,2}A?|B8A|VV|VH|HH|HV)\.tiff?$", re.IGNORECASE)


@dataclass
class Scene:
    """One sample source: its raster parts (primary first), label, optional cloud-mask file."""

    parts: list[RasterPart]
    label: str | None = None
    cloud: str | None = None
    extra: dict = field(default_factory=dict)
    n_primary: int = 1  # parts[:n_primary] are the primary file(s); the rest the SAR/optical companion
    source: str = ""  # the file or per-band folder the sample was found as
    decl: dict = field(default_factory=dict)  # per-scene declaration (a manifest's preset/bands columns)

    @property
    def primary_bands(self) -> list[str]:
        return [b for part in self.parts[: self.n_primary] for b in part.bands]

    @property
    def bands(self) -> list[str]:
        return [b for part in self.parts for b in part.bands]

    @property
    def path(self) -> str:
        return self.source or self.parts[0].path


def is_band_folder(path: Path) -> bool:
    """A folder holding one file per band (two or more ``*_<BAND>.tif``) is one per-band sample."""
    return path.is_dir() and sum(1 for p in path.iterdir() if BAND_FILE.search(p.name)) >= 2


def band_files(folder: str) -> dict[str, str]:
    """Map canonical band name -> file for a per-band folder."""
    out = {}
    for p in sorted(Path(folder).iterdir()):
        m = BAND_FILE.search(p.name)
        if m:
            out[canonical(m.group(1))] = str(p)
    return out


def bands_from_descriptions(path: str) -> list[str]:
    with open_checked(path) as ds:
        desc = list(ds.descriptions)
    try:
        if any(d is None for d in desc):
            raise KeyError("missing")
        return [canonical(d) for d in desc]
    except KeyError as err:
        raise EarthInputError(
            f"{path}: band names are not declared and the file's band descriptions {desc} do not name them; "
            "set adapter.bands (file order) or adapter.preset") from err


def scene_parts(path: str, bands: list[str] | None) -> list[RasterPart]:
    """The parts of a stacked file or a per-band folder, with declared (or described) band names."""
    if Path(path).is_dir():
        files = band_files(path)
        wanted = bands or sorted(files)
        missing = [b for b in wanted if b not in files]
        if missing:
            raise EarthInputError(f"{path}: per-band folder has no file for band(s) {missing} (found {sorted(files)})")
        return [RasterPart(files[b], (b,)) for b in wanted]
    names = [canonical(b) for b in bands] if bands else bands_from_descriptions(path)
    part = RasterPart(path, tuple(names))
    check_band_count(part)
    return [part]


def bigearthnet_pairs(s1_root: str | Path) -> dict[str, str]:
    """S2 patch name -> S1 patch folder, from ``corresponding_s2_patch`` in the S1 metadata JSON."""
    pairs = {}
    for meta in sorted(Path(s1_root).rglob("*_labels_metadata.json")):
        s2 = json.loads(meta.read_text()).get("corresponding_s2_patch")
        if s2:
            pairs[s2] = str(meta.parent)
    if not pairs:
        raise FileNotFoundError(f"no BigEarthNet S1 metadata with corresponding_s2_patch under {s1_root}")
    return pairs


def companion_path(path: str, pair: str, pair_root: str | None, lookup: dict[str, str] | None) -> str:
    if pair == "bigearthnet":
        name = Path(path).name
        if name not in (lookup or {}):
            raise FileNotFoundError(f"{path}: no Sentinel-1 patch lists {name} as corresponding_s2_patch under {pair_root}")
        return lookup[name]
    if pair.startswith("regex:") and "=>" in pair:
        find, repl = pair[len("regex:"):].split("=>", 1)
        if "/" in find:  # a rule over the whole path: regex:/s2/(.+)_S2\.tif$=>/s1/\1_S1.tif
            target = re.sub(find, repl, path)
            if target == path or not Path(target).exists():
                raise FileNotFoundError(f"{path}: companion {target} (rule {pair!r}) does not exist")
            return target
        other = re.sub(find, repl, Path(path).name)
        target = Path(path).parent / other
        if pair_root:  # companions in their own tree (s1/<Class>/x_S1.tif beside s2/<Class>/x_S2.tif)
            target = (lookup or {}).get(other, Path(pair_root) / other)
        if other == Path(path).name or not Path(target).exists():
            raise FileNotFoundError(f"{path}: companion {target} (rule {pair!r}) does not exist")
        return str(target)
    raise RecipeError(f"adapter.pair must be 'bigearthnet' or 'regex:<find>=><replace>', got {pair!r}")


def cloud_path(path: str, rule: str | None) -> str | None:
    """A sidecar cloud-mask file named by ``regex:<find>=><replace>`` on the file name (nonzero = cloud)."""
    if not rule:
        return None
    find, repl = rule[len("regex:"):].split("=>", 1) if rule.startswith("regex:") else rule.split("=>", 1)
    target = Path(path).parent / re.sub(find, repl, Path(path).name)
    return str(target) if target.exists() and target.name != Path(path).name else None


def row_declaration(row: dict, path: str) -> dict:
    """A manifest row may declare its own file: a ``preset`` column and/or a ``bands`` column
    (space/comma separated, file order). This is how one dataset mixes EuroSAT files (B8A last) with
    files in registry order: each is read as declared, then mapped onto the model's channels."""
    decl: dict = {}
    preset = (row or {}).get("preset")
    if preset:
        if preset not in PRESETS:
            raise EarthInputError(f"{path}: unknown preset {preset!r} in the manifest; known: {sorted(PRESETS)}")
        decl.update({k: v for k, v in PRESETS[preset].items() if k != "layout"})
    bands = (row or {}).get("bands")
    if bands:
        decl["bands"] = [canonical(b) for b in re.split(r"[\s,;]+", str(bands).strip()) if b]
    return decl


def find_scenes(data: dict, cfg: dict, inputs: InputPolicy | None = None) -> list[Scene]:
    """All scenes under data.root / data.manifest with the adapter's band declarations.

    A scene that cannot be used raises or is counted and skipped by ``inputs`` (``data.on_error``).
    Files matching the pair or cloud rule's *replacement* are companions, not samples of their own.
    """
    inputs = inputs or InputPolicy.from_data(data)
    sources: list[Source] = find_sources(data.get("root"), data.get("manifest"), data.get("labels"),
                                         extensions=RASTER_EXTS, is_sample_dir=is_band_folder)
    pair, pair_root = cfg.get("pair"), cfg.get("pair_root")
    lookup = None
    if pair == "bigearthnet":
        lookup = bigearthnet_pairs(pair_root)
    elif pair and pair_root:
        lookup = {p.name: str(p) for p in Path(pair_root).rglob("*") if p.name.lower().endswith(RASTER_EXTS)}
    skip_names = []
    for rule in (pair if pair and pair.startswith("regex:") else None, cfg.get("cloud_mask")):
        if rule:
            body = rule[len("regex:"):] if rule.startswith("regex:") else rule
            skip_names.append(re.compile(re.escape(body.split("=>", 1)[1])))

    def scene(src: Source) -> Scene:
        decl = row_declaration(src.extra, src.path)
        parts = scene_parts(src.path, decl.get("bands", cfg.get("bands")))
        n_primary = len(parts)
        if pair:
            other = companion_path(src.path, pair, pair_root, lookup)
            parts += scene_parts(other, cfg.get("pair_bands"))
        for part in parts:
            precheck(part.path)
        return Scene(parts, src.label, cloud_path(src.path, cfg.get("cloud_mask")), src.extra, n_primary, src.path, decl)

    from foundation.dense import label_files

    labels_among = label_files([src.path for src in sources], data.get("masks"))  # dense-label files beside the samples
    scenes = []
    for src in sources:
        name = Path(src.path).name
        if any(r.search(name) for r in skip_names) or src.path in labels_among:
            continue
        if cfg.get("include") and not re.search(cfg["include"], name):
            continue
        inputs.found += 1
        got = inputs.load(src.path, scene, src)
        if got is not None:
            scenes.append(got)
    return scenes
