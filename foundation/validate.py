"""``domainfm validate RECIPE_OR_MODEL_DIR DATA``: read every file the way training would, before training.

Every sample goes through the adapter's real readers and preprocessing, in DataLoader workers, under
``data.on_error=skip`` so one bad file does not hide the next: the bad-input policy's ledger
(``foundation.inputs``) collects each failing file once, whichever worker found it. The report gives
counts, each failing file with its reason, dataset statistics per modality, class counts, and (with
``--against``) files whose content also appears in another dataset (train/test leakage by hash).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from foundation.errors import DomainfmError
from foundation.inputs import policy_of


def resolve(target: str, data: str, overrides: list[str]) -> tuple[Any, dict, Path | None]:
    """(adapter, data spec, run dir or None) for a recipe name/YAML, an export directory or a run directory."""
    from foundation.recipes import DEFAULTS, apply_overrides, load_recipe
    from modalities.base import adapter_from_config

    t = Path(target)
    export = t if (t / "config.json").exists() else (t / "encoder" if (t / "encoder" / "config.json").exists() else None)
    run_dir = t if t.is_dir() and (t / "recipe.yaml").exists() else None
    data_over = [o for o in overrides if o.startswith("data.")]
    if export is not None:
        config = json.loads((export / "config.json").read_text())
        adapter = adapter_from_config(config["modality"], config["adapter"])
        spec = apply_overrides({"data": dict(DEFAULTS["data"])}, data_over)["data"]
    else:
        recipe = load_recipe(str(t / "recipe.yaml") if run_dir else target, overrides)
        adapter = adapter_from_config(recipe["modality"], recipe["adapter"])
        spec = dict(recipe["data"])
    p = Path(data)
    manifest = p.is_file() and p.suffix in (".csv", ".jsonl", ".json", ".ndjson") and adapter.name != "graph"
    spec["root"], spec["manifest"] = (None, str(p)) if manifest else (str(p), None)
    spec["on_error"] = "skip"  # collect every bad file; the exit code says whether there were any
    return adapter, spec, run_dir


class _Reader(Dataset):
    """Reads sample ``i`` in a worker and returns a few plain numbers about it (not its tensors)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = self.dataset[i]
        if s is None:
            return {"index": i, "ok": False}
        row = {"index": i, "ok": True, "path": s.path, "tokens": int((~s.padding).sum()), "patch_dim": int(s.patches.shape[-1]),
               "label": s.label, "finite": bool(torch.isfinite(s.patches).all())}
        for key in ("spacing", "gsd"):
            if key in s.meta:
                row[key] = [round(float(v), 4) for v in torch.as_tensor(s.meta[key]).flatten()]
        return row


def _first(batch: list) -> Any:
    return batch[0]


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def modality_stats(adapter: Any, dataset: Any, rows: list[dict]) -> dict:
    """What a user checks before training, per modality (sample rates, bands and CRS, spacing, points, graph sizes)."""
    name, out = adapter.name, {}
    ok = [r for r in rows if r["ok"]]
    if name == "speech":
        from modalities.speech.io import audio_info

        infos = [audio_info(p) for p in sorted({s.path for s in dataset.segments})]
        out["sample_rates"] = dict(Counter(i.sample_rate for i in infos))
        out["channels"] = dict(Counter(i.channels for i in infos))
        out["seconds"] = _spread([round(i.seconds, 3) for i in infos])
    elif name == "earth":
        import rasterio

        out["bands"] = dict(Counter(" ".join(s.bands) for s in dataset.scenes))
        out["crs"] = dict(Counter(str(g.crs) for g in dataset.grids))
        dtypes = Counter()
        for s in dataset.scenes:
            for part in s.parts:
                with rasterio.open(part.path) as ds:
                    dtypes.update(ds.dtypes)
        out["dtypes"] = dict(dtypes)
        out["chips"] = len(dataset.chips)
        out["scene_size"] = _spread([g.height * g.width for g in dataset.grids])
    elif name == "medical":
        import nibabel as nib

        out["spacing_mm"] = dict(Counter(" x ".join(f"{v:g}" for v in r["spacing"]) for r in ok if "spacing" in r).most_common(10))
        orient = Counter()
        for item in dataset.items:
            src = item["source"]
            if src.lower().endswith((".nii", ".nii.gz")):
                orient["".join(nib.aff2axcodes(nib.load(src).affine))] += 1
            else:
                orient["DICOM series"] += 1
        out["source_orientation"] = dict(orient)
    elif name == "pointcloud":
        counts, cols = [], Counter()
        for path in sorted({src.path for src, _, _ in dataset.items}):
            if not dataset.inputs.is_bad(path):
                cloud = dataset._load(path)
                counts.append(len(cloud))
                cols[" ".join(["x", "y", "z"] + list(cloud.feature_names))] += 1
        out["points_per_file"] = _spread(counts)
        out["columns"] = dict(cols)
    elif name == "graph":
        graphs = dataset.set.graphs
        out["nodes"] = _spread([int(g.num_nodes) for g in graphs])
        out["edges"] = _spread([int(g.edge_index.shape[1]) // 2 for g in graphs])
        out["feature_width"] = dict(Counter(int(g.x.shape[-1]) if getattr(g, "x", None) is not None else 0 for g in graphs))
    return out


def _files(data: str) -> list[Path]:
    p = Path(data)
    if p.is_file() and p.suffix in (".csv", ".jsonl", ".json", ".ndjson"):
        from foundation.sources import read_manifest

        with_paths = [Path(r["path"]) for r in read_manifest(p)]
        return sorted({f for q in with_paths for f in ([q] if q.is_file() else sorted(x for x in q.rglob("*") if x.is_file()))})
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))


