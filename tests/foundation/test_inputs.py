"""The one bad-input policy: one line under raise; under skip each file counted once, across processes."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from foundation.errors import DataError, DomainfmError
from foundation.inputs import BadFile, InputPolicy, data_summary, finish_inputs, precheck
from foundation.tokens import SampleTokens, collate


def _boom(path):
    raise OSError(f"{path}: unexpected end of data")


def test_raise_gives_one_line_naming_the_file_and_the_way_out(tmp_path):
    pol = InputPolicy("raise")
    with pytest.raises(DataError) as info:
        pol.load(tmp_path / "x.bin", _boom, tmp_path / "x.bin", check=False)
    line = str(info.value)
    assert "\n" not in line and line.startswith(str(tmp_path / "x.bin")) and "data.on_error=skip" in line
    assert isinstance(info.value, ValueError)  # callers that caught the readers' ValueError still do
    with pytest.raises(DomainfmError, match="data.on_error must be"):
        InputPolicy("ignore")


def test_precheck_size_and_magic(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"not audio at all")
    (tmp_path / "c.wav").write_bytes(b"RIFF....WAVE")
    with pytest.raises(BadFile, match="empty file"):
        precheck(tmp_path / "a.wav")
    with pytest.raises(BadFile, match=r"not a \.wav file"):
        precheck(tmp_path / "b.wav")
    precheck(tmp_path / "c.wav")  # the magic matches; the reader decides the rest


def _record(ledger: str, path: str) -> None:
    InputPolicy("skip", ledger).fail(path, "corrupt")


def test_skip_counts_each_file_once_across_processes(tmp_path):
    ledger = tmp_path / "ledger.tsv"
    pol = InputPolicy("skip", ledger)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_record, args=(str(ledger), "/d/bad.wav")) for _ in range(3)]
    procs.append(ctx.Process(target=_record, args=(str(ledger), "/d/other.wav")))
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert pol.is_bad("/d/bad.wav") and pol.is_bad("/d/other.wav") and not pol.is_bad("/d/good.wav")
    assert len(pol.skipped) == 2
    calls = []
    assert pol.load("/d/bad.wav", lambda: calls.append(1), check=False) is None and calls == []  # known bad: never reread
    pol.found = 10
    counts = finish_inputs(type("D", (), {"inputs": pol})(), tmp_path)["inputs"]
    assert counts["files_skipped"] == 2 and counts["files_found"] == 10
    assert (tmp_path / "skipped.txt").read_text().count("\n") == 2


def test_collate_leaves_skipped_samples_out():
    s = SampleTokens(patches=torch.ones(3, 2), coords=torch.zeros(3, 1), targets=torch.ones(3, 2),
                     target_valid=torch.ones(3, 2, dtype=torch.bool), padding=torch.zeros(3, dtype=torch.bool), id="a", path="a")
    batch = collate([s, None, s])
    assert batch.patches.shape[0] == 2 and batch.ids == ["a", "a"]
    with pytest.raises(ValueError, match="every sample of this batch failed"):
        collate([None, None])


def test_data_summary_names_skips_drops_and_notes(tmp_path):
    pol = InputPolicy("skip", tmp_path / "l.tsv")
    pol.found = 31
    pol.fail("/d/x.tif", "truncated GeoTIFF")
    pol.dropped["chip(s) mostly cloud"] = 2
    pol.note("bands inferred from the file's descriptions")

    class DS:
        inputs, classes = pol, ["a", "b"]

        def __len__(self):
            return 28

        def label(self, i):
            return i % 2

    adapter = type("A", (), {"name": "earth", "config": {"bands": ["B02", "B03"]}})()
    text = data_summary(adapter, DS())
    assert "28 sample(s) from 31 file(s)" in text and "/d/x.tif: truncated GeoTIFF" in text
    assert "dropped 2 chip(s) mostly cloud" in text and "a: 14, b: 14" in text and "bands=['B02', 'B03']" in text
    assert "note: bands inferred" in text and len(text.splitlines()) < 25
