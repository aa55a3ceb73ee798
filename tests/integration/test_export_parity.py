"""Export parity on real shared files, for each of the five adapters: export a (tiny) encoder, then in a FRESH
process onnxruntime, torch.export and transformers' AutoModel must reproduce the PyTorch encoder built from
config.json + model.safetensors, and the stored preprocessing must turn the same files into the golden inputs.
Negative controls: a changed weight, and a changed preprocessing value, each make the same check fail."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundation.export import TOLERANCE, check_samples, export_encoder
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data

REPO = Path(__file__).resolve().parents[2]


def _bump(cfg: dict, key: str, fn) -> None:
    cfg["adapter"][key] = fn(cfg["adapter"][key])


# modality -> (adapter config, shared folder, a preprocessing change that must show in the patches)
CASES = {
    "speech": ({}, ("fsdd", "recordings"), lambda c: _bump(c, "low_freq", lambda v: v + 300.0)),
    "earth": ({"preset": "eurosat_ms", "embed_views": "none"}, ("earth", "eurosat_ms", "Forest"),
              lambda c: _bump(c, "reflectance_scale", lambda v: v * 2)),
    "pointcloud": ({}, ("pointcloud", "modelnet10", "chair"), lambda c: _bump(c, "normalize", lambda v: "centre")),
    "medical": ({"cache": "none", "spacing": [3.0, 3.0, 3.0]}, ("medical", "nifti"),
                lambda c: _bump(c, "mr_percentiles", lambda v: [5.0, 95.0])),
    "graph": ({}, ("graphs", "MUTAG"), lambda c: _bump(c, "feature_mean", lambda v: [m + 0.5 for m in v])),
}


def verify(model_dir: Path, data: Path, runtimes: str = "onnx,pt2,automodel") -> subprocess.CompletedProcess:
    """`python -m foundation.export verify` in a fresh interpreter (nothing of this process carries over)."""
    return subprocess.run([sys.executable, "-m", "foundation.export", "verify", str(model_dir), "--data", str(data), "--runtimes", runtimes],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("modality", list(CASES))
def test_exported_runtimes_match_pytorch_in_a_fresh_process(modality, tmp_path):
    config, folder, change_preprocessing = CASES[modality]
    data = shared_data(*folder)
    if modality == "graph":
        config = {**config, "cache_dir": str(tmp_path / "tu")}
    adapter = adapter_from_config(modality, config)
    train = adapter.dataset({"root": str(data)}, train=True)  # settles what the data decides (speech: n_mels, rate)
    if modality in ("graph", "earth"):
        adapter.fit(train)  # statistics become part of the exported preprocessing
    torch.manual_seed(0)
    encoder = Encoder(adapter, width=32, depth=2, heads=2).eval()
    batch, source = check_samples(encoder, {"root": str(data)})
    assert source == "training data" and batch.size == 3
    out = export_encoder(encoder, tmp_path / "export", batch, {"objective": "mae", "steps": 1}, check_source=source)
    checks = json.loads((out / "config.json").read_text())["export_checks"]
    assert checks["max_diff"]["onnx"] <= TOLERANCE["onnx"] and checks["max_diff"]["pt2"] <= TOLERANCE["pt2"]
    assert f"{checks['max_diff']['onnx']:.2e}" in (out / "README.md").read_text()  # the card states the measured difference

    good = verify(out, data)
    assert good.returncode == 0, good.stderr
    diffs = json.loads(good.stdout.strip().splitlines()[-1])
    assert set(diffs) == {"pytorch_vs_golden", "preprocessing_vs_golden", "onnx", "pt2", "automodel"}
    assert all(diffs[k] <= TOLERANCE[k] for k in ("onnx", "pt2", "automodel")), diffs

    # negative control 1: one changed weight in model.safetensors; every runtime now disagrees with PyTorch
    bad = tmp_path / "changed_weight"
    shutil.copytree(out, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["trunk.norm.bias"] = state["trunk.norm.bias"] + 0.05
    save_file(state, str(bad / "model.safetensors"))
    failed = verify(bad, data, "onnx,pt2")
    assert failed.returncode == 1 and "pytorch_vs_golden differs" in failed.stderr and "onnx differs" in failed.stderr, failed.stderr

    # negative control 2: one changed preprocessing value in config.json; the files no longer give the golden inputs
    bad = tmp_path / "changed_preprocessing"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    change_preprocessing(cfg)
    (bad / "config.json").write_text(json.dumps(cfg))
    failed = verify(bad, data, "")
    assert failed.returncode == 1 and "preprocessing_vs_golden differs" in failed.stderr, failed.stderr


def test_automodel_loading_is_strict(tmp_path):
    """transformers would only warn about a missing or unexpected weight; an export must refuse it."""
    from transformers import AutoConfig, AutoModel

    import foundation  # noqa: F401  (registers the export with AutoConfig/AutoModel)
    from foundation.errors import DomainfmError
    from modalities.grid.adapter import GridAdapter

    torch.manual_seed(0)
    enc = Encoder(GridAdapter({"patch": [4, 4]}), width=16, depth=1, heads=2).eval()
    out = enc.save_pretrained(tmp_path / "m", extra={"pooling": "meanstd"})
    assert type(AutoConfig.from_pretrained(str(out))).__name__ == "DomainfmConfig"
    model = AutoModel.from_pretrained(str(out))
    x = torch.randn(2, 5, 16)
    coords = torch.stack(torch.meshgrid(torch.arange(5.0), torch.zeros(1), indexing="ij"), -1).reshape(1, 5, 2).expand(2, -1, -1)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    from foundation.tokens import PatchBatch

    with torch.no_grad():
        got = model(x, coords, padding)
        ref = enc.pooled(PatchBatch(x, coords, padding, x, padding, {}, []), ("meanstd",))["meanstd"]
    torch.testing.assert_close(got.pooler_output, ref, atol=1e-6, rtol=0)
    state = load_file(str(out / "model.safetensors"))
    save_file({**state, "trunk.extra": torch.zeros(1)}, str(out / "model.safetensors"))
    with pytest.raises(DomainfmError, match="unexpected"):
        AutoModel.from_pretrained(str(out))
    del state["register"]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(DomainfmError, match="missing"):
        AutoModel.from_pretrained(str(out))
