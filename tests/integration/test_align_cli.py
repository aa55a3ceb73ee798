"""`domainfm align` end to end through the engine: a paired manifest of images and class texts, a trained
encoder tower and a tiny local BERT; zero-shot and retrieval well above chance on held-out rows; the
exported towers reload and embed the same; a frozen tower's features are cached across runs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from foundation.align_task import load_towers
from foundation.cli import main
from foundation.pairs import write_paired_manifest

CLASSES = ["top left", "top right", "bottom left", "bottom right"]


def write_data(root: Path, n: int, seed: int) -> list[dict]:
    """16x16 images whose class is the quadrant holding a bright blob (plus noise); text = the class name."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = i % 4
        img = rng.normal(0, 1, (1, 16, 16)).astype(np.float32)
        y, x = (c // 2) * 8 + rng.integers(1, 5), (c % 2) * 8 + rng.integers(1, 5)
        img[0, y:y + 3, x:x + 3] += 3.0
        p = root / f"{seed}_{i}.npy"
        np.save(p, img)
        rows.append({"image": p.name, "text": CLASSES[c], "label": c})
    return rows


def recipe(tmp_path: Path, mode: str) -> Path:
    r = {"objective": "align",
         "towers": {"image": {"kind": "encoder", "modality": "grid", "mode": mode, "adapter": {"patch": [4, 4], "flip": False},
                              "model": {"width": 32, "depth": 1, "heads": 2}},
                    "text": {"kind": "text", "init": "tiny", "mode": "train"}},
         "align": {"dim": 32, "positives": "text"},
         "zero_shot": {"prompt": "{}", "classes": dict(enumerate(CLASSES)), "tower": "image"},
         "train": {"steps": 150, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 40, "log_every": 10}}
    p = tmp_path / f"align-{mode}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_cli")
    train = write_paired_manifest(root / "train.csv", write_data(root, 160, 0), ["image", "text", "label"])
    test = write_paired_manifest(root / "test.csv", write_data(root, 40, 1), ["image", "text", "label"])
    return root, train, test


@pytest.fixture(scope="module")
def aligned_run(data, tmp_path_factory):
    torch.set_num_threads(1)
    root, train, test = data
    tmp = tmp_path_factory.mktemp("aligned")
    run = tmp / "run"
    assert main(["align", str(recipe(tmp, "train")), f"data.manifest={train}", f"align.eval_manifest={test}",
                 f"run.dir={run}", "--quiet"]) == 0
    return run


def test_align_cli_learns_exports_and_reloads(tmp_path, data, aligned_run):
    root, train, test = data
    run = aligned_run
    ev = json.loads((run / "align_eval.json").read_text())
    assert ev["zero_shot"]["accuracy"] > 0.6 and ev["zero_shot"]["chance"] == 0.25, ev["zero_shot"]
    r = ev["image|text"]
    assert r["image->text recall@1"] > r["image->text chance@1"] + 0.3, r
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 150 and summary["final_loss"] < summary["first_loss"]
    towers = load_towers(run)
    from foundation.align_task import embed_rows, paired_dataset
    from foundation.recipes import load_recipe

    rec = load_recipe(str(recipe(tmp_path, "train")), [f"data.manifest={train}"])
    ds = paired_dataset(rec, test, {"image": towers["image"].encoder.adapter}, False, tmp_path / "p")
    z = embed_rows(towers["image"], ds, "image", list(range(len(ds))))
    zt = towers["text"](CLASSES).detach().numpy()
    acc = float(((z @ zt.T).argmax(1) == np.array([int(x["label"]) for x in ds.rows])).mean())
    assert acc == pytest.approx(ev["zero_shot"]["accuracy"], abs=1e-6)  # the export embeds as the run did
    # every exported file is readable by teammates under the usual umask 022 (safetensors alone writes 0600)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (run / "towers").rglob("*") if p.is_file()}
    assert "head.safetensors" in modes and all(m & 0o044 == 0o044 for m in modes.values()), modes


