"""`embed` (and `load_encoder().embed`) embeds a speech recording longer than the export's window whole, by
windows, instead of its centre crop: the trial's 10-minute recording embedded from its middle 2 s.

Two 6 s recordings that share only their middle 2 s differ under the default; asking for the crop
(`input.max_seconds=2`) is the negative control: it makes them identical again, so the test sees the crop when
it happens."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

import foundation
from foundation.model import Encoder
from modalities.base import adapter_from_config

RATE = 8000


def test_long_recordings_are_embedded_whole_unless_a_crop_is_asked(tmp_path):
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(2 * RATE).astype(np.float32) * 0.1
    root = tmp_path / "audio"
    root.mkdir()
    for name, seed in (("a.wav", 1), ("b.wav", 2)):
        wave = np.random.default_rng(seed).standard_normal(6 * RATE).astype(np.float32) * 0.1
        wave[2 * RATE : 4 * RATE] = shared  # only the centre 2 s (the export's max_seconds) is common
        sf.write(root / name, wave, RATE)
    adapter = adapter_from_config("speech", {})
    adapter.dataset({"root": str(root)}, train=True)
    assert adapter.config["max_seconds"] == 2.0
    torch.manual_seed(0)
    export = Encoder(adapter, width=32, depth=1, heads=2).save_pretrained(tmp_path / "export", extra={"pooling": "mid_meanstd"})

    whole = foundation.load_encoder(export).embed(sorted(root.glob("*.wav")))
    assert whole.embeddings.shape == (2, 64)
    assert np.abs(whole.embeddings[0] - whole.embeddings[1]).max() > 1e-3  # different recordings, different embeddings

    cropped = foundation.load_encoder(export, overrides={"input.max_seconds": 2}).embed(sorted(root.glob("*.wav")))
    assert np.abs(cropped.embeddings[0] - cropped.embeddings[1]).max() < 1e-5  # the crop sees only the shared middle
    # the whole-recording embedding is the windows' pooled one, not the crop's
    assert np.abs(whole.embeddings[0] - cropped.embeddings[0]).max() > 1e-3
