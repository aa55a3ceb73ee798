"""The fine-tuning table's benchmark on a tiny setting: every method x k x arm is there, with a paired
interval against each baseline. No winner is asserted (the published tables say who wins where)."""
from __future__ import annotations

import json

import numpy as np

from benchmarks import finetune_table
from foundation.finetune import METHODS
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data


def test_table_has_every_method_k_and_arm_with_paired_intervals(tmp_path, monkeypatch):
    fsdd = shared_data("fsdd", "recordings")  # fails under CI, skips on a clone without the shared data
    monkeypatch.setattr(finetune_table, "CACHE", tmp_path / "cache")  # the setup's manifests, in the test's folder
    # a tiny "pretrained" encoder (its weights are not the random twin's): the grid, not learning, is under test
    adapter = adapter_from_config("speech", {"fit_max_files": 20})
    adapter.dataset({"root": str(fsdd)}, train=False)  # fits the rate, mel bands and their statistics
    enc = Encoder.build(adapter, {"width": 32, "depth": 1, "heads": 2})
    enc.save_pretrained(tmp_path / "encoder")
    out = finetune_table.main(["--modality", "speech", "--pretrained", str(tmp_path / "encoder"), "--per-cell", "2",
                               "--ks", "1", "2", "--seeds", "1", "--steps", "2", "--out", str(tmp_path), "--tag", "tiny"])
    res = json.loads(out.read_text())
    assert {"commit", "machine", "wall_s", "settings", "pretrained"} <= set(res)
    r = res["result"]
    assert r["splits"] == 2 and [row["k"] for row in r["rows"]] == [1, 2]  # two held-out speakers, each k
    for row in r["rows"]:
        for m in METHODS:
            for arm in (m, f"{m}:random_init"):
                assert 0.0 <= row[arm]["accuracy"]["mean"] <= 1.0
            for base in (f"{m}:random_init", "scratch", "classical", "field"):
                d = row["pairs"][f"{m} - {base}"]
                assert {"diff", "ci_low", "ci_high", "beats"} <= set(d)
                assert d["ci_low"] <= d["diff"] <= d["ci_high"]
                # the pairing: the difference is the mean of the per-unit differences of the same splits
                key = r["metric"]
                a = [x[key] for x in r["raw"][m][str(row["k"])]]
                b = [x[key] for x in r["raw"][base][str(row["k"])]]
                assert len(a) == len(b) == 2 and np.isclose(d["diff"], np.mean(np.subtract(a, b)))
        assert "train_accuracy" in row["scratch"] and "train_accuracy" in row["full"]  # an under-trained arm is visible
    md = out.with_suffix(".md").read_text()
    assert all(f"| {m} | {k} |" in md for m in METHODS for k in (1, 2))