def test_frozen_tower_features_are_cached_across_runs(tmp_path, data):
    torch.set_num_threads(1)
    root, train, test = data
    cache = tmp_path / "cache"
    common = [f"data.manifest={train}", f"align.cache_dir={cache}", "train.steps=4", "--quiet"]
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'a'}", *common]) == 0
    files = list(cache.glob("image-*.safetensors"))
    assert len(files) == 1 and not list(cache.glob("text-*"))  # only frozen towers are cached
    from safetensors.torch import load_file

    cached = load_file(str(files[0]))
    assert len(cached) >= 4 * 16 - 16 and all(k.endswith(".npy") for k in cached)
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'b'}", *common]) == 0
    assert list(cache.glob("image-*.safetensors")) == files  # same weights + preprocessing: the same cache file
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'c'}", "towers.image.head=mlp", "towers.image.lr=1e-4", *common]) == 0
    assert list(cache.glob("image-*.safetensors")) == files  # another head or learning rate: the backbone's features are the same
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'd'}", "towers.image.pooling=meanstd", *common]) == 0
    assert len(list(cache.glob("image-*.safetensors"))) == 2  # another pooling: other features, another file


def test_evaluate_zero_shot_and_retrieval_on_an_aligned_run(tmp_path, data, aligned_run):
    root, train, test = data
    run = aligned_run
    assert main(["evaluate", str(run), str(test), "--task", "zero-shot", "--out", str(tmp_path / "zs.json")]) == 0
    zs = json.loads((tmp_path / "zs.json").read_text())
    assert zs["accuracy"] == pytest.approx(json.loads((run / "align_eval.json").read_text())["zero_shot"]["accuracy"])
    assert zs["accuracy"] > 0.6 and zs["chance"] == 0.25
    assert main(["evaluate", str(run), str(test), "--task", "retrieval", "--out", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["image|text"]
    assert r["image->text recall@1"] > r["image->text chance@1"] + 0.3


def test_frozen_tower_is_encoded_once_and_trains_as_if_encoded_per_step(tmp_path, data, monkeypatch):
    """A frozen tower's features of every row are computed before step 1, so steps read no file for it; the
    run equals one that encodes each batch as it comes (the features are the same deterministic views)."""
    import foundation.align_task as align_task
    from foundation import checkpoint
    from foundation.pairs import PairedDataset
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    root, train, test = data
    reads = []
    original_read = PairedDataset.read

    def counting(self, tower, row, seed):
        reads.append((tower, self.train))
        return original_read(self, tower, row, seed)

    monkeypatch.setattr(PairedDataset, "read", counting)
    common = [f"data.manifest={train}", "train.steps=6", "train.checkpoint_every=6", "--quiet"]
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'pre'}", *common]) == 0
    assert reads.count(("image", True)) == 160  # each row once, before training; none in 6 steps x 16 rows
    monkeypatch.setattr(align_task, "precompute_frozen", lambda towers, data: None)  # encode batch by batch instead
    reads.clear()
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'per_step'}", *common]) == 0
    assert reads.count(("image", True)) == 6 * 16
    a, b = (load_file(str(checkpoint.latest(tmp_path / r) / "model.safetensors")) for r in ("pre", "per_step"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_standardized_head_uses_the_training_features_statistics_and_travels_with_the_export(tmp_path, data, capsys):
    """head=standardized: a frozen tower's features standardised per feature (as the probe baseline does), with the
    training rows' statistics, saved in head.safetensors and reloaded; a trained tower refuses it."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    root, train, test = data
    cache = tmp_path / "cache"
    common = [f"data.manifest={train}", "train.steps=4", f"align.cache_dir={cache}", "--quiet"]
    assert main(["align", str(recipe(tmp_path, "frozen")), f"run.dir={tmp_path / 'run'}", "towers.image.head=standardized", *common]) == 0
    feats = torch.stack(list(load_file(str(next(cache.glob("image-*.safetensors")))).values()))
    tower = load_towers(tmp_path / "run")["image"]
    assert tower.head_kind == "standardized" and len(feats) == 160
    assert torch.allclose(tower.head[0].mean, feats.mean(0), atol=1e-5) and torch.allclose(tower.head[0].std, feats.std(0), atol=1e-5)
    assert float(tower.head[0].std.sub(1).abs().max()) > 1e-2  # not the identity it starts as
    assert main(["align", str(recipe(tmp_path, "train")), f"run.dir={tmp_path / 'bad'}", "towers.image.head=standardized", *common]) == 1
    assert "needs mode=frozen" in capsys.readouterr().err
