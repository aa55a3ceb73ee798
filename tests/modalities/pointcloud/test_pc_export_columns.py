"""A KITTI .bin scan with an exported point-cloud encoder: the reader's advice (declare the columns) is one that
`embed` accepts, as input.columns or adapter.columns, and it never changes the model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import foundation
from foundation.errors import DomainfmError
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data


def test_a_bin_scan_is_described_with_input_columns(tmp_path):
    scan = shared_data("pointcloud", "scans", "kitti_000008.bin")
    torch.manual_seed(0)
    adapter = adapter_from_config("pointcloud", {"points": 256, "groups": 16, "group_size": 16})
    out = Encoder(adapter, width=16, depth=1, heads=2).save_pretrained(tmp_path / "export", extra={"pooling": "meanstd"})
    with pytest.raises(Exception, match=r"kitti_000008.bin: a headerless .bin needs declared columns \(adapter.columns"):
        foundation.load_encoder(out).embed([scan])
    by_input = foundation.load_encoder(out, overrides={"input.columns": ["x", "y", "z", "intensity"]}).embed([scan])
    by_adapter_key = foundation.load_encoder(out, overrides={"adapter.columns": "kitti"}).embed([scan])
    np.testing.assert_allclose(by_input.embeddings, by_adapter_key.embeddings, atol=1e-6)
    assert by_input.embeddings.shape == (1, 32) and np.isfinite(by_input.embeddings).all()
    with pytest.raises(DomainfmError, match="would change the model"):
        foundation.load_encoder(out, overrides={"adapter.groups": 8})


def test_embed_command_accepts_the_input_description(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    scan = shared_data("pointcloud", "scans", "kitti_000008.bin")
    torch.manual_seed(0)
    adapter = adapter_from_config("pointcloud", {"points": 256, "groups": 16, "group_size": 16})
    out = Encoder(adapter, width=16, depth=1, heads=2).save_pretrained(tmp_path / "export", extra={"pooling": "meanstd"})
    repo = Path(__file__).resolve().parents[3]

    def embed(*extra):
        return subprocess.run([sys.executable, "-m", "foundation.cli", "embed", str(out), str(scan), "--out", str(tmp_path / "e.npz"),
                               "--quiet", *extra], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)

    refused = embed()
    assert refused.returncode == 1 and "adapter.columns" in refused.stderr and "Traceback" not in refused.stderr
    done = embed("input.columns=[x,y,z,intensity]")
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (1, 32)
