"""`domainfm probe` prints only statistics that exist. Each refusal or note has a control that passes the
same path with the problem removed, so the check is shown to bite where it should and only there."""
from __future__ import annotations

import numpy as np
import pytest

from foundation.evaluate import compare_features, format_report
from foundation.probes import MIN_TEST_SAMPLES, ProbeError, few_shot_indices, few_shot_splits, paired_difference


def features(labels: np.ndarray, signal: float, seed: int = 0) -> dict:
    """``embed_dataset``-like output: ``meanstd`` carries the label with strength ``signal``; no signal = noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(labels), 4))
    x[:, 0] += signal * labels
    return {"meanstd": x.astype(np.float32), "labels": labels}


def report(labels: np.ndarray, ks: list[int], test_fraction: float = 0.3, seeds: int = 3, names=None) -> dict:
    feats = {"pretrained": features(labels, 6.0), "random_init": features(labels, 0.0, seed=1)}
    return compare_features(feats, names, ks, seeds, test_fraction, ("meanstd",))


def two_classes(n_per_class: int) -> np.ndarray:
    return np.repeat([0, 1], n_per_class)


def test_k_above_a_class_pool_is_refused_naming_the_class():
    labels = np.array([0] * 30 + [1] * 10)  # class 'rare': 7 in the labelled pool after a 30% test split
    with pytest.raises(ProbeError, match=r"probe.k=10 is more than the 7 labelled training samples of class 'rare'.*up to 7"):
        report(labels, [1, 10], names=["common", "rare"])
    rows = report(labels, [1, 5], names=["common", "rare"])["rows"]  # control: k within every pool
    assert [r["k"] for r in rows] == [1, 5]


def test_seeds_that_would_draw_the_same_samples_are_refused_or_redrawn():
    labels = two_classes(10)  # 7 per class in the pool
    with pytest.raises(ProbeError, match="allow only 1 distinct draw"):
        report(labels, [7])  # k = the whole pool: every seed picks everything, five "paired seeds" would be one split
    pool_labels = np.repeat([0, 1], 2)  # two per class: k=1 allows 4 distinct draws
    with pytest.raises(ProbeError, match="allow only 4 distinct draw"):
        few_shot_splits(pool_labels, [1], 5)
    plain = [tuple(few_shot_indices(pool_labels, 1, s)) for s in range(4)]
    assert len(set(plain)) < 4  # the plain per-seed draws repeat here...
    drawn = [tuple(p) for p in few_shot_splits(pool_labels, [1], 4)[1]]
    assert len(set(drawn)) == 4 and drawn[0] == plain[0]  # ...so a repeating seed draws again: four separate splits
    rep = report(two_classes(40), [3])  # control: k below the pool, 24 test samples: distinct draws and a real interval
    assert np.isfinite(rep["rows"][0]["ci_low"])


def test_a_test_set_too_small_for_an_interval_gets_the_point_estimate_and_why():
    labels = two_classes(20)
    tiny = report(labels, [3], test_fraction=2 / 40)  # 2 test samples
    row = tiny["rows"][0]
    assert tiny["n_test"] == 2 and not row["beats"] and "2 test samples are too few" in row["note"]
    text = format_report(tiny)
    assert "beats" not in text and "no interval: 2 test samples are too few" in text and f"{row['diff']:+.3f}" in text
    big = report(labels, [3], test_fraction=0.5)  # control: the same signal on 20 test samples does beat
    assert big["n_test"] >= MIN_TEST_SAMPLES and big["rows"][0]["beats"] and "beats" in format_report(big), big["rows"]


def test_one_class_names_the_labels_found():
    labels = np.zeros(30, dtype=int)
    with pytest.raises(ProbeError, match="at least two classes; data.labels found only 'speech' in 30 samples"):
        report(labels, [1], names=["speech"])
    with pytest.raises(ProbeError, match="class 'b' has 1 sample\\(s\\), fewer than the 2 needed"):
        report(np.array([0] * 29 + [1]), [1], names=["a", "b"])
    assert report(two_classes(15), [1], names=["a", "b"])["classes"] == 2  # control: two classes probe


def test_zero_variance_over_distinct_splits_is_not_a_beat():
    same = paired_difference([0.9] * 5, [0.6] * 5)  # +0.3 on every seed: a t-interval would be [+0.3, +0.3]
    assert not same["beats"] and "zero variance" in same["note"] and same["diff"] == pytest.approx(0.3)
    # equal up to float rounding (accuracies summed in different orders) is still one difference, not [d, d]
    a = [np.mean([0.1, 0.2, 0.3]), np.mean([0.3, 0.2, 0.1]), 0.2, 0.2, 0.2]
    assert np.ptp(np.subtract(a, 0.35)) > 0  # the old exact check would have printed a zero-width interval
    rounded = paired_difference(a, [0.35] * 5)
    assert not rounded["beats"] and "zero variance" in rounded["note"]
    varied = paired_difference([0.9, 0.85, 0.95, 0.9, 0.88], [0.6] * 5)  # control: spread over seeds, a real interval
    assert varied["beats"] and "note" not in varied and 0 < varied["ci_low"] < 0.3 < varied["ci_high"]
