"""Paired data for alignment: manifests with one column per tower, folder pairing rules, the pair schedule.

A paired manifest (CSV or JSONL) has one column per tower, named as the tower (a file path; the text
itself for a text tower; a SMILES string for a graph tower), plus optional ``label`` and ``group``
columns. A row may lack some columns; it contributes every pair of towers it has, and a row with a
single column is counted as unpaired (it trains nothing, but the data summary says how many there are).

Training draws ONE pair type per step (``speech|text``, ``pointcloud|depth``...), from a per-epoch plan
seeded by the run seed and the epoch, so every process picks the same pair type at the same step
without talking to the others; each pair type's rows are a seeded permutation cut into whole global
batches (partial batches are dropped: padding them with repeats would make false negatives).
"""
from __future__ import annotations

import csv
import itertools
import json
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from foundation.errors import DataError
from foundation.tokens import PatchBatch, collate
from modalities.base import sample_seed


# -- manifests --------------------------------------------------------------------------------------
def read_paired_manifest(path: str | Path, towers: list[str]) -> list[dict]:
    """Rows of a paired manifest as ``{tower: value or None, "label": ..., "group": ...}``; relative
    file paths are resolved against the manifest's folder by :class:`PairedDataset` (not here: text
    columns are not paths)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "paired manifest does not exist", "set data.manifest to a CSV or JSONL file with one column per tower")
    text = path.read_text()
    if path.suffix in (".jsonl", ".ndjson"):
        raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raw = list(csv.DictReader(text.splitlines()))
    if not raw:
        raise DataError(path, "paired manifest has no rows")
    present = set().union(*raw)
    if not present & set(towers):
        raise DataError(path, f"no column named after a tower ({', '.join(towers)}); columns: {sorted(present)}",
                        "name each column as its tower")
    rows = []
    for r in raw:
        row = {t: (str(r[t]) if r.get(t) not in (None, "") else None) for t in towers}
        row["label"] = None if r.get("label") in (None, "") else str(r["label"])
        row["group"] = None if r.get("group") in (None, "") else str(r["group"])
        rows.append(row)
    return rows


def write_paired_manifest(path: str | Path, rows: list[dict], columns: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return path


# -- folder pairing rules ---------------------------------------------------------------------------
def pair_by_stem(a_root: str | Path, b_root: str | Path, a_ext: tuple[str, ...], b_ext: tuple[str, ...],
                 a_name: str, b_name: str, b_is_text: bool = False) -> list[dict]:
    """Files of two folders paired by file stem (a recording ``x.wav`` with its transcript ``x.txt``);
    ``b_is_text`` puts the transcript's text, not its path, in the row. Unmatched files stay unpaired rows."""
    def index(root, exts):
        return {p.stem: p for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name.lower().endswith(exts)}
    a, b = index(a_root, a_ext), index(b_root, b_ext)
    rows = []
    for stem in sorted(set(a) | set(b)):
        bv = b.get(stem)
        rows.append({a_name: str(a[stem]) if stem in a else None,
                     b_name: (bv.read_text().strip() if b_is_text else str(bv)) if bv is not None else None})
    return rows


def pair_s1_s2(s1_root: str | Path, s2_root: str | Path, rule: str = "bigearthnet") -> list[dict]:
    """Sentinel-1 / Sentinel-2 pairs from two folders of patch folders.

    ``rule="bigearthnet"``: each S1 patch folder's ``*_labels_metadata.json`` names its S2 patch in
    ``corresponding_s2_patch``. ``rule="regex:<pattern>"``: the pattern's first group, applied to both
    folder names, is the shared key (e.g. ``regex:_(\\d+_\\d+)$`` for a tile/row suffix)."""
    s1 = sorted(p for p in Path(s1_root).iterdir() if p.is_dir())
    s2 = {p.name: p for p in sorted(Path(s2_root).iterdir()) if p.is_dir()}
    rows, used = [], set()
    for p in s1:
        if rule == "bigearthnet":
            meta = next(p.glob("*_labels_metadata.json"), None)
            if meta is None:
                raise DataError(p, "no *_labels_metadata.json with corresponding_s2_patch", "use rule=regex:<pattern> instead")
            key = json.loads(meta.read_text()).get("corresponding_s2_patch")
            match = s2.get(key)
        elif rule.startswith("regex:"):
            m = re.search(rule[6:], p.name)
            key = m.group(1) if m else None
            match = next((q for n, q in s2.items() if (mm := re.search(rule[6:], n)) and mm.group(1) == key), None)
        else:
            raise DataError(rule, "unknown S1/S2 pairing rule", "use bigearthnet or regex:<pattern>")
        rows.append({"s1": str(p), "s2": str(match) if match else None})
        if match:
            used.add(match.name)
    rows += [{"s1": None, "s2": str(q)} for n, q in s2.items() if n not in used]
    return rows


