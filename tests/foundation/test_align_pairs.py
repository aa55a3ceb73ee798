"""Paired manifests, folder pairing rules and the pair schedule all ranks share."""
import json

import numpy as np
import pytest
import torch

from foundation.errors import DataError
from foundation.pairs import PairedDataset, PairScheduleSampler, pair_by_stem, pair_s1_s2, read_paired_manifest, write_paired_manifest
from modalities.grid.adapter import GridAdapter
from tests.shared_data import shared_data


def _images(tmp_path, n):
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.npy"
        np.save(p, np.random.default_rng(i).normal(size=(1, 8, 8)).astype(np.float32))
        paths.append(p.name)
    return paths


def test_rows_contribute_the_pairs_they_have_and_single_columns_count_as_unpaired(tmp_path):
    imgs = _images(tmp_path, 6)
    rows = [{"image": imgs[0], "text": "a", "depth": imgs[1]}, {"image": imgs[2], "text": "b"}, {"image": imgs[3]},
            {"text": "c"}, {"image": imgs[4], "depth": imgs[5]}]
    m = write_paired_manifest(tmp_path / "pairs.csv", rows, ["image", "text", "depth"])
    specs = {"image": {"kind": "encoder", "adapter": GridAdapter({"patch": [4, 4]})}, "text": {"kind": "text"},
             "depth": {"kind": "encoder", "adapter": GridAdapter({"patch": [4, 4]})}}
    ds = PairedDataset(m, specs, work_dir=tmp_path / "w")
    assert ds.summary()["pairs"] == {"image|text": 2, "image|depth": 2, "text|depth": 1}
    assert ds.unpaired == 2
    item = ds[("image|text", 1, 5)]
    assert item[0] == ("image", "text") and item[2] == "b" and item[4] == "b"
    assert item[3].endswith("img2.npy")  # a file's id is its path: the frozen-feature cache key


def test_missing_file_names_the_manifest_row(tmp_path):
    imgs = _images(tmp_path, 1)
    m = write_paired_manifest(tmp_path / "pairs.csv", [{"image": imgs[0], "text": "a"}, {"image": "gone.npy", "text": "b"}], ["image", "text"])
    with pytest.raises(DataError) as err:
        PairedDataset(m, {"image": {"kind": "encoder", "adapter": GridAdapter()}, "text": {"kind": "text"}}, work_dir=tmp_path / "w")
    assert "row 3" in str(err.value) and "gone.npy" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_file_names_the_manifest_row(tmp_path):
    imgs = _images(tmp_path, 1)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    m = write_paired_manifest(tmp_path / "pairs.jsonl", [], ["image", "text"])
    m.write_text("\n".join(json.dumps(r) for r in [{"image": imgs[0], "text": "a"}, {"image": "bad.npy", "text": "b"}]))
    ds = PairedDataset(m, {"image": {"kind": "encoder", "adapter": GridAdapter()}, "text": {"kind": "text"}}, work_dir=tmp_path / "w")
    with pytest.raises(DataError) as err:
        ds[("image|text", 1, None)]
    assert "row 3" in str(err.value) and "bad.npy" in str(err.value)


def test_schedule_is_shared_by_ranks_one_pair_type_per_step_and_drops_partial_batches():
    rows_of = {"a|t": list(range(0, 50)), "b|t": list(range(50, 80))}
    per_rank = [list(PairScheduleSampler(rows_of, 4, world=2, rank=r, seed=3)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 50 // 8 + 30 // 8
    for b0, b1 in zip(*per_rank):
        assert len({t for t, _, _ in b0 + b1}) == 1  # both ranks, the same pair type at the same step
        assert len(b0) == len(b1) == 4 and not {r for _, r, _ in b0} & {r for _, r, _ in b1}
    assert PairScheduleSampler(rows_of, 4, world=2, seed=3).dropped_per_epoch == 50 % 8 + 30 % 8
    s = PairScheduleSampler(rows_of, 4, world=2, rank=1, seed=3)
    s.set_position(0, 3)
    assert list(s) == per_rank[1][3:]  # resume from (epoch, batch)


def test_pair_by_stem_and_bigearthnet_s1_s2(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "txt").mkdir()
    for stem in ("a", "b"):
        (tmp_path / "audio" / f"{stem}.wav").write_bytes(b"")
    (tmp_path / "txt" / "a.txt").write_text("hello there\n")
    rows = pair_by_stem(tmp_path / "audio", tmp_path / "txt", (".wav",), (".txt",), "speech", "text", b_is_text=True)
    assert rows[0]["text"] == "hello there" and rows[1]["text"] is None
    root = shared_data("earth", "bigearthnet_s1_s2")
    pairs = pair_s1_s2(root / "s1-tiny", root / "s2-tiny")
    both = [r for r in pairs if r["s1"] and r["s2"]]
    assert len(both) == 3 and len(pairs) == 6  # 6 S1 patches, 3 of them with their S2 patch
    assert all(r["s2"].split("/")[-1] == json.loads(next(__import__("pathlib").Path(r["s1"]).glob("*_labels_metadata.json")).read_text())["corresponding_s2_patch"] for r in both)


def test_manifest_without_tower_columns_is_one_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nx.wav,1\n")
    with pytest.raises(DataError) as err:
        read_paired_manifest(m, ["speech", "text"])
    assert "speech" in str(err.value) and "columns" in str(err.value)
