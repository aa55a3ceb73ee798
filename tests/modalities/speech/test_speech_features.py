"""Our log-mel is Kaldi's fbank (torchaudio.compliance.kaldi) to float precision, for every clip shape."""
from __future__ import annotations

import pytest
import torch
from torchaudio.compliance import kaldi

from modalities.speech.features import LOG_FLOOR, log_mel


def kaldi_log_mel(wave: torch.Tensor, rate: int, n_mels: int, low: float, high: float, **overrides) -> torch.Tensor:
    feats = kaldi.fbank(wave.unsqueeze(0) * 32768.0, sample_frequency=float(rate), num_mel_bins=n_mels, low_freq=low,
                        high_freq=high, frame_length=25.0, frame_shift=10.0, dither=0.0, snip_edges=False,
                        use_log_fbank=False, **overrides)
    return torch.log(feats.clamp(min=LOG_FLOOR))


@pytest.mark.parametrize("rate,n_mels,high,samples", [(16000, 80, 0.0, 16000), (8000, 40, 0.0, 12345),
                                                      (16000, 64, 7000.0, 2240), (22050, 80, -200.0, 801)])
def test_log_mel_equals_kaldi_fbank(rate, n_mels, high, samples):
    g = torch.Generator().manual_seed(samples)
    t = torch.arange(samples) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(samples, generator=g)
    ours = log_mel(wave, rate, n_mels, 20.0, high, 25.0, 10.0)
    ref = kaldi_log_mel(wave, rate, n_mels, 20.0, high)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-5)
    # negative control: Kaldi without pre-emphasis is a different feature, and the check sees it
    other = kaldi_log_mel(wave, rate, n_mels, 20.0, high, preemphasis_coefficient=0.0)
    assert not torch.allclose(ours, other, atol=2e-4, rtol=1e-5)


def test_log_mel_of_a_clip_shorter_than_a_window_and_of_silence():
    short = torch.randn(100, generator=torch.Generator().manual_seed(0)) * 0.1
    padded = torch.nn.functional.pad(short, (0, 400 - 100))
    assert torch.allclose(log_mel(short, 16000, 40, 20.0, 0.0, 25.0, 10.0), kaldi_log_mel(padded, 16000, 40, 20.0, 0.0), atol=2e-4)
    silence = log_mel(torch.zeros(1600), 16000, 40, 20.0, 0.0, 25.0, 10.0)
    assert torch.isfinite(silence).all() and torch.allclose(silence, torch.full_like(silence, torch.log(torch.tensor(LOG_FLOOR))))