# -- the batch the alignment model sees ---------------------------------------------------------------
@dataclass
class PairBatch:
    """One pair type's batch: row i of ``inputs[0]`` and ``inputs[1]`` are a pair."""

    towers: tuple[str, str]
    inputs: tuple[Any, Any]  # PatchBatch or list[str] (text)
    ids: tuple[list[str], list[str]]
    keys: torch.Tensor | None  # [B] rows with equal keys are positives of each other

    @property
    def size(self) -> int:
        return len(self.ids[0])

    @property
    def pair_type(self) -> str:
        return "|".join(self.towers)

    def to(self, device, non_blocking: bool = False) -> "PairBatch":
        move = [x.to(device, non_blocking=non_blocking) if isinstance(x, PatchBatch) else x for x in self.inputs]
        return replace(self, inputs=tuple(move), keys=None if self.keys is None else self.keys.to(device))


def collate_pairs(items: list[tuple]) -> PairBatch:
    """``items``: (towers, sample_a, sample_b, id_a, id_b, key) of one pair type."""
    towers = items[0][0]
    inputs = tuple(None if items[0][1 + k] is None else  # a precomputed frozen tower: features come from its cache
                   collate([it[1 + k] for it in items]) if not isinstance(items[0][1 + k], str) else [it[1 + k] for it in items]
                   for k in range(2))
    keys = None if items[0][5] is None else torch.tensor([it[5] for it in items])
    return PairBatch(towers, inputs, ([it[3] for it in items], [it[4] for it in items]), keys)


class PairedDataset(Dataset):
    """Rows of a paired manifest read through each tower's own adapter dataset.

    ``tower_specs``: ``{name: {"kind": "text"}}`` or ``{name: {"kind": "encoder", "adapter": Adapter,
    "frozen": bool}}``. Frozen towers read the deterministic view (their features are cached by id);
    trained towers read the augmented training view. ``positives``: ``text`` (rows sharing the text
    of a text tower are positives), ``label`` (rows sharing a label) or ``instance`` (only the row itself).
    """

    def __init__(self, manifest: str | Path, tower_specs: dict[str, dict], pairs: list[str] | None = None,
                 positives: str = "auto", train: bool = True, data_cfg: dict | None = None, work_dir: str | Path | None = None) -> None:
        self.manifest, self.specs, self.train = Path(manifest), tower_specs, train
        names = list(tower_specs)
        self.rows = read_paired_manifest(manifest, names)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="domainfm-pairs-"))
        self.datasets: dict[str, Any] = {}
        self.index: dict[str, dict[int, int]] = {}  # tower -> manifest row -> index in its dataset
        self.paths: dict[str, dict[int, str]] = {}  # tower -> manifest row -> resolved file (the cache key of its features)
        self.per_file: dict[str, int] = {}  # tower -> samples its adapter's dataset gives per file
        # frozen towers whose features of every row are already computed: training items carry no input for
        # them (None), so a step costs no file read; the tower takes its features from its cache by id
        self.precomputed: set[str] = set()
        for name, spec in tower_specs.items():
            have = [i for i, r in enumerate(self.rows) if r[name] is not None]
            self.index[name] = {row: k for k, row in enumerate(have)}
            if spec["kind"] == "text":
                continue
            paths = []
            inline = spec["adapter"].name == "graph"  # a molecule column holds SMILES, as the graph adapter's manifests do
            for i in have:
                if inline:
                    paths.append(self.rows[i][name])
                    continue
                p = Path(self.rows[i][name])
                p = p if p.is_absolute() else self.manifest.parent / p
                if not p.exists():
                    raise DataError(self.manifest, f"row {i + 2} ({name}={self.rows[i][name]}): file does not exist",
                                    "fix the path or remove the row")
                paths.append(str(p))
            self.paths[name] = dict(zip(have, paths))
            column = spec["adapter"].config["smiles_column"] if inline else "path"
            tower_manifest = write_paired_manifest(self.work_dir / f"{name}.csv", [{column: p} for p in paths], [column])
            try:
                self.datasets[name] = spec["adapter"].dataset({**(data_cfg or {}), "root": None, "manifest": str(tower_manifest),
                                                               "labels": None}, train=train)
            except (OSError, ValueError, RuntimeError, DataError) as err:
                raise DataError(self.manifest, f"{name} column: {str(err).splitlines()[0]}", "fix or remove the row it names") from None
            # an adapter may give several samples per file (medical: crops_per_volume crops, file-major); a row reads the first
            self.per_file[name] = max(1, len(self.datasets[name]) // max(1, len(paths)))
        all_pairs = ["|".join(p) for p in itertools.combinations(names, 2)]
        self.pair_types = [p for p in (pairs or all_pairs) if any(self._has(r, p) for r in self.rows)]
        self.rows_of = {p: [i for i, r in enumerate(self.rows) if self._has(r, p)] for p in self.pair_types}
        self.unpaired = sum(1 for r in self.rows if sum(r[n] is not None for n in names) == 1)
        self.keys = self._keys(positives)

    @staticmethod
    def _has(row: dict, pair_type: str) -> bool:
        return all(row[t] is not None for t in pair_type.split("|"))

    def _keys(self, positives: str) -> list[int] | None:
        texts = [n for n, s in self.specs.items() if s["kind"] == "text"]
        if positives == "auto":
            positives = "label" if any(r["label"] is not None for r in self.rows) else ("text" if texts else "instance")
        if positives == "instance":
            return None
        if positives == "label":
            values = [r["label"] if r["label"] is not None else f"row{i}" for i, r in enumerate(self.rows)]
        elif positives == "text":
            values = [next((r[t] for t in texts if r[t] is not None), f"row{i}") for i, r in enumerate(self.rows)]
        else:
            raise DataError(positives, "unknown align.positives", "use auto, text, label or instance")
        vocab = {v: k for k, v in enumerate(sorted(set(values)))}
        return [vocab[v] for v in values]

    def summary(self) -> dict:
        return {"rows": len(self.rows), "unpaired_rows": self.unpaired,
                "pairs": {p: len(r) for p, r in self.rows_of.items()},
                "per_tower": {n: len(ix) for n, ix in self.index.items()}}

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, tower: str, row: int, seed: int | None) -> Any:
        """One tower's view of a manifest row (text, or the adapter's SampleTokens)."""
        if self.specs[tower]["kind"] == "text":
            return self.rows[row][tower]
        ds, k = self.datasets[tower], self.index[tower][row] * self.per_file[tower]
        frozen = self.specs[tower].get("frozen", False)
        try:
            return ds[k] if (seed is None or frozen or not self.train) else ds[(k, seed)]
        except DataError as err:  # the adapter's own one-line problem, placed at its manifest row
            raise DataError(self.manifest, f"row {row + 2} ({tower}={self.rows[row][tower]}): {err.problem}",
                            err.fix or "fix or remove the row") from None
        except (OSError, ValueError, RuntimeError) as err:
            raise DataError(self.manifest, f"row {row + 2} ({tower}={self.rows[row][tower]}): {str(err).splitlines()[0]}",
                            "fix or remove the row") from None

    def item_id(self, tower: str, row: int) -> str:
        return self.rows[row][tower] if self.specs[tower]["kind"] == "text" else self.paths[tower][row]

    def __getitem__(self, key: tuple[str, int, int | None]) -> tuple:
        pair_type, row, seed = key
        a, b = pair_type.split("|")
        view = lambda t, s: None if t in self.precomputed else self.read(t, row, s)  # noqa: E731
        return ((a, b), view(a, seed), view(b, None if seed is None else seed + 1),
                self.item_id(a, row), self.item_id(b, row), None if self.keys is None else self.keys[row])


