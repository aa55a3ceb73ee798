"""The ModelNet10 benchmark's ``--reuse-scratch``: extending a run must not mix in results of another protocol.

Pure bookkeeping over results records (no training): which jobs a previous results file answers,
which are retrained to check reproducibility, and that a mismatch stops the run.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.pointcloud_modelnet10 import (build_parser, check_reusable, check_settings, confirm_reproduced, main, parse,
                                              protocol_fingerprint,
                                              recorded_scratch, reuse_scratch)

IDX = np.arange(3)


def previous_run(episodes_accs: list[float], with_runs: bool) -> dict:
    rec = {"mean": float(np.mean(episodes_accs)), "accs": episodes_accs, "train_acc": 0.9, "episodes": len(episodes_accs)}
    if with_runs:
        rec["runs"] = [{"oa": a, "train_acc": 1.0, "final_loss": 0.1} for a in episodes_accs]
    return {"n_shapes": 10, "n_pool": 6, "n_test": 4, "svm_all_labels": {},
            "few_label": {"pretrained": [{"oa": 0.8}, {"oa": 0.7}],
                          "scratch_supervised": [{"oa": 0.6, "final_loss": 0.2}, {"oa": 0.5, "final_loss": 0.3}]},
            "episodes": {"pretrained": {"5w10s": {"accs": [0.9, 0.8, 0.7]}}, "scratch_supervised": {"5w10s": rec}},
            "meta": {"argv": ["--steps", "8000"]}}


def jobs(seeds_few: int, episodes: int) -> list[tuple]:
    return ([("few", "", IDX, IDX, IDX, s) for s in range(seeds_few)]
            + [("episode", "5w10s", IDX, IDX, IDX, e) for e in range(episodes)])


@pytest.mark.parametrize("with_runs", [False, True])
def test_recorded_scratch_reads_every_kind_and_older_files(with_runs):
    prev = previous_run([0.85, 0.75], with_runs)
    assert recorded_scratch(prev, "few", "", 1) == {"oa": 0.5, "final_loss": 0.3}
    assert recorded_scratch(prev, "few", "", 2) is None
    assert recorded_scratch(prev, "episode", "5w10s", 1)["oa"] == 0.75
    # an older file keeps only the setting's mean training accuracy: each reused episode carries it
    assert recorded_scratch(prev, "episode", "5w10s", 0)["train_acc"] == (1.0 if with_runs else 0.9)
    assert recorded_scratch(prev, "episode", "5w10s", 2) is None
    assert recorded_scratch(prev, "episode", "10w10s", 0) is None
    assert recorded_scratch(prev, "all", "", 0) is None
    # fine-tuned runs of the pretrained encoder are looked up in their own rows, never the from-scratch ones
    assert recorded_scratch(prev, "ft-few", "", 0) is None and recorded_scratch(prev, "ft-episode", "5w10s", 0) is None
    prev["few_label"]["finetuned"] = [{"oa": 0.9}]
    assert recorded_scratch(prev, "ft-few", "", 0) == {"oa": 0.9}


def test_reuse_trains_only_new_jobs_plus_one_check_per_kind():
    prev = previous_run([0.85, 0.75], with_runs=True)
    js = jobs(seeds_few=3, episodes=4)  # few seeds 0-1 and episodes 0-1 recorded; few 2 and episodes 2-3 new
    reused, train = reuse_scratch(js, [prev], check=1)
    assert sorted(reused) == [0, 1, 3, 4]
    assert train == [0, 2, 3, 5, 6]  # the first reused job of each kind (0, 3) is retrained
    assert all(r["reused"] for r in reused.values())
    _, train0 = reuse_scratch(js, [prev], check=0)
    assert train0 == [2, 5, 6]
    # a second file answers what the first lacks; the first file wins where both have a job
    more = previous_run([0.1, 0.2, 0.3], with_runs=True)
    more["few_label"]["scratch_supervised"].append({"oa": 0.4, "final_loss": 0.4})
    reused2, train2 = reuse_scratch(js, [prev, more], check=0)
    assert train2 == [6] and reused2[2]["oa"] == 0.4 and reused2[5]["oa"] == 0.3 and reused2[3]["oa"] == 0.85


def test_confirm_reproduced_requires_identical_results():
    prev = previous_run([0.85, 0.75], with_runs=True)
    js = jobs(seeds_few=2, episodes=2)
    reused, _ = reuse_scratch(js, [prev], check=1)
    same = {0: {"oa": 0.6, "final_loss": 0.2}, 2: {"oa": 0.85, "final_loss": 0.1}}
    assert confirm_reproduced(js, reused, same) == 2
    with pytest.raises(SystemExit, match="not reproducible"):
        confirm_reproduced(js, reused, {0: {"oa": 0.6, "final_loss": 0.2000001}})


def test_check_settings_refuses_other_training_settings():
    ap = build_parser()
    prev = previous_run([0.85], with_runs=True)
    check_settings(prev, "prev.json", parse(ap, ["--steps", "8000"]), ap)  # same protocol: accepted
    with pytest.raises(SystemExit, match="sup_steps"):
        check_settings(prev, "prev.json", parse(ap, ["--sup-steps", "300"]), ap)
    # the all-labels model's steps matter only where that file trained it
    check_settings(prev, "prev.json", parse(ap, ["--sup-steps-all", "500"]), ap)
    prev["svm_all_labels"]["scratch_supervised"] = {"seeds": [{"oa": 0.9}]}
    with pytest.raises(SystemExit, match="sup_steps_all"):
        check_settings(prev, "prev.json", parse(ap, ["--sup-steps-all", "500"]), ap)
    # fine-tuning's learning rate and steps matter only where that file fine-tuned
    check_settings(prev, "prev.json", parse(ap, ["--steps", "8000", "--ft-steps", "300"]), ap)
    prev["episodes"]["finetuned"] = {"5w10s": {"accs": [0.9]}}
    with pytest.raises(SystemExit, match="ft_steps"):
        check_settings(prev, "prev.json", parse(ap, ["--steps", "8000", "--ft-steps", "300"]), ap)


def test_a_wrong_flag_stops_the_run_before_any_work(tmp_path):
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps(previous_run([0.85], with_runs=True)))
    with pytest.raises(SystemExit, match="sup_steps"):
        main(["--reuse-scratch", str(prev), "--sup-steps", "300", "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    assert not (tmp_path / "work").exists()


def test_check_reusable_refuses_another_encoder():
    prev = previous_run([0.85], with_runs=True)
    now = {k: prev[k] for k in ("n_shapes", "n_pool", "n_test", "few_label", "episodes")}
    check_reusable(prev, "prev.json", now)  # the same pretrained results: accepted
    other = {**now, "few_label": {"pretrained": [{"oa": 0.8}, {"oa": 0.71}]}}
    with pytest.raises(SystemExit, match="pretrained results differ"):
        check_reusable(prev, "prev.json", other)
    other = {**now, "episodes": {"pretrained": {"5w10s": {"accs": [0.9, 0.8, 0.6]}}}}
    with pytest.raises(SystemExit, match="pretrained results differ"):
        check_reusable(prev, "prev.json", other)


def test_a_protocol_fingerprint_lets_another_encoder_reuse_the_same_split():
    files = [f"/data/modelnet10/{c}/{c}_{i}.pcd" for c in ("chair", "desk") for i in range(3)]
    labels, pool, test = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 3, 4]), np.array([2, 5])
    cfg = {"modality": "pointcloud", "adapter": {"points": 1024}, "encoder": {"width": 128}, "objective": "jepa", "steps": 8000}
    fp = protocol_fingerprint(files, labels, pool, test, cfg)
    # the pretraining (objective, steps) and where the data sits do not enter; shapes, split and architecture do
    assert protocol_fingerprint([f.replace("/data", "/elsewhere") for f in files], labels, pool, test,
                                {**cfg, "objective": "mae", "steps": 20000}) == fp
    assert protocol_fingerprint(files, labels, np.array([0, 1, 2, 4]), np.array([3, 5]), cfg) != fp
    assert protocol_fingerprint(files, labels, pool, test, {**cfg, "encoder": {"width": 256}}) != fp
    assert protocol_fingerprint(files, labels, pool, test, {**cfg, "adapter": {"points": 2048}}) != fp
    assert protocol_fingerprint(files[::-1], labels, pool, test, cfg) != fp

    prev = {**previous_run([0.85], with_runs=True), "protocol": fp}
    other_encoder = {k: prev[k] for k in ("n_shapes", "n_pool", "n_test", "episodes")}
    other_encoder["few_label"] = {"pretrained": [{"oa": 0.9}, {"oa": 0.95}]}  # a better encoder, the same protocol
    check_reusable(prev, "prev.json", {**other_encoder, "protocol": fp})
    with pytest.raises(SystemExit, match="another protocol"):
        check_reusable(prev, "prev.json", {**other_encoder, "protocol": "0" * 16})
    # fine-tuned results depend on the pretrained weights: a file with them also needs this run's encoder
    prev["episodes"]["finetuned"] = {"5w10s": {"accs": [0.9]}}
    with pytest.raises(SystemExit, match="pretrained results differ"):
        check_reusable(prev, "prev.json", {**other_encoder, "protocol": fp})
    del prev["episodes"]["finetuned"]
    # a file without a fingerprint falls back to the pretrained results, which a new encoder changes
    del prev["protocol"]
    with pytest.raises(SystemExit, match="pretrained results differ"):
        check_reusable(prev, "prev.json", {**other_encoder, "protocol": fp})
