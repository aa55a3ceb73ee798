"""Dice, IoU and EER against hand-computed values, with controls that break them."""
import numpy as np
import pytest

from foundation.dense_metrics import equal_error_rate, segmentation_metrics
from foundation.evaluate import headline, task_metrics

# truth / prediction of six elements and one ignored one (-1): confusion rows (true) x columns (pred)
#   0: [2, 1, 0]   1: [0, 2, 0]   2: [1, 0, 0]
Y = np.array([0, 0, 0, 1, 1, 2, -1])
P = np.array([0, 0, 1, 1, 1, 0, 2])


def test_dice_and_iou_by_hand():
    m = segmentation_metrics(Y, P, 3)
    # TP = [2, 2, 0], FP = [1, 1, 0], FN = [1, 0, 1]
    assert m["dice"] == pytest.approx({"0": 4 / 6, "1": 4 / 5, "2": 0.0})
    assert m["iou"] == pytest.approx({"0": 2 / 4, "1": 2 / 3, "2": 0.0})
    assert m["mean_dice"] == pytest.approx((4 / 5 + 0) / 2)  # foreground classes only
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["n"] == 6  # the ignored element counts nowhere
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_means():
    m = segmentation_metrics(Y, P, 4)
    assert np.isnan(m["dice"]["3"]) and np.isnan(m["iou"]["3"])
    assert m["mean_dice"] == pytest.approx(0.4) and m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_perfect_and_shuffled_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 5000)
    perfect = segmentation_metrics(y, y, 3)
    assert perfect["mean_dice"] == 1.0 and perfect["miou"] == 1.0
    # negative control: the same labels in another order score at chance
    shuffled = segmentation_metrics(y, rng.permutation(y), 3)
    assert shuffled["mean_dice"] < 0.4 and shuffled["miou"] < 0.25


def test_task_metrics_reads_labels_or_probabilities():
    probs = np.eye(3)[np.where(P < 0, 0, P)]  # one-hot [7, 3]
    a = task_metrics("segmentation", Y, P, ["bg", "a", "b"])
    b = task_metrics("segmentation", Y, probs, ["bg", "a", "b"])
    assert a["mean_dice"] == b["mean_dice"] == pytest.approx(0.4)
    assert set(a["dice"]) == {"bg", "a", "b"}
    assert headline("segmentation") == "mean_dice" and headline("verification") == "eer"


def test_eer_by_hand():
    same = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    # accepting scores >= 0.7 rejects one of three same pairs and accepts one of three different ones
    m = task_metrics("verification", same, scores)
    assert m["eer"] == pytest.approx(1 / 3) and m["threshold"] == pytest.approx(0.7)
    assert m["auroc"] == pytest.approx(8 / 9)
    assert equal_error_rate(same, scores * 0 + np.arange(6)[::-1])["eer"] == 0.0  # perfectly ordered
    # negative control: swapped same/different labels give the complementary, worse error
    assert equal_error_rate(1 - same, scores)["eer"] == pytest.approx(2 / 3)


def test_eer_interpolates_between_roc_points():
    rng = np.random.default_rng(1)
    same = np.r_[np.ones(2000), np.zeros(2000)]
    scores = np.r_[rng.normal(1, 1, 2000), rng.normal(-1, 1, 2000)]
    # two unit Gaussians 2 apart: EER = Phi(-1) = 0.1587
    assert equal_error_rate(same, scores)["eer"] == pytest.approx(0.1587, abs=0.015)
    with pytest.raises(ValueError, match="both"):
        equal_error_rate(np.ones(4), np.arange(4))
