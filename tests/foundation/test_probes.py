"""The bag (region) probe: instances carry their sample's label, a sample is predicted by its
instances' mean probability. Its gain on real features is measured in benchmarks/medical_fewlabel.py."""
from __future__ import annotations

import numpy as np

from foundation.probes import bag_probe, linear_probe


def bags_with_findings(n: int, rng: np.random.Generator, classes=(0, 1), dim: int = 8, frac: float = 0.3):
    """Bags of 12-30 instances; in the second class a fraction of them are moved along one direction."""
    bags, y = [], []
    for i in range(n):
        label = classes[i % len(classes)]
        bag = rng.standard_normal((int(rng.integers(12, 31)), dim))
        if label == classes[-1]:
            bag[: max(1, int(frac * len(bag)))] += 3.0 * np.eye(dim)[0]
        bags.append(bag)
        y.append(label)
    return bags, np.array(y)


def test_one_instance_bags_reduce_to_the_linear_probe():
    """Same standardised logistic regression, same C grid and inner folds: identical predictions."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 6))
    y = np.where(X[:, 0] + 0.8 * rng.standard_normal(80) > 0, 7, 3)  # labels need not be 0..n-1
    for seed, n_train in ((0, 12), (1, 30)):
        tr, te = np.arange(n_train), np.arange(n_train, 80)
        bag = bag_probe([X[i : i + 1] for i in tr], y[tr], [X[i : i + 1] for i in te], y[te], seed=seed)
        flat = linear_probe(X[tr], y[tr], X[te], y[te], seed=seed)
        assert (bag["accuracy"], bag["C"]) == (flat["accuracy"], flat["C"])


def test_bag_probe_reads_findings_with_few_labelled_bags():
    rng = np.random.default_rng(1)
    bags, y = bags_with_findings(120, rng, classes=(3, 7))
    accs = [bag_probe([bags[i] for i in range(s * 10, s * 10 + 10)], y[s * 10 : s * 10 + 10], bags[40:], y[40:], seed=s)["accuracy"]
            for s in range(4)]  # 5 labelled bags per class
    assert np.mean(accs) > 0.75, accs


def test_bag_probe_is_at_chance_when_labels_carry_nothing():
    rng = np.random.default_rng(2)
    bags, y = bags_with_findings(120, rng)
    y = rng.permutation(y)  # negative control: the findings no longer follow the label
    accs = [bag_probe([bags[i] for i in range(20)], y[:20], bags[20:], y[20:], seed=s)["accuracy"] for s in range(3)]
    assert abs(np.mean(accs) - 0.5) < 0.15, accs


def test_bag_probe_caps_instances_and_takes_one_label_per_class():
    rng = np.random.default_rng(3)
    bags, y = bags_with_findings(40, rng)
    big = [np.concatenate([b] * 20) for b in bags]  # 240-600 instances per bag, 64 of each used to fit
    one = bag_probe([big[0], big[1]], y[:2], big[2:], y[2:], seed=0, max_instances=64)  # no inner CV possible
    assert one["C"] == 1.0 and one["inner_cv"] == 0.0 and 0.0 <= one["accuracy"] <= 1.0, one
