"""Embedding with an export: deterministic whatever the batch, the export's pooling by default, the weights'
sha256 in every embedding file, and input descriptions that never change the model."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import foundation
from foundation.errors import DomainfmError
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speech_export(tmp_path_factory):
    """A tiny speech encoder exported with its preprocessing; whole clips of different lengths (ragged batches)."""
    files = sorted(shared_data("fsdd", "recordings").glob("*_jackson_*.wav"))[:8]
    tmp = tmp_path_factory.mktemp("speech")
    adapter = adapter_from_config("speech", {"max_seconds": None})
    adapter.dataset({"root": str(files[0])}, train=True)  # settles sample rate and mel bands from the data
    torch.manual_seed(0)
    out = Encoder(adapter, width=32, depth=2, heads=2).save_pretrained(tmp / "export", extra={"pooling": "mid_meanstd"})
    return out, files


def test_a_file_alone_and_in_a_batch_gives_the_same_embedding(speech_export):
    out, files = speech_export
    enc = foundation.load_encoder(out)
    assert enc.pooling == "mid_meanstd"  # the export's recorded pooling, not mean
    batch = enc.embed(files, batch_size=8)
    lengths = {enc.dataset({"root": str(f)})[0].patches.shape[0] for f in files}
    assert len(lengths) > 1  # clips of different lengths: the batch really pads
    for i in (0, 5):
        alone = enc.embed([files[i]], batch_size=1)
        assert alone.ids == [batch.ids[i]]
        np.testing.assert_allclose(alone.embeddings[0], batch.embeddings[i], atol=1e-5, rtol=0)
    # negative control: the check sees padding leaking into a sample (padding ignored -> embeddings move)
    from foundation.tokens import collate

    short = min(range(8), key=lambda j: enc.dataset({"root": str(files[j])})[0].patches.shape[0])
    b = collate([enc.dataset({"root": str(f)})[0] for f in files])
    leaky = enc.encoder.pooled(type(b)(b.patches, b.coords, torch.zeros_like(b.padding), b.patches, b.padding, b.meta, b.ids), ("mid_meanstd",))
    assert np.abs(leaky["mid_meanstd"][short].numpy() - batch.embeddings[short]).max() > 1e-3


def test_embedding_files_record_weights_sha256_and_pooling(speech_export, tmp_path):
    out, files = speech_export
    sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert foundation.load_encoder(out).embed(files[:2]).weights_sha256 == sha
    res = subprocess.run([sys.executable, "-m", "foundation.cli", "embed", str(out), str(files[0]), "--out", str(tmp_path / "e.npz"), "--quiet"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert res.returncode == 0, res.stderr
    npz = np.load(tmp_path / "e.npz")
    assert str(npz["weights_sha256"]) == sha and str(npz["pooling"]) == "mid_meanstd" and npz["embeddings"].shape == (1, 64)


def test_input_descriptions_never_change_the_model(speech_export):
    out, files = speech_export
    cropped = foundation.load_encoder(out, overrides={"input.max_seconds": 0.3})
    assert cropped.encoder.adapter.config["max_seconds"] == 0.3
    whole = foundation.load_encoder(out)
    assert all(torch.equal(a, b) for a, b in zip(cropped.encoder.state_dict().values(), whole.encoder.state_dict().values()))
    with pytest.raises(DomainfmError, match=r"adapter.n_mels.*would change the model.*accepted: input.max_seconds"):
        foundation.load_encoder(out, overrides={"adapter.n_mels": 20})
    with pytest.raises(DomainfmError, match="input.max_seconds='abc': must be a number of seconds"):
        foundation.load_encoder(out, overrides={"input.max_seconds": "abc"})
