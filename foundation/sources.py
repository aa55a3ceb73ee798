"""Where samples come from: a folder or a manifest, plus the contract's label rules.

Every adapter lists its files through :func:`find_sources`, so ``data.root``, ``data.manifest`` and
``data.labels`` mean the same thing for every modality.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from foundation.errors import DataError
from foundation.recipes import RecipeError


@dataclass
class Source:
    """One entry of a dataset: a file (or series folder) plus whatever a manifest row says of it."""

    path: str
    label: str | None = None
    extra: dict = field(default_factory=dict)


def read_manifest(manifest: str | Path) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL/JSON manifest; relative paths are resolved against it."""
    manifest = Path(manifest)
    if not manifest.exists():
        raise FileNotFoundError(f"data.manifest {manifest} does not exist (point data.manifest=FILE at a CSV/JSONL list of files)")
    text = manifest.read_text()
    if manifest.suffix in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif manifest.suffix == ".json":
        rows = json.loads(text)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    for i, row in enumerate(rows):
        if "path" not in row:
            raise DataError(manifest, f"row {i + 1} has no 'path' column (columns: {sorted(row)})", "add a 'path' column naming each file")
        p = Path(str(row["path"]))
        row["path"] = str(p if p.is_absolute() else (manifest.parent / p))
    return rows


def label_of(source_path: str, rule: str | None, row: dict | None = None) -> str | None:
    """Apply a ``data.labels`` rule: ``folder``, ``pattern:<regex>``, ``column:<name>`` (or None)."""
    if rule in (None, "", "none", "dataset"):
        return None
    if rule == "folder":
        return Path(source_path).parent.name
    if rule.startswith("pattern:"):
        m = re.search(rule[len("pattern:"):], Path(source_path).name)
        if not m:
            raise DataError(source_path, f"data.labels pattern {rule[8:]!r} does not match the file name",
                            "change the pattern so its first group captures the label from every file name")
        return m.group(1) if m.groups() else m.group(0)
    if rule.startswith("column:"):
        col = rule[len("column:"):]
        if row is None or col not in row:
            raise DataError(source_path, f"data.labels column {col!r} is missing for this file",
                            "give data.manifest=FILE with that column (column labels need a manifest)")
        return str(row[col])
    raise RecipeError(f"data.labels={rule!r} is not a label rule: use folder, pattern:<regex>, column:<name> or dataset")


def find_sources(
    root: str | Path | None = None,
    manifest: str | Path | None = None,
    labels: str | None = None,
    extensions: Iterable[str] = (),
    is_sample_dir=None,
) -> list[Source]:
    """List samples under ``root`` (recursive, sorted) or from ``manifest``.

    ``extensions`` are matched case-insensitively against the end of the name (".nii.gz" works);
    ``is_sample_dir(path)`` lets an adapter treat a folder as one sample (a DICOM series).
    """
    if manifest:
        return [Source(r["path"], label_of(r["path"], labels, r), r) for r in read_manifest(manifest)]
    if not root:
        raise RecipeError("no data given: set data.root=DIR or data.manifest=FILE")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data.root {root} does not exist (point data.root=DIR at a folder of the modality's files, or give data.manifest=FILE)")
    if root.is_file():
        return [Source(str(root), label_of(str(root), labels))]
    exts = tuple(e.lower() for e in extensions)
    found: list[Source] = []
    for p in sorted(root.rglob("*")):
        if is_sample_dir is not None and p.is_dir() and is_sample_dir(p):
            found.append(Source(str(p), label_of(str(p / "x"), labels) if labels == "folder" else label_of(str(p), labels)))
        elif p.is_file() and (not exts or p.name.lower().endswith(exts)):
            if is_sample_dir is not None and is_sample_dir(p.parent):
                continue
            found.append(Source(str(p), label_of(str(p), labels)))
    if not found:
        raise FileNotFoundError(f"data.root {root}: no files with extensions {list(exts)} (point data.root at a folder holding such files)")
    return found


def class_index(labels: list[str | None]) -> tuple[list[int] | None, list[str]]:
    """Map string labels to integer classes (sorted names, numeric order where all are numbers)."""
    if any(lab is None for lab in labels):
        return None, []
    names = sorted(set(labels), key=lambda s: (0, float(s)) if _is_number(s) else (1, s))
    lookup = {n: i for i, n in enumerate(names)}
    return [lookup[lab] for lab in labels], names


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
