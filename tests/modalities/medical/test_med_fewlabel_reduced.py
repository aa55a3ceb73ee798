"""CI-sized version of benchmarks/medical_fewlabel.py: the medical-mae recipe at a quarter of its steps (1,800 of 7,200, on
200 unlabelled synthetic volumes), then 10 labelled volumes per class, ten paired seeds, 48 held-out
volumes per seed.

Asserted: the pretrained encoder's linear probe beats its randomly initialised twin (paired 95%
interval above zero), whole-study features and region features (``bag_probe``) alike, each against
the twin read the same way, while the intensity statistics stay near chance (the class is the
lesions' spread, not their brightness). Not asserted here: beating the same architecture trained from scratch, whose
200-step runs on 10 seeds would double this test's time; the benchmark measures it (see
modalities/medical/README.md). The
full grid (k = 2, 5, 10, from scratch, the ceiling check and segmentation) is the benchmark itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_pretrained_probe_beats_random_init_with_ten_labels_per_class(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "medical_fewlabel.py"), "--labelled-n", "120", "--steps", "1800", "--ks", "10", "--seeds", "10",
           "--scratch-steps", "0", "--ceiling-steps", "0", "--skip-seg", "--threads", str(min(2, os.cpu_count() or 1)),
           "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--tag", "ci"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads((tmp_path / "medical_fewlabel-ci.json").read_text())["classification"][0]
    assert row["k"] == 10
    assert row["vs_random_init"]["beats"], row
    assert row["regions_vs_random_init_regions"]["beats"], row
    assert abs(row["intensity_stats"] - 0.5) < 0.15, row
