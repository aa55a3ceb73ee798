"""A small speech-like dataset: formant-synthesised three-vowel "words" spoken by synthetic speakers.

Words are orderings of shared vowel sets ("a-i-u" vs "u-i-a"), so the clip's average spectrum, its
loudness and its length say little about the word: telling words apart needs the order of the
formant trajectories, which is what a speech encoder should learn. Speakers differ the way people do
(pitch, vocal-tract length scaling every formant, glottal spectral tilt, breathiness), and every take
varies speed, pitch contour, loudness and leading/trailing silence. Files are named
``{word}_{speaker}_{take}.wav`` like FSDD, so the same label rules apply.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

VOWELS = {  # F1, F2, F3 (Hz) of an adult male voice (Peterson & Barney style averages)
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
WORDS = ["aiu", "uia", "aui", "iau", "eoa", "aoe", "oea", "ieo", "oei", "eio"]
SPEAKERS = ["anna", "bert", "carl", "dina", "emil", "fay", "gus", "hana", "ivan", "june", "karl", "lena"]
BANDWIDTHS = (80.0, 110.0, 160.0)


def _speaker(rng: np.random.Generator) -> dict:
    return {
        "f0": rng.uniform(85, 240),
        "vtl": rng.uniform(0.85, 1.2),  # formant scale: shorter vocal tract, higher formants
        "tilt": rng.uniform(0.85, 0.97),  # one-pole low-pass of the glottal source
        "breath": rng.uniform(0.01, 0.08),
    }


def _resonate(x: np.ndarray, freqs: np.ndarray, bw: float, sr: int, block: int) -> np.ndarray:
    """A 2-pole resonator whose centre follows ``freqs`` (one value per block), state carried across blocks."""
    out = np.empty_like(x)
    zi = np.zeros(2)
    r = np.exp(-np.pi * bw / sr)
    for j, f in enumerate(freqs):
        a = [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r]
        seg = slice(j * block, (j + 1) * block)
        out[seg], zi = lfilter([1 - r], a, x[seg], zi=zi)
    return out


def synthesize(word: str, spk: dict, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """One take of ``word`` by speaker ``spk`` as float32 samples."""
    block = sr // 100  # formants move every 10 ms
    speed = rng.uniform(0.8, 1.25)
    durs = [rng.uniform(0.12, 0.2) * speed for _ in word]
    n_blocks = [max(4, int(d * 100)) for d in durs]
    targets = np.array([VOWELS[v] for v in word], dtype=float) * spk["vtl"] * rng.uniform(0.97, 1.03, size=(len(word), 3))
    # per-block formant tracks: hold each vowel, glide linearly into the next over its first 40%
    tracks = []
    for k, nb in enumerate(n_blocks):
        prev = targets[k - 1] if k else targets[k]
        glide = np.clip(np.arange(nb) / max(1, int(0.4 * nb)), 0, 1)[:, None]
        tracks.append(prev + (targets[k] - prev) * glide)
    track = np.concatenate(tracks)  # [blocks, 3]
    n = len(track) * block
    t = np.arange(n) / sr
    f0 = spk["f0"] * rng.uniform(0.9, 1.1) * (1 + rng.uniform(-0.15, 0.15) * t / t[-1]) * (1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    source = lfilter([1.0], [1.0, -spk["tilt"]], pulses) + spk["breath"] * rng.standard_normal(n)
    y = source
    for k in range(3):
        y = _resonate(y, track[:, k], BANDWIDTHS[k] * spk["vtl"], sr, block)
    ramp = min(n // 4, int(0.02 * sr))
    env = np.ones(n)
    env[:ramp], env[-ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    y = y * env
    y = y / (np.abs(y).max() + 1e-9) * rng.uniform(0.1, 0.8)
    lead, tail = (int(rng.uniform(0.03, 0.2) * sr) for _ in range(2))
    floor = rng.uniform(1e-4, 3e-3)
    y = np.concatenate([np.zeros(lead), y, np.zeros(tail)])
    y = y + floor * rng.standard_normal(len(y))
    return np.clip(y, -1, 1).astype(np.float32)


def write_synthetic(out_dir: str | Path, n: int, seed: int = 0, sample_rate: int = 16000, n_speakers: int = 6) -> dict:
    """Write ``n`` WAV files (words cycle, speakers cycle) and return the ``data`` keys that read them.

    Labels: word by default (``pattern:^(\\d)_``); the speaker is ``pattern:^\\d_([a-z]+)_``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speakers = [(SPEAKERS[s % len(SPEAKERS)] + ("" if s < len(SPEAKERS) else chr(97 + s // len(SPEAKERS))), _speaker(rng)) for s in range(n_speakers)]
    for i in range(n):
        w = i % len(WORDS)
        name, spk = speakers[(i // len(WORDS)) % n_speakers]
        take = i // (len(WORDS) * n_speakers)
        sf.write(out / f"{w}_{name}_{take}.wav", synthesize(WORDS[w], spk, rng, sample_rate), sample_rate, subtype="PCM_16")
    return {"root": str(out), "labels": "pattern:^(\\d)_"}
