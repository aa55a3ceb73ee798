"""Pooling few-shot episodes across ModelNet10 results files: every draw counts once, and only one protocol.

Pure bookkeeping over results records (no training).
"""
from __future__ import annotations

import pytest

from benchmarks.pointcloud_episodes_pooled import pool_episodes
from foundation.probes import paired_difference


def results(seed: int, pre: list[float], scratch: list[float], protocol: str = "abc", svm_oa: float = 0.9,
            flags: tuple[str, ...] = ()) -> dict:
    eps = {m: {"5w20s": {"accs": [a - d for a in pre]}} for m, d in (("random_init", 0.03), ("classical", 0.05))}
    return {"protocol": protocol, "svm_all_labels": {"pretrained": {"oa": svm_oa}},
            "episodes": {"pretrained": {"5w20s": {"accs": pre}}, "scratch_supervised": {"5w20s": {"accs": scratch}}, **eps},
            "meta": {"argv": ["--steps", "8000", "--episode-seed", str(seed), *flags]}}


def test_pooled_difference_is_over_every_episode_of_every_file():
    a = results(0, [0.9, 0.8, 0.95], [0.9, 0.82, 0.9])
    b = results(1, [0.92, 0.88], [0.9, 0.85])
    pooled = pool_episodes({"a.json": a, "b.json": b}, "5w20s")
    assert pooled["episodes"] == 5 and pooled["per_file"] == {"a.json": 3, "b.json": 2}
    assert pooled["comparison"]["scratch_supervised"] == paired_difference([0.9, 0.8, 0.95, 0.92, 0.88], [0.9, 0.82, 0.9, 0.9, 0.85])
    assert set(pooled["comparison"]) == {"random_init", "classical", "scratch_supervised"}


@pytest.mark.parametrize("change, message", [
    (dict(seed=0), "same seed"),  # the same episodes counted twice
    (dict(protocol="other"), "protocol fingerprint"),
    (dict(svm_oa=0.8), "another pretrained encoder"),
])
def test_files_of_another_protocol_or_a_repeated_draw_are_refused(change, message):
    a = results(0, [0.9, 0.8], [0.85, 0.8])
    b = results(**{"seed": 1, "pre": [0.9, 0.8], "scratch": [0.85, 0.8], **change})
    with pytest.raises(SystemExit, match=message):
        pool_episodes({"a.json": a, "b.json": b}, "5w20s")


@pytest.mark.parametrize("flags, message", [(("--sup-steps", "300"), "sup_steps"), (("--sup-precision", "bf16"), "sup_precision")])
def test_other_from_scratch_settings_are_refused(flags, message):
    a = results(0, [0.9, 0.8], [0.85, 0.8])
    b = results(1, [0.9, 0.8], [0.85, 0.8], flags=flags)
    with pytest.raises(SystemExit, match=message):
        pool_episodes({"a.json": a, "b.json": b}, "5w20s")
