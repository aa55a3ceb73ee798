"""Waveform -> normalised log-mel spectrogram, with settings that suit the data's bandwidth.

Kaldi-compatible filterbanks (``torchaudio.compliance.kaldi.fbank``) so features match what speech
toolkits compute. Two bandwidth rules keep every mel band meaningful:
- the top of the filterbank never exceeds the Nyquist frequency of the lowest native rate in the
  data (an 8 kHz recording resampled to 16 kHz has nothing above 4 kHz), and
- the number of mel bands is reduced until each band covers at least two FFT bins (80 bands on an
  8 kHz, 256-point FFT leaves the lowest bands with a single bin or none).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor
from torchaudio.compliance import kaldi

MIN_BINS_PER_BAND = 2
LOG_FLOOR = 1e-10  # power floor before the log: digital silence gives a finite constant, never -inf


def fft_size(sample_rate: int, frame_length_ms: float) -> int:
    window = int(sample_rate * frame_length_ms / 1000)
    return 1 << (window - 1).bit_length()


def band_bins(n_mels: int, sample_rate: int, frame_length_ms: float, low_freq: float, high_freq: float) -> Tensor:
    """FFT bins with non-zero weight in each mel band (Kaldi's triangular banks)."""
    banks, _ = kaldi.get_mel_banks(n_mels, fft_size(sample_rate, frame_length_ms), float(sample_rate), low_freq, high_freq, 100.0, -500.0, 1.0)
    return (banks > 0).sum(dim=1)


def default_n_mels(sample_rate: int) -> int:
    """A starting point by bandwidth: 40 bands for telephone-band audio, 64 for 16 kHz, 80 above."""
    return 40 if sample_rate <= 8000 else 64 if sample_rate <= 16000 else 80


def resolve_mel(sample_rate: int, n_mels: int | None, low_freq: float, high_freq: float | None, frame_length_ms: float) -> tuple[int, float]:
    """(n_mels, high_freq) for this rate; explicit settings are checked, ``None`` ones derived."""
    nyquist = sample_rate / 2
    high = nyquist if high_freq is None else float(high_freq)
    if high <= 0:
        high = nyquist + high  # Kaldi convention: 0 or negative = offset from Nyquist
    if not low_freq < high <= nyquist:
        raise ValueError(f"mel range {low_freq}-{high} Hz does not fit sample rate {sample_rate} Hz (Nyquist {nyquist} Hz)")
    if n_mels is None:
        n = default_n_mels(sample_rate)
        while n > 8 and int(band_bins(n, sample_rate, frame_length_ms, low_freq, high).min()) < MIN_BINS_PER_BAND:
            n -= 4
        return n, high
    bins = band_bins(int(n_mels), sample_rate, frame_length_ms, low_freq, high)
    if int(bins.min()) == 0:
        empty = int((bins == 0).sum())
        raise ValueError(
            f"n_mels={n_mels} leaves {empty} empty mel band(s) at {sample_rate} Hz between {low_freq} and {high} Hz "
            f"(FFT of {fft_size(sample_rate, frame_length_ms)} points); use fewer bands or leave n_mels unset"
        )
    return int(n_mels), high


def resample(wave: np.ndarray | Tensor, orig: int, new: int) -> Tensor:
    x = torch.as_tensor(wave, dtype=torch.float32)
    if orig == new:
        return x
    return AF.resample(x, orig, new)


def log_mel(wave: Tensor, sample_rate: int, n_mels: int, low_freq: float, high_freq: float, frame_length_ms: float, frame_shift_ms: float) -> Tensor:
    """[frames, n_mels] Kaldi log-mel filterbank; a clip shorter than one window still gives one frame.

    ``snip_edges=False`` centres frames so a clip of d seconds gives about d / shift frames, which is
    what keeps a 0.14 s clip at 14 frames instead of dropping its edges.

    The numbers are ``torchaudio.compliance.kaldi.fbank``'s (povey window, DC removal, pre-emphasis
    0.97, power spectrum, no dither; ``tests/modalities/speech/test_speech_features.py`` holds the two
    together), computed here with the window and mel banks built once per setting instead of on every
    call: fbank rebuilt both and padded each frame to the FFT size, which was most of a DataLoader
    worker's time per clip.
    """
    window = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    x = wave.float().reshape(-1)
    if x.numel() < window:
        x = torch.nn.functional.pad(x, (0, window - x.numel()))
    povey, banks = _fbank_constants(sample_rate, n_mels, float(low_freq), float(high_freq), window)
    frames = _centred_frames(x * 32768.0, window, shift)  # Kaldi's int16 scale: its energy floors behave
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = frames - PREEMPHASIS * torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    spectrum = torch.view_as_real(torch.fft.rfft(frames * povey, n=fft_size(sample_rate, frame_length_ms))).pow(2).sum(-1)
    return torch.log((spectrum @ banks).clamp(min=LOG_FLOOR))


PREEMPHASIS = 0.97


@lru_cache(maxsize=32)
def _fbank_constants(sample_rate: int, n_mels: int, low_freq: float, high_freq: float, window: int) -> tuple[Tensor, Tensor]:
    """Kaldi's povey window [window] and mel banks [fft // 2 + 1, n_mels] (last bin weightless)."""
    padded = 1 << (window - 1).bit_length()
    banks, _ = kaldi.get_mel_banks(n_mels, padded, float(sample_rate), low_freq, high_freq, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks.float(), (0, 1))
    return torch.hann_window(window, periodic=False, dtype=torch.float32).pow(0.85), banks.T.contiguous()


def _centred_frames(x: Tensor, window: int, shift: int) -> Tensor:
    """[m, window] frames with Kaldi's ``snip_edges=False`` layout: m = round(n / shift), the signal
    reflected at both ends (sample order ...2 1 0 | 0 1 2 ..., not torch's reflect)."""
    m = (x.numel() + shift // 2) // shift
    pad = window // 2 - shift // 2
    reversed_x = x.flip(0)
    x = torch.cat((reversed_x[-pad:], x, reversed_x)) if pad > 0 else torch.cat((x[-pad:], reversed_x))
    return x.as_strided((m, window), (shift, 1))


def add_noise(wave: Tensor, snr_db: float, gen: torch.Generator) -> Tensor:
    """White noise at ``snr_db`` below the clip's power (a silent clip gets a faint floor)."""
    power = wave.pow(2).mean().clamp(min=1e-8)
    noise = torch.randn(wave.shape, generator=gen) * torch.sqrt(power / 10 ** (snr_db / 10))
    return wave + noise


def spectral_tilt(n_mels: int, tilt_db: float) -> Tensor:
    """A linear ramp over bands in natural-log units: ``tilt_db`` dB from the lowest to the highest band."""
    return torch.linspace(-0.5, 0.5, n_mels) * tilt_db * math.log(10) / 10