class PairScheduleSampler(Sampler):
    """Batch sampler: lists of ``(pair_type, row, seed)`` of this rank, ONE pair type per batch.

    Epoch ``e``'s plan: each pair type ``t`` gives ``len(rows_t) // (world * batch)`` whole global
    batches, and their order is a permutation seeded by (seed, e), so all ranks see the same pair type
    at the same step; resume needs only (epoch, batch), like :class:`foundation.data.TrainSampler`.
    """

    yields_batches = True  # foundation.data.train_loader passes it as a batch sampler

    def __init__(self, rows_of: dict[str, list[int]], batch_size: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.rows_of, self.batch_size, self.world, self.rank, self.seed = rows_of, batch_size, world, rank, seed
        self.per_type = {t: len(r) // (world * batch_size) for t, r in rows_of.items()}
        if not sum(self.per_type.values()):
            raise ValueError(f"no pair type has one global batch ({world} x {batch_size}) of rows: {({t: len(r) for t, r in rows_of.items()})}; "
                             "lower train.batch_size")
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return sum(self.per_type.values())

    @property
    def dropped_per_epoch(self) -> int:
        return sum(len(r) - self.per_type[t] * self.world * self.batch_size for t, r in self.rows_of.items())

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def plan(self, epoch: int) -> list[tuple[str, int]]:
        """(pair type, its j-th batch) for every global batch of the epoch, the same on every rank."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        slots = [(t, j) for t, n in self.per_type.items() for j in range(n)]
        return [slots[i] for i in torch.randperm(len(slots), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        orders = {}
        for k, t in enumerate(self.rows_of):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + k + 1)
            orders[t] = [self.rows_of[t][i] for i in torch.randperm(len(self.rows_of[t]), generator=g).tolist()]
        gb = self.world * self.batch_size
        for t, j in self.plan(self.epoch)[self.start_batch:]:
            rows = orders[t][j * gb:(j + 1) * gb][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(t, r, sample_seed(self.seed, self.epoch, r)) for r in rows]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch
