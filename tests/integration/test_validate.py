"""`domainfm validate` on the shared real data and on folders with corrupt files; `pretrain` under
`data.on_error=skip` counts each bad file once, never rereads it, and agrees with `validate`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from foundation.validate import validate_data
from tests.shared_data import shared_data

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "foundation.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "cache"))  # TU processed files and medical caches stay here


# -- the shared data: no errors, the counts the data README gives ------------------------------------------
SHARED = {  # recipe, path parts, overrides, files, samples
    "earth": ("earth-mae", ("earth", "eurosat_ms"), ["adapter.preset=eurosat_ms", "data.labels=folder"], 140, 140),
    "medical-nifti": ("medical-mae", ("medical", "nifti"), ["adapter.cache=none"], 3, 3),
    "medical-dicom": ("medical-mae", ("medical", "dicom_mr_series"), ["adapter.cache=none"], 1, 1),
    "graph": ("graph-mae", ("graphs", "MUTAG"), [], 188, 188),
    "pointcloud-las": ("pointcloud-mae", ("pointcloud", "scans", "simple.las"), [], 1, 1),
}


FAST = {"medical-nifti", "pointcloud-las"}  # the rest (about a minute each on 2 busy cores) run in the slow tier


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in sorted(SHARED)])
def test_validate_shared_data_has_no_errors_and_expected_counts(case):
    recipe, parts, overrides, files, samples = SHARED[case]
    rep = validate_data(recipe, str(shared_data(*parts)), overrides, workers=0, progress=False)
    assert rep["fatal"] is None and rep["errors"] == 0 and rep["failures"] == []
    assert rep["files_found"] == files and rep["samples"] == samples == rep["samples_read"]
    if case == "earth":
        assert rep["classes"] == {c: 14 for c in rep["classes"]} and len(rep["classes"]) == 10
        assert rep["statistics"]["bands"] == {"B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A": 140}
    if case == "graph":
        assert rep["statistics"]["nodes"]["min"] >= 10 and rep["statistics"]["feature_width"] == {7: 188}
    if case == "medical-dicom":
        assert rep["statistics"]["spacing_mm"]  # spacing after preprocessing is reported


@pytest.mark.slow
def test_validate_fsdd_speech_subset(tmp_path):
    """200 real FSDD recordings through a manifest (the whole folder is in the slow test below)."""
    files = sorted(shared_data("fsdd", "recordings").glob("*.wav"))[::10]
    (tmp_path / "m.csv").write_text("path\n" + "".join(f"{f}\n" for f in files))
    rep = validate_data("speech-mae", str(tmp_path / "m.csv"), [], workers=0, progress=False)
    assert rep["errors"] == 0 and rep["files_found"] == rep["samples_read"] == 200
    assert rep["statistics"]["sample_rates"] == {8000: 200}


@pytest.mark.slow
def test_validate_whole_fsdd_and_modelnet10():
    rep = validate_data("speech-mae", str(shared_data("fsdd", "recordings")), [], progress=False)
    assert rep["errors"] == 0 and rep["files_found"] == rep["samples_read"] == 2000
    rep = validate_data("pointcloud-mae", str(shared_data("pointcloud", "modelnet10")), ["data.labels=folder"], progress=False)
    assert rep["errors"] == 0 and rep["files_found"] == rep["samples_read"] == 3991 and len(rep["classes"]) == 10


# -- corrupt folders: exactly the bad files are named -------------------------------------------------------
def pointcloud_folder(root: Path) -> set[str]:
    """Good clouds of several formats plus one corrupt file of each kind; returns the corrupt names."""
    from modalities.pointcloud.io import write_las, write_pcd, write_ply

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(6):
        write_pcd(root / f"good{i}.pcd", rng.normal(size=(256, 3)))
    write_ply(root / "good.ply", rng.normal(size=(256, 3)))
    np.save(root / "good.npy", rng.normal(size=(256, 3)))
    good_pcd = (root / "good0.pcd").read_bytes()
    (root / "mismatch.pcd").write_bytes(good_pcd.replace(b"POINTS 256", b"POINTS 128").replace(b"WIDTH 256", b"WIDTH 128"))
    ply = (root / "good.ply").read_bytes()
    (root / "truncated.ply").write_bytes(ply[: len(ply) // 2])
    np.save(root / "complex.npy", rng.normal(size=(256, 3)).astype(np.complex128))
    (root / "empty.xyz").write_bytes(b"")
    (root / "garbage.las").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    write_las(root / "huge.las", rng.normal(size=(256, 3)))
    las = bytearray((root / "huge.las").read_bytes())
    las[107:111] = (4_000_000_000).to_bytes(4, "little")
    (root / "huge.las").write_bytes(bytes(las))
    return {"mismatch.pcd", "truncated.ply", "complex.npy", "empty.xyz", "garbage.las", "huge.las"}


def speech_folder(root: Path) -> tuple[set[str], str]:
    """Good WAVs plus corrupt audio; one (a cut-off FLAC) passes the header check and fails only when read."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(8):
        sf.write(root / f"good{i}.wav", rng.normal(0, 0.1, 8000).astype(np.float32), 8000)
    sf.write(root / "cut.flac", rng.normal(0, 0.1, 40000).astype(np.float32), 8000)
    flac = (root / "cut.flac").read_bytes()
    (root / "cut.flac").write_bytes(flac[: len(flac) * 2 // 3])
    (root / "garbage.wav").write_bytes(b"RIFF" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "empty.ogg").write_bytes(b"")
    wav = (root / "good0.wav").read_bytes()
    (root / "short.wav").write_bytes(wav[: len(wav) // 2])
    return {"cut.flac", "garbage.wav", "empty.ogg", "short.wav"}, "cut.flac"


def test_validate_names_exactly_the_corrupt_files_and_exits_nonzero(tmp_path):
    bad = pointcloud_folder(tmp_path / "clouds")
    out = cli("validate", "pointcloud-mae", str(tmp_path / "clouds"), "--out", str(tmp_path / "rep"), "--quiet", "--workers", "2")
    assert out.returncode == 1, out.stderr[-2000:]
    rep = json.loads((tmp_path / "rep" / "validation.json").read_text())
    assert {Path(f["path"]).name for f in rep["failures"]} == bad
    assert rep["files_found"] == 14 and rep["samples_read"] == 8
    md = (tmp_path / "rep" / "validation.md").read_text()
    assert all(name in md for name in bad) and "PCD header says 128 points" in md
    assert cli("validate", "pointcloud-mae", str(tmp_path / "clouds"), "--out", str(tmp_path / "rep"), "--quiet",
               "--allow-errors").returncode == 0


def test_validate_against_reports_shared_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    speech_folder(a)
    b.mkdir()
    (b / "copy.wav").write_bytes((a / "good3.wav").read_bytes())
    sf.write(b / "other.wav", np.zeros(800, np.float32), 8000)
    rep = validate_data("speech-mae", str(b), [], workers=0, against=str(a), progress=False)
    assert [(Path(x["files"][0]).name, Path(x["also_in"][0]).name) for x in rep["leaked"]] == [("copy.wav", "good3.wav")]


def test_pretrain_skip_counts_each_bad_file_once_and_matches_validate(tmp_path, monkeypatch):
    """Several epochs over a folder with corrupt audio: the run completes; each bad file is counted once,
    the one that fails only at load time is read once (never again, no other clip in its place)."""
    import modalities.speech.dataset as sd
    from foundation.engine import pretrain
    from foundation.recipes import load_recipe

    bad, late = speech_folder(tmp_path / "audio")
    rep = validate_data("speech-mae", str(tmp_path / "audio"), [], workers=2, progress=False)
    assert {Path(f["path"]).name for f in rep["failures"]} == bad and rep["errors"] == len(bad)

    reads: list[str] = []
    real = sd.read_audio
    monkeypatch.setattr(sd, "read_audio", lambda path, *a, **k: (reads.append(Path(path).name), real(path, *a, **k))[1])
    served: list[str] = []
    real_sample = sd.SpeechDataset.sample
    monkeypatch.setattr(sd.SpeechDataset, "sample", lambda self, i, rng: (lambda s: (served.append(s.path if s else None), s)[1])(real_sample(self, i, rng)))
    recipe = load_recipe("speech-mae", [f"data.root={tmp_path / 'audio'}", f"run.dir={tmp_path / 'run'}", "data.on_error=skip",
                                        "train.steps=8", "train.batch_size=3", "train.warmup_steps=1", "model.width=32", "model.depth=1",
                                        "model.heads=2", "mae.decoder_width=32", "mae.decoder_depth=1", "mae.decoder_heads=2",
                                        "train.log_every=4", "train.monitor_every=100"])
    run = pretrain(recipe, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["inputs"]["files_skipped"] == rep["files_failed"] == len(bad)
    skipped = [line.split("\t")[0] for line in (run / "skipped.txt").read_text().splitlines()]
    assert sorted(Path(p).name for p in skipped) == sorted(bad)
    assert reads.count(late) == 1  # read once (and found bad), never retried in later epochs
    assert None in served and not any(p and Path(p).name in bad for p in served)  # left out, nothing served for it
