"""`domainfm embed` on an aligned run: a speech tower's files and texts land in the shared space exactly as
the alignment evaluation puts them (backbone + projection + L2 norm), so retrieval computed from the CLI's
embeddings reproduces the run's own `align_eval.json`. Negative control: the tower's encoder alone (the
un-projected export, as plain `embed` of `towers/speech/encoder` gives it) is a different space."""
import json

import numpy as np
import pytest
import torch
import yaml

from foundation.align_eval import retrieval
from foundation.align_task import embed_rows, load_towers, paired_dataset
from foundation.cli import main
from foundation.pairs import write_paired_manifest
from foundation.recipes import load_recipe
from modalities.speech.synthetic import WORDS, write_synthetic

WIDTH = 32  # == align.dim, so the un-projected control has the same shape and must differ by value


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("align_embed")
    write_synthetic(root / "wav", 30, seed=3, n_speakers=3)
    rows = [{"speech": str(p), "text": WORDS[int(p.name[0])], "label": int(p.name[0])} for p in sorted((root / "wav").glob("*.wav"))]
    train = write_paired_manifest(root / "train.csv", rows[:20], ["speech", "text", "label"])
    test = write_paired_manifest(root / "test.csv", rows[20:], ["speech", "text", "label"])
    r = {"objective": "align",
         "towers": {"speech": {"kind": "encoder", "modality": "speech", "recipe": "speech-mae", "mode": "train",
                               "model": {"width": WIDTH, "depth": 1, "heads": 2}},
                    "text": {"kind": "text", "init": "tiny", "mode": "train"}},
         "align": {"dim": WIDTH, "positives": "text"},
         "train": {"steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "checkpoint_every": 4, "log_every": 1}}
    (root / "r.yaml").write_text(yaml.safe_dump(r))
    run = root / "run"
    assert main(["align", str(root / "r.yaml"), f"data.manifest={train}", f"align.eval_manifest={test}", f"run.dir={run}", "--quiet"]) == 0
    return root, run, test


def test_embed_speech_and_text_equal_the_alignment_evaluation(aligned, tmp_path):
    root, run, test = aligned
    # files through the speech tower (the paired manifest's `speech` column), texts through the text tower
    assert main(["embed", str(run), str(test), "--tower", "speech", "--out", str(tmp_path / "s.npz"), "--quiet"]) == 0
    texts = [line.split(",")[1] for line in test.read_text().splitlines()[1:]]
    (tmp_path / "texts.txt").write_text("\n".join(texts[1:]) + "\n")
    assert main(["embed", str(run), "--text", texts[0], "--text-file", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "t.npz")]) == 0
    s, t = np.load(tmp_path / "s.npz"), np.load(tmp_path / "t.npz")
    assert s["embeddings"].shape == (10, WIDTH) and str(s["tower"]) == "speech" and list(t["texts"]) == texts
    assert np.allclose(np.linalg.norm(s["embeddings"], axis=1), 1, atol=1e-5)

    # the evaluation's own path: the exported towers on the paired manifest (foundation.align_task.embed_rows)
    towers = load_towers(run)
    rec = load_recipe(str(root / "r.yaml"))
    ds = paired_dataset(rec, test, {"speech": towers["speech"].encoder.adapter}, False, tmp_path / "pairs")
    rows = list(range(len(ds)))
    ref_s, ref_t = embed_rows(towers["speech"], ds, "speech", rows), embed_rows(towers["text"], ds, "text", rows)
    assert list(s["paths"]) == [ds.paths["speech"][r] for r in rows]
    assert np.abs(s["embeddings"] - ref_s).max() < 1e-5 and np.abs(t["embeddings"] - ref_t).max() < 1e-5
    # ... and the run's evaluation (the in-memory model at the end of training) is reproduced from them
    ev = json.loads((run / "align_eval.json").read_text())["speech|text"]
    keys = np.array(texts)
    mine = retrieval(s["embeddings"], t["embeddings"], keys, keys, names=("speech", "text"), ids_a=list(s["paths"]), ids_b=texts)
    assert all(mine[k] == pytest.approx(ev[k], abs=1e-9) for k in ev if "recall" in k or "median" in k), (mine, ev)

    # a folder of clips is read by the tower's adapter as plain `embed` reads it: the same clip, the same vector
    assert main(["embed", str(run / "towers"), str(root / "wav"), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 0
    f = np.load(tmp_path / "f.npz")
    by_path = dict(zip(map(str, f["paths"]), f["embeddings"]))
    assert max(float(np.abs(by_path[p] - e).max()) for p, e in zip(map(str, s["paths"]), s["embeddings"])) < 1e-5

    # negative control: the encoder without its projection (plain embed of the exported encoder) is another space
    assert main(["embed", str(run / "towers" / "speech" / "encoder"), str(root / "wav"), "--pooling", "mean",
                 "--out", str(tmp_path / "raw.npz"), "--quiet"]) == 0
    raw = np.load(tmp_path / "raw.npz")
    raw_by_path = dict(zip(map(str, raw["paths"]), raw["embeddings"]))
    unprojected = np.stack([raw_by_path[p] for p in map(str, s["paths"])])
    unprojected /= np.linalg.norm(unprojected, axis=1, keepdims=True)
    assert unprojected.shape == s["embeddings"].shape and np.abs(unprojected - s["embeddings"]).max() > 0.1


def test_embed_aligned_refuses_what_it_cannot_do(aligned, tmp_path, capsys):
    root, run, test = aligned
    out = ["--out", str(tmp_path / "x.npz")]
    assert main(["embed", str(run), "--tower", "speech", "--text", "one", *out]) == 1
    assert "tower 'speech'" in capsys.readouterr().err
    assert main(["embed", str(run), "--tower", "image", "--text", "one", *out]) == 1
    assert "no tower named 'image'" in capsys.readouterr().err
    assert main(["embed", str(run), *out]) == 1  # neither DATA nor text
    assert "give DATA" in capsys.readouterr().err
    assert main(["embed", str(run / "towers" / "speech" / "encoder"), "--text", "one", *out]) == 1  # a plain export has no text tower
    assert "for aligned exports" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
