"""Log-mel settings, normalisation fitted on training data, crops, tokens, and the skip policy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from foundation.errors import DomainfmError
import soundfile as sf
import torch

from foundation.grid import unpatchify
from foundation.tokens import collate
from modalities.base import adapter_from_config
from modalities.speech import features
from modalities.speech.io import AudioReadError


def write(path, x, rate, subtype="PCM_16"):
    sf.write(path, np.asarray(x, np.float32), rate, subtype=subtype)
    return path


def test_8khz_gets_no_empty_mel_bands_and_explicit_bad_settings_are_refused():
    n, high = features.resolve_mel(8000, None, 20.0, None, 25.0)
    assert high == 4000 and n <= 40
    assert int(features.band_bins(n, 8000, 25.0, 20.0, high).min()) >= features.MIN_BINS_PER_BAND
    with pytest.raises(ValueError, match="empty mel band"):
        features.resolve_mel(16000, 128, 20.0, None, 25.0)  # 128 bands on a 512-point FFT: some are empty
    with pytest.raises(ValueError, match="Nyquist"):
        features.resolve_mel(8000, 40, 20.0, 6000.0, 25.0)


def test_8khz_data_resampled_to_16khz_caps_the_mel_range(tmp_path):
    write(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 8000), 8000)
    a = adapter_from_config("speech", {"sample_rate": 16000})
    a.dataset({"root": str(tmp_path)}, train=False)
    assert a.config["high_freq"] == 4000.0
    ds = a.dataset({"root": str(tmp_path)}, train=False)
    capped = ds.spectrogram(ds.waveform(0)).mean(0)
    assert capped.shape[0] == a.config["n_mels"]
    # white noise recorded at 8 kHz: with the cap the top band still carries it; without the cap
    # the top bands sit above the recording's bandwidth and hold only resampling leakage
    full = adapter_from_config("speech", {"sample_rate": 16000, "high_freq": 8000.0})
    ds_full = full.dataset({"root": str(tmp_path)}, train=False)
    uncapped = ds_full.spectrogram(ds_full.waveform(0)).mean(0)
    assert capped[-1] > capped.median() - 3
    assert uncapped[-1] < uncapped.median() - 5


def test_sine_lands_in_its_mel_band_after_resampling(tmp_path):
    t = np.arange(8000) / 8000
    write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 8000)
    a = adapter_from_config("speech", {"sample_rate": 16000, "n_mels": 40, "high_freq": 8000.0})
    ds = a.dataset({"root": str(tmp_path)}, train=False)
    spec = ds.spectrogram(ds.waveform(0))
    # centre frequencies of Kaldi's mel bands
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    centres = [700 * (math.exp((lo + (i + 1) * (hi - lo) / 41) / 1127) - 1) for i in range(40)]
    peak = int(spec.mean(0).argmax())
    assert abs(centres[peak] - 1000) < 120, (peak, centres[peak])


def test_fit_stores_statistics_that_normalise_training_data(synthetic_dir):
    a = adapter_from_config("speech", {})
    ds = a.dataset({"root": str(synthetic_dir)}, train=True)
    assert a.config["sample_rate"] == 8000 and a.config["mel_mean"] is None
    a.fit(ds)
    assert len(a.config["mel_mean"]) == a.config["n_mels"] == len(a.config["mel_std"])
    spec = torch.cat([ds.spectrogram(ds.waveform(i)) for i in range(len(ds))])
    assert spec.mean(0).abs().max() < 1e-3 and (spec.std(0) - 1).abs().max() < 1e-2
    # the config round-trips into a fresh adapter (what an exported encoder stores)
    b = adapter_from_config("speech", a.preprocessing())
    ds2 = b.dataset({"root": str(synthetic_dir)}, train=False)
    torch.testing.assert_close(ds2[3].patches, ds[3].patches)


def test_short_clip_gives_tokens_and_long_clip_is_cropped(tmp_path):
    rng = np.random.default_rng(0)
    write(tmp_path / "short.wav", rng.normal(0, 0.1, 1120), 8000)  # 0.14 s
    write(tmp_path / "tiny.wav", rng.normal(0, 0.1, 40), 8000)  # 5 ms, shorter than one window
    write(tmp_path / "long.wav", rng.normal(0, 0.1, 8000 * 5), 8000)
    a = adapter_from_config("speech", {"max_seconds": 2.0})
    ds = a.dataset({"root": str(tmp_path)}, train=True)
    a.fit(ds)
    names = [s.path.rsplit("/", 1)[-1] for s in ds.segments]
    long, short, tiny = (ds[names.index(n)] for n in ("long.wav", "short.wav", "tiny.wav"))
    pt, pf = a.config["patch"]
    bands = math.ceil(a.config["n_mels"] / pf)
    assert short.patches.shape[0] == math.ceil(14 / pt) * bands  # not stretched, not dropped
    assert tiny.patches.shape[0] >= 1 and (~tiny.padding).any()
    assert long.patches.shape[0] == math.ceil(200 / pt) * bands  # 2 s of 10 ms frames
    crops = {tuple(ds[(names.index("long.wav"), s)].patches[0, :4].tolist()) for s in range(4)}
    assert len(crops) > 1  # training views draw different crops
    batch = collate([long, short])
    assert batch.padding[1].sum() == long.patches.shape[0] - short.patches.shape[0]


def test_default_tokens_are_full_band_frames(synthetic_dir):
    """The default patch spans every mel band: one token per 4 frames, bands resolved from the data."""
    a = adapter_from_config("speech", {})
    ds = a.dataset({"root": str(synthetic_dir)}, train=False)
    a.fit(ds)
    assert a.config["patch"] == [4, a.config["n_mels"]] and a.patch_dim == 4 * a.config["n_mels"]
    spec = ds.spectrogram(ds.crop(ds.waveform(0), None))
    s = ds[0]
    assert s.patches.shape == (math.ceil(spec.shape[0] / 4), a.patch_dim)
    assert (s.coords[:, 1] == 0).all() and (s.coords[:, 0] == torch.arange(s.patches.shape[0])).all()


def test_tokens_round_trip_to_the_spectrogram_and_carry_time_freq_coords(synthetic_dir):
    a = adapter_from_config("speech", {"patch": [4, 8]})
    ds = a.dataset({"root": str(synthetic_dir)}, train=False)
    a.fit(ds)
    spec = ds.spectrogram(ds.crop(ds.waveform(0), None))
    s = ds[0]
    pt, pf = a.config["patch"]
    grid = (math.ceil(spec.shape[0] / pt), math.ceil(spec.shape[1] / pf))
    back = unpatchify(s.patches, grid, (pt, pf), 1)[0, : spec.shape[0], : spec.shape[1]]
    torch.testing.assert_close(back, spec)
    assert s.coords[:, 0].max() == grid[0] - 1 and s.coords[:, 1].max() == grid[1] - 1
    assert s.coords[1, 0] == 0 and s.coords[1, 1] == 1  # time-major, then frequency
    # MAE targets: per-patch standardised over valid values
    full = s.target_valid.all(1)
    assert torch.allclose(s.targets[full].mean(1), torch.zeros(int(full.sum())), atol=1e-4)


def test_silence_gives_finite_values(tmp_path):
    write(tmp_path / "silence.wav", np.zeros(4000), 8000)
    write(tmp_path / "quiet.wav", np.random.default_rng(0).normal(0, 1e-4, 4000), 8000)
    a = adapter_from_config("speech", {})
    ds = a.dataset({"root": str(tmp_path)}, train=True)
    a.fit(ds)
    for i in range(2):
        for s in (ds[i], ds[(i, 7)]):
            assert all(torch.isfinite(t).all() for t in (s.patches, s.targets))


def test_bad_files_raise_by_default_and_are_counted_under_skip(tmp_path, caplog):
    write(tmp_path / "ok1.wav", np.random.default_rng(0).normal(0, 0.1, 4000), 8000)
    write(tmp_path / "ok2.wav", np.random.default_rng(1).normal(0, 0.1, 4000), 8000)
    (tmp_path / "broken.wav").write_text("not audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    a = adapter_from_config("speech", {})
    with pytest.raises(DomainfmError, match="broken.wav|empty.flac"):
        a.dataset({"root": str(tmp_path)}, train=True)
    with caplog.at_level("WARNING"):
        ds = a.dataset({"root": str(tmp_path), "on_error": "skip"}, train=True)
    assert len(ds) == 2 and len(ds.skipped) == 2 and "broken.wav" in caplog.text and "empty.flac" in caplog.text


def test_manifest_with_segments_and_labels(tmp_path):
    write(tmp_path / "rec.wav", np.random.default_rng(0).normal(0, 0.1, 8000 * 3), 8000)
    (tmp_path / "m.csv").write_text("path,start,end,word\nrec.wav,0,1,yes\nrec.wav,1.5,2.0,no\nrec.wav,2.0,,yes\n")
    a = adapter_from_config("speech", {})
    ds = a.dataset({"manifest": str(tmp_path / "m.csv"), "labels": "column:word"}, train=False)
    assert ds.classes == ["no", "yes"] and [ds.label(i) for i in range(3)] == [1, 0, 1]
    lens = [ds[i].patches.shape[0] for i in range(3)]
    bands = math.ceil(a.config["n_mels"] / a.config["patch"][1])
    assert lens == [25 * bands, 13 * bands, 25 * bands] and ds[1].id.endswith("@1.5-2")


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="n_mel"):
        adapter_from_config("speech", {"n_mel": 40})


def test_decoded_recordings_are_cached_per_worker_within_the_byte_budget(tmp_path):
    """A recording read once is not decoded again (the file can even be gone); the cache holds at
    most ``cache_mb`` and evicts the least recently read; ``cache_mb=0`` reads the file every time."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write(tmp_path / f"r{i}.wav", rng.normal(0, 0.1, 8000 * 40), 8000)  # 40 s: 1.28 MB as float32 at 8 kHz
    kept = adapter_from_config("speech", {"sample_rate": 8000, "cache_mb": 3}).dataset({"root": str(tmp_path)}, train=True)
    uncached = adapter_from_config("speech", {"sample_rate": 8000, "cache_mb": 0}).dataset({"root": str(tmp_path)}, train=True)
    first = [kept.waveform(i).clone() for i in range(3)]  # 3.8 MB read into a 3 MB budget: r0 evicted
    assert [uncached.waveform(i) for i in range(3)] and not uncached._cache
    for i in range(3):
        (tmp_path / f"r{i}.wav").unlink()
    assert all(torch.equal(kept.waveform(i), first[i]) for i in (1, 2))  # from memory
    with pytest.raises(AudioReadError):
        kept.waveform(0)  # evicted: the file is read again, and it is gone
    with pytest.raises(AudioReadError):  # negative control: without the cache every read opens the file
        uncached.waveform(1)
