"""Readers: formats, rates, channels, bit depths written by soundfile here; bad files; real FSDD."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from modalities.speech.io import AudioReadError, audio_info, iter_blocks, read_audio

CASES = [  # (extension, format, subtype, tolerance of the round trip)
    ("wav", "WAV", "PCM_U8", 1 / 64),
    ("wav", "WAV", "PCM_16", 1e-4),
    ("wav", "WAV", "PCM_24", 1e-6),
    ("wav", "WAV", "PCM_32", 1e-6),
    ("wav", "WAV", "FLOAT", 1e-7),
    ("flac", "FLAC", "PCM_16", 1e-4),
    ("flac", "FLAC", "PCM_24", 1e-6),
]


def tone(rate: int, seconds: float, channels: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    cols = [0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]
    return np.stack(cols, 1).astype(np.float32)


@pytest.mark.parametrize("ext,fmt,subtype,tol", CASES)
@pytest.mark.parametrize("rate,channels", [(8000, 1), (22050, 2), (48000, 6)])
def test_round_trip_formats_rates_channels(tmp_path, ext, fmt, subtype, tol, rate, channels):
    x = tone(rate, 0.3, channels)
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    y, r = read_audio(path)
    assert r == rate and y.dtype == np.float32 and y.ndim == 1 and len(y) == len(x)
    np.testing.assert_allclose(y, x.mean(1), atol=tol * 2)


def test_ogg_vorbis_is_read(tmp_path):
    x = tone(16000, 0.5, 2)
    sf.write(tmp_path / "a.ogg", x, 16000, format="OGG", subtype="VORBIS")
    y, r = read_audio(tmp_path / "a.ogg")
    assert r == 16000 and abs(len(y) - len(x)) < 0.05 * len(x)
    # lossy, but the tone survives: correlation with the mixed-down reference
    n = min(len(y), len(x))
    assert np.corrcoef(y[:n], x[:n].mean(1))[0, 1] > 0.9


def test_segment_read(tmp_path):
    x = np.arange(16000, dtype=np.float32) / 16000 - 0.5
    sf.write(tmp_path / "r.wav", x, 8000, subtype="FLOAT")
    y, _ = read_audio(tmp_path / "r.wav", start=0.5, end=1.0)
    np.testing.assert_array_equal(y, x[4000:8000])
    with pytest.raises(AudioReadError, match="r.wav.*past the end"):
        read_audio(tmp_path / "r.wav", start=3.0)


def _bad_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(8000, 0.5, 1), 8000, subtype="PCM_16")
    raw = good.read_bytes()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "header_only.wav").write_bytes(raw[:30])
    (tmp_path / "cut.wav").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    sf.write(tmp_path / "noframes.wav", np.zeros((0,), np.float32), 8000)
    sf.write(tmp_path / "f.flac", tone(8000, 1.0, 1), 8000, format="FLAC")
    flac = (tmp_path / "f.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (tmp_path / "f.flac").unlink()
    return ["empty.wav", "header_only.wav", "cut.wav", "notes.wav", "noframes.wav", "cut.flac"]


def test_bad_files_name_the_file(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(AudioReadError, match=name.replace(".", r"\.")):
            read_audio(tmp_path / name)
    assert read_audio(tmp_path / "good.wav")[0].shape == (4000,)


def test_truncated_wav_is_detected_from_its_header(tmp_path):
    _bad_files(tmp_path)
    with pytest.raises(AudioReadError, match="truncated"):
        audio_info(tmp_path / "cut.wav")


def test_blocks_cover_the_file(tmp_path):
    x = tone(8000, 2.5, 2)
    sf.write(tmp_path / "long.flac", x, 8000, format="FLAC", subtype="PCM_24")
    rate, blocks = iter_blocks(tmp_path / "long.flac", 1.0)
    parts = list(blocks)
    assert rate == 8000 and [len(p) for p in parts] == [8000, 8000, 4000]
    np.testing.assert_allclose(np.concatenate(parts), x.mean(1), atol=1e-6)


def test_real_fsdd_recordings_read(fsdd):
    files = sorted(fsdd.glob("*.wav"))
    assert len(files) == 2000
    for f in files[::50]:
        y, r = read_audio(f)
        assert r == 8000 and 0.1 < len(y) / r < 2.5 and np.isfinite(y).all() and np.abs(y).max() > 0.01
