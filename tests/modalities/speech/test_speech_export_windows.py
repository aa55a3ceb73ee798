"""A whole recording by windows: two 10-minute recordings that share only their middle 4 s get different pooled
embeddings, their per-window outputs agree exactly in the shared windows only, and peak memory stays bounded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import foundation
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data

REPO = Path(__file__).resolve().parents[3]
RATE, MINUTES = 8000, 10
GROWTH_MB = 64  # 10 minutes may take at most this much more peak memory than 20 s (the audio alone is 19 MB at 8 kHz)


def recording(clips: list[Path], seed: int, shared: np.ndarray) -> np.ndarray:
    """10 minutes of real speech clips in a seeded order over low noise, with ``shared`` at 298-302 s."""
    rng = np.random.default_rng(seed)
    out = (rng.standard_normal(MINUTES * 60 * RATE) * 0.003).astype(np.float32)
    t = 0
    while t < len(out):
        clip, _ = sf.read(str(clips[rng.integers(len(clips))]), dtype="float32")
        out[t : t + len(clip)] += clip[: len(out) - t]
        t += len(clip) + int(rng.integers(0, RATE // 4))
    out[298 * RATE : 302 * RATE] = shared
    return out


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory):
    clips = sorted(shared_data("fsdd", "recordings").glob("*.wav"))
    tmp = tmp_path_factory.mktemp("long")
    shared = recording(clips, 99, np.zeros(4 * RATE, np.float32))[: 4 * RATE]
    paths = []
    for seed in (1, 2):
        paths.append(tmp / f"rec{seed}.wav")
        sf.write(paths[-1], recording(clips, seed, shared), RATE, subtype="FLOAT")
    adapter = adapter_from_config("speech", {})
    adapter.dataset({"root": str(clips[0])}, train=True)
    torch.manual_seed(0)
    out = Encoder(adapter, width=32, depth=2, heads=2).save_pretrained(tmp / "export", extra={"pooling": "mid_meanstd"})
    return out, paths


@pytest.mark.slow
def test_long_recordings_sharing_only_their_middle_differ_and_agree_only_in_shared_windows(long_pair):
    out, (a, b) = long_pair
    enc = foundation.load_encoder(out)
    ea, eb = enc.embed_recording(a), enc.embed_recording(b)
    assert ea["windows"].shape == (300, 64) and ea["window_seconds"] == 2.0
    assert ea["starts"][149] == 298.0 and ea["ends"][150] == 302.0
    assert np.abs(ea["embedding"] - eb["embedding"]).max() > 1e-3  # the old centre crop made these identical
    same = np.abs(ea["windows"] - eb["windows"]).max(1) < 1e-5
    assert same.nonzero()[0].tolist() == [149, 150]
    # control: the centre-2 s crop (now only when asked, input.max_seconds) cannot tell the two recordings apart
    centre = foundation.load_encoder(out, overrides={"input.max_seconds": 2}).embed([a, b]).embeddings
    assert np.abs(centre[0] - centre[1]).max() < 1e-5
    # embed's default is the whole recording: the same pooled embedding embed_recording gives
    whole = enc.embed([a, b]).embeddings
    assert np.abs(whole[0] - ea["embedding"]).max() < 1e-5 and np.abs(whole[1] - eb["embedding"]).max() < 1e-5


@pytest.mark.slow
def test_peak_memory_of_a_ten_minute_recording_is_bounded(long_pair, tmp_path):
    """Peak resident memory embedding 10 minutes is that of embedding 20 s, within GROWTH_MB (each in a fresh
    process: imports, the encoder and one window batch cost the same in both)."""
    out, (a, _) = long_pair
    wave, rate = sf.read(str(a), dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, wave[: 20 * rate], rate, subtype="FLOAT")
    code = ("import json, resource, sys, foundation; enc = foundation.load_encoder(sys.argv[1]); r = enc.embed_recording(sys.argv[2]);"
            "print(json.dumps({'peak_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'windows': len(r['windows'])}))")

    def peak(path: Path) -> dict:
        res = subprocess.run([sys.executable, "-c", code, str(out), str(path)], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    small, large = peak(short), peak(a)
    assert (small["windows"], large["windows"]) == (10, 300)
    print(f"peak resident memory: 20 s {small['peak_kb'] / 1024:.0f} MB, 10 min {large['peak_kb'] / 1024:.0f} MB")
    assert (large["peak_kb"] - small["peak_kb"]) / 1024 < GROWTH_MB
