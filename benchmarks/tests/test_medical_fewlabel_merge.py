"""benchmarks/medical_fewlabel.py's bookkeeping: segmentation runs split over seeds merge into one paired
result, and runs that cannot be merged are refused. Pure bookkeeping over results records (no training)."""
from __future__ import annotations

import json

import pytest


def test_segmentation_runs_split_over_seeds_merge_into_one_paired_result(tmp_path):
    """``--seg-first-seed`` runs side by side, then ``--merge``: the intervals are over all seeds, and
    runs that overlap in seeds or differ in settings are refused."""
    from benchmarks.medical_fewlabel import merge_segmentation, segmentation_summary

    def run(seeds, pre, scr, res, name, steps=200):
        dice = {"pretrained": pre, "scratch": scr, "restored": res}
        structures = {a: [[0.9, 0.3, 0.9]] * len(seeds) for a in dice}
        seg = segmentation_summary(dice, structures, seeds, 5, 8, steps, {"restoration_steps": 10, "restoration_seconds": 1.0,
                                                                          "restoration_loss": [1.0, 0.1]})
        path = tmp_path / name
        path.write_text(json.dumps({"git_commit": "abc", "args": {}, "seeds": [], "classification": [], "segmentation": seg,
                                    "wall_time_s": 60.0}))
        return str(path)

    a = run([0, 1], [0.70, 0.72], [0.69, 0.70], [0.72, 0.73], "a.json")
    b = run([2, 3], [0.71, 0.69], [0.70, 0.68], [0.73, 0.71], "b.json")
    seg = merge_segmentation([a, b])["segmentation"]
    assert seg["seed_list"] == [0, 1, 2, 3] and seg["raw"]["restored"] == [0.72, 0.73, 0.73, 0.71]
    assert seg["restored"]["vs_scratch"]["beats"] and abs(seg["restored"]["vs_scratch"]["diff"] - 0.03) < 1e-9
    assert not segmentation_summary({"pretrained": [0.7, 0.72], "scratch": [0.69, 0.70]}, {"pretrained": [[1]], "scratch": [[1]]},
                                    [0, 1], 5, 8, 200)["beats"]  # 2 seeds: the interval is too wide to exclude 0
    with pytest.raises(ValueError, match="overlap"):
        merge_segmentation([a, a])
    with pytest.raises(ValueError, match="settings"):
        merge_segmentation([a, run([4], [0.7], [0.7], [0.7], "c.json", steps=300)])
