"""The bad-input fuzz table: every format x corruption, each case in its own process with a timeout.

Each outcome must be a named error (``data.on_error=raise``) and a named error or a counted skip
(``skip``); a hang, a native crash, an error that does not name the file, or a silent result fails the
table. The table is written as markdown (``$DOMAINFM_FUZZ_TABLE`` or the test's tmp folder) so its
cells can be read, not only its verdict. The default tier runs the cases of the bugs this policy fixed;
the full table is ``slow``. One server process imports the reader stacks once and forks a process per
case (``fuzz_inputs.serve``), so a case costs its reads, not a fresh interpreter's imports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_inputs import CORRUPTIONS, FORMATS, NOT_APPLICABLE  # noqa: E402

WORKER = Path(__file__).resolve().parent / "fuzz_inputs.py"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180

# the silent failures issue 33 reported, and one case per reader library
REDUCED = [("geotiff", "truncated"), ("nifti", "truncated"), ("pcd", "header-body-mismatch"), ("wav", "header-body-mismatch"),
           ("ogg", "truncated"), ("tu", "header-body-mismatch"), ("las", "huge-header"), ("npy", "wrong-dtype"),
           ("smiles", "truncated"), ("dicom", "truncated")]


def run_cases(cases: list[tuple[str, str]], work: Path) -> list[dict]:
    """All cases through one server process that forks one process per case, each with a timeout."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOMAINFM_CACHE": str(work / "cache")}
    args = [sys.executable, str(WORKER), "--serve", str(work), str(TIMEOUT_S)] + [f"{f}:{k}" for f, k in cases]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S * len(cases) + 300)
    rows = {(r["format"], r["corruption"]): r for r in (json.loads(ln[5:]) for ln in out.stdout.splitlines() if ln.startswith("FUZZ "))}
    tail = " | ".join((out.stderr or "").strip().splitlines()[-3:])
    return [rows.get(c, {"format": c[0], "corruption": c[1], "raise": "no-result", "skip": "no-result",
                         "raise_detail": f"server rc {out.returncode}: {tail}"}) for c in cases]


def passed(row: dict) -> bool:
    return row["raise"] == "error" and row["skip"] in ("skip", "error")


def write_table(rows: list[dict], path: Path) -> None:
    lines = ["| format | corruption | on_error=raise | on_error=skip | detail |", "|---|---|---|---|---|"]
    for r in rows:
        detail = (r.get("skip_detail") if r.get("skip") == "skip" else r.get("raise_detail")) or ""
        lines.append(f"| {r['format']} | {r['corruption']} | {r['raise']} | {r['skip']} | {detail.replace('|', '/')[:160]} |")
    counts = {k: sum(1 for r in rows for m in ("raise", "skip") if r[m] == k) for k in ("hang", "crash", "silent", "unnamed", "no-result")}
    lines += ["", f"{len(rows)} cases; " + ", ".join(f"{k}: {v}" for k, v in counts.items())]
    path.write_text("\n".join(lines) + "\n")


def table(cases: list[tuple[str, str]], tmp_path: Path, name: str) -> list[dict]:
    rows = run_cases(cases, tmp_path / "cases")
    out = Path(os.environ.get("DOMAINFM_FUZZ_TABLE", tmp_path / name))
    write_table(rows, out)
    print(out.read_text())
    return rows


def all_cases() -> list[tuple[str, str]]:
    return [(f, k) for f in FORMATS for k in CORRUPTIONS if (f, k) not in NOT_APPLICABLE]


def test_fuzz_table_reduced(tmp_path):
    rows = table(REDUCED, tmp_path, "fuzz-reduced.md")
    bad = [r for r in rows if not passed(r)]
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.slow
def test_fuzz_table_full(tmp_path):
    rows = table(all_cases(), tmp_path, "fuzz-full.md")
    bad = [r for r in rows if not passed(r)]
    assert not bad, json.dumps(bad, indent=1)


def test_table_marks_a_silent_result(tmp_path):
    """Negative control of the verdict: a good file passed off as corrupt reads fine and is called silent."""
    import fuzz_inputs

    work = tmp_path / "control"
    modality, cfg, spec, name = fuzz_inputs.build("xyz", "wrong-dtype", work)
    bad = Path(spec["root"]) / "bad.xyz"
    bad.write_bytes((Path(spec["root"]) / "good0.xyz").read_bytes())
    assert fuzz_inputs.outcome(modality, cfg, spec, "raise", name)[0] == "silent"
    assert not passed({"raise": "silent", "skip": "silent"})
