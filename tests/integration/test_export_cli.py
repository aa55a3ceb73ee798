"""Export, then embed in a fresh process: the exported encoder must embed raw files exactly as the
training side does, and its stored preprocessing must be what it uses (negative control)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from foundation.embed import embed_dataset
from foundation.engine import pretrain
from foundation.export import encoder_from_run
from foundation.recipes import load_recipe
from modalities.grid.synthetic import write_texture_dataset

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "foundation.cli", *args], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=600)
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    write_texture_dataset(tmp / "data", 24, seed=3, size=16)
    recipe = load_recipe("grid-mae", [f"data.root={tmp / 'data'}", f"run.dir={tmp / 'run'}", "model.width=32", "model.depth=2",
                                      "model.heads=2", "train.batch_size=8", "train.steps=4", "train.warmup_steps=1"])
    pretrain(recipe, progress=False)
    return tmp


def test_export_then_fresh_process_embed_matches_training_side(trained_run):
    tmp = trained_run
    out = cli("export", str(tmp / "run"), str(tmp / "exported"))
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp / "exported").iterdir()} == {"config.json", "model.safetensors", "README.md", "model.onnx", "model.pt2", "golden"}
    out = cli("embed", str(tmp / "exported"), str(tmp / "data"), "--out", str(tmp / "emb.npz"), "--quiet")
    assert out.returncode == 0, out.stderr
    fresh = np.load(tmp / "emb.npz")
    encoder = encoder_from_run(tmp / "run")
    here = embed_dataset(encoder, encoder.adapter.dataset({"root": str(tmp / "data")}, train=False))
    assert fresh["embeddings"].dtype == np.float32 and fresh["embeddings"].shape == (24, 32)
    assert list(fresh["ids"]) == list(here["ids"]) and list(fresh["paths"]) == sorted(fresh["paths"])
    np.testing.assert_allclose(fresh["embeddings"], here["mean"], atol=1e-5)

    # negative control: the exported preprocessing is really used
    cfg = json.loads((tmp / "exported" / "config.json").read_text())
    cfg["adapter"]["mean"] = [m + 0.5 for m in cfg["adapter"]["mean"]]
    (tmp / "exported" / "config.json").write_text(json.dumps(cfg))
    assert cli("embed", str(tmp / "exported"), str(tmp / "data"), "--out", str(tmp / "emb2.npz"), "--quiet").returncode == 0
    assert np.abs(np.load(tmp / "emb2.npz")["embeddings"] - fresh["embeddings"]).max() > 1e-3


def test_probe_command_reports_pretrained_vs_random(trained_run):
    tmp = trained_run
    cli("export", str(tmp / "run"), str(tmp / "exported2"))
    out = cli("probe", str(tmp / "exported2"), str(tmp / "data"), "data.labels=folder", "probe.k=[2]", "probe.seeds=2")
    assert out.returncode == 0, out.stderr
    assert "pretrained" in out.stdout and "random init" in out.stdout and "paired diff" in out.stdout


def test_cli_errors_are_clear(tmp_path):
    out = cli("pretrain", "grid-mae", "train.stepz=3")
    assert out.returncode == 1 and "unknown recipe key 'train.stepz'" in out.stderr
    out = cli("pretrain", "grid-mae", "--print-config", "train.steps=12")
    assert out.returncode == 0 and "steps: 12" in out.stdout
    assert cli("--help").returncode == 0 and "pretrain" in cli("--help").stdout


def test_non_editable_install_ships_named_recipes(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                            "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    assert (target / "recipes" / "grid-mae.yaml").exists()
    run = subprocess.run([sys.executable, "-c", "import foundation, sys; from foundation.cli import main; print(foundation.__file__); "
                          "sys.exit(main(['pretrain', 'grid-jepa', '--print-config']))"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(target)) and "objective: jepa" in run.stdout