def content_hashes(data: str) -> dict[str, list[str]]:
    """sha256 of file contents -> files with that content."""
    out: dict[str, list[str]] = {}
    for f in _files(data):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        out.setdefault(h.hexdigest(), []).append(str(f))
    return out


def leakage(data: str, other: str) -> list[dict]:
    """Files of ``data`` whose exact content is also in ``other``."""
    mine, theirs = content_hashes(data), content_hashes(other)
    return [{"sha256": h, "files": mine[h], "also_in": theirs[h]} for h in sorted(set(mine) & set(theirs))]


def validate_data(target: str, data: str, overrides: list[str] = (), workers: int | None = None,
                  against: str | None = None, progress: bool = True) -> dict:
    """The validation report (a dict that ``validation.json`` holds)."""
    adapter, spec, run_dir = resolve(target, data, list(overrides))
    ledger = Path(tempfile.mkdtemp(prefix="domainfm-validate-")) / "bad.tsv"
    saved = os.environ.get("DOMAINFM_INPUTS_LEDGER")
    os.environ["DOMAINFM_INPUTS_LEDGER"] = str(ledger)  # every policy (workers too) records into one ledger
    report: dict[str, Any] = {"target": str(target), "data": str(data), "modality": adapter.name, "fatal": None}
    rows: list[dict] = []
    try:
        try:
            dataset = adapter.dataset(spec, train=False)
        except (DomainfmError, ValueError, FileNotFoundError, RuntimeError) as err:
            dataset = None
            report["fatal"] = " ".join(str(err).split())
        if dataset is not None:
            workers = min(4, os.cpu_count() or 1) if workers is None else workers
            loader = DataLoader(_Reader(dataset), batch_size=1, num_workers=workers, collate_fn=_first)
            for row in tqdm(loader, total=len(dataset), disable=not progress, desc=f"validate {adapter.name}"):
                rows.append(row)
    finally:
        if saved is None:
            os.environ.pop("DOMAINFM_INPUTS_LEDGER", None)
        else:
            os.environ["DOMAINFM_INPUTS_LEDGER"] = saved
    bad: dict[str, str] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            path, _, reason = line.partition("\t")
            bad.setdefault(path, reason)
    pol = policy_of(dataset) if dataset is not None else None
    ok = [r for r in rows if r["ok"]]
    report.update({
        "files_found": pol.found if pol is not None else None,
        "files_failed": len(bad),
        "samples": len(rows), "samples_read": len(ok),
        "failures": [{"path": p, "reason": r} for p, r in sorted(bad.items())],
        "dropped": dict(pol.dropped) if pol is not None else {},
        "notes": list(pol.notes) if pol is not None else [],
        "non_finite_samples": sorted({r["path"] for r in ok if not r["finite"]}),
        "tokens_per_sample": _spread([r["tokens"] for r in ok]),
        "patch_dim": sorted({r["patch_dim"] for r in ok}),
    })
    if dataset is not None and getattr(dataset, "classes", None):
        counts = Counter(dataset.classes[r["label"]] for r in ok if r["label"] is not None)
        report["classes"] = {c: counts.get(c, 0) for c in dataset.classes}
    if dataset is not None:
        try:
            report["statistics"] = modality_stats(adapter, dataset, rows)
        except Exception as err:  # statistics are a courtesy; a failure here must not hide the read results
            report["statistics"] = {"error": f"{type(err).__name__}: {err}"}
    if against:
        report["against"] = str(against)
        report["leaked"] = leakage(data, against)
    report["errors"] = len(bad) + (1 if report["fatal"] else 0)
    report["run_dir"] = str(run_dir) if run_dir else None
    return report


def markdown(report: dict) -> str:
    """``validation.md``: the same report for people."""
    lines = [f"# Validation of {report['data']}", "",
             f"- modality: {report['modality']} (read with {report['target']})",
             f"- files found: {report['files_found']}, failed: {report['files_failed']}",
             f"- samples: {report['samples']}, read: {report['samples_read']}"]
    if report.get("fatal"):
        lines.append(f"- **fatal**: {report['fatal']}")
    for reason, n in report.get("dropped", {}).items():
        lines.append(f"- dropped {n} {reason}")
    for n in report.get("notes", []):
        lines.append(f"- note: {n}")
    if report.get("tokens_per_sample"):
        t = report["tokens_per_sample"]
        lines.append(f"- tokens per sample: min {t['min']}, median {t['median']}, max {t['max']}; patch width {report['patch_dim']}")
    if report.get("non_finite_samples"):
        lines.append(f"- samples with non-finite values: {len(report['non_finite_samples'])}")
    if report.get("classes"):
        lines += ["", "## Classes", "", "| class | samples |", "|---|---|"] + [f"| {c} | {n} |" for c, n in report["classes"].items()]
    if report.get("statistics"):
        lines += ["", "## Statistics", ""] + [f"- {k}: {json.dumps(v)}" for k, v in report["statistics"].items()]
    if report["failures"]:
        lines += ["", "## Failing files", "", "| file | reason |", "|---|---|"]
        lines += [f"| {f['path']} | {f['reason'].replace('|', '/')} |" for f in report["failures"]]
    if "leaked" in report:
        lines += ["", f"## Content shared with {report['against']}", ""]
        lines += [f"- {', '.join(x['files'])} = {', '.join(x['also_in'])}" for x in report["leaked"]] or ["- none"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | Path | None) -> Path:
    """Write validation.json and validation.md to ``out`` (default: the run directory, else the data's parent)."""
    folder = Path(out) if out else (Path(report["run_dir"]) if report.get("run_dir") else Path(report["data"]).resolve().parent)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.json").write_text(json.dumps(report, indent=2, default=str))
    (folder / "validation.md").write_text(markdown(report))
    return folder
