"""A dataset of recordings (folder or manifest) that yields spectrogram tokens.

The dataset reads the adapter's ``config`` dict *live* (it keeps a reference, not a copy), so the
normalisation statistics that :meth:`SpeechAdapter.fit` stores after the dataset was built are used
by every later sample, including in DataLoader workers started after fitting.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from foundation.errors import DataError
from foundation.grid import normalized_targets, patchify
from foundation.inputs import InputPolicy
from foundation.sources import Source, class_index
from foundation.tokens import SampleTokens
from modalities.base import TokenDataset
from modalities.speech import features
from modalities.speech.io import AudioReadError, audio_info, read_audio

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """One sample: a file, optionally a [start, end) segment of it (seconds), and its label."""

    path: str
    start: float | None = None
    end: float | None = None
    label: str | None = None
    native_rate: int = 0
    seconds: float = 0.0  # the segment's duration, from the header (no decoding)


def _seconds(value) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


class SpeechPipeline:
    """Waveform -> crop -> (augmented) normalised log-mel -> patch tokens, from the config alone.

    Shared by the dataset and by chunked embedding of long recordings, so both cut tokens the same way.
    """

    def __init__(self, config: dict) -> None:
        self.config = config

    def resample(self, wave, rate: int) -> Tensor:
        return features.resample(wave, rate, int(self.config["sample_rate"]))

    def crop(self, wave: Tensor, rng: torch.Generator | None) -> Tensor:
        max_s = self.config.get("max_seconds")
        if not max_s:
            return wave
        n = int(round(max_s * int(self.config["sample_rate"])))
        if wave.numel() <= n:
            return wave
        if rng is None:
            off = (wave.numel() - n) // 2
        else:
            off = int(torch.randint(0, wave.numel() - n + 1, (1,), generator=rng))
        return wave[off : off + n]

    def spectrogram(self, wave: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """[frames, n_mels] log-mel, augmented when ``rng`` is given, normalised when stats exist."""
        c = self.config
        if rng is not None and c.get("aug_noise_snr_db"):
            lo, hi = c["aug_noise_snr_db"]
            if float(torch.rand((), generator=rng)) < 0.5:
                wave = features.add_noise(wave, lo + (hi - lo) * float(torch.rand((), generator=rng)), rng)
        spec = features.log_mel(wave, int(c["sample_rate"]), int(c["n_mels"]), float(c["low_freq"]), float(c["high_freq"]), float(c["frame_length_ms"]), float(c["frame_shift_ms"]))
        if rng is not None:
            if c.get("aug_gain_db"):
                g = (2 * float(torch.rand((), generator=rng)) - 1) * c["aug_gain_db"]
                spec = spec + g * np.log(10) / 10
            if c.get("aug_tilt_db"):
                t = (2 * float(torch.rand((), generator=rng)) - 1) * c["aug_tilt_db"]
                spec = spec + features.spectral_tilt(spec.shape[1], t)
        if c.get("mel_mean") is not None:
            spec = (spec - torch.tensor(c["mel_mean"])) / torch.tensor(c["mel_std"])
        return spec

    def tokens(self, spec: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(patches, coords (time, freq) in patch units, targets, target_valid, token padding)."""
        grid = patchify(spec.unsqueeze(0), tuple(self.config["patch"]))
        targets = normalized_targets(grid.patches, grid.valid)
        return grid.patches, grid.coords, targets, grid.valid, grid.token_padding

    def to_sample(self, wave: Tensor, rng: torch.Generator | None = None, id: str = "", path: str = "", label=None) -> SampleTokens:
        patches, coords, targets, valid, padding = self.tokens(self.spectrogram(self.crop(wave, rng), rng))
        return SampleTokens(patches, coords, targets, valid, padding, {}, id=id, path=path, label=label)


class SpeechDataset(TokenDataset):
    """Recordings -> :class:`SampleTokens` of (time x mel) spectrogram patches.

    ``train=True`` views draw a random crop of at most ``max_seconds`` plus gain/noise/tilt
    augmentation from the per-sample generator; evaluation views take the centre ``max_seconds``
    (``max_seconds: null`` keeps whole clips). Short clips are never stretched: they give fewer
    tokens and the batch pads them.
    """

    def __init__(self, sources: list[Source], config: dict, train: bool, on_error: str = "raise") -> None:
        self.inputs = InputPolicy(on_error)
        self.config, self.train, self.on_error = config, train, self.inputs.on_error
        self.pipeline = SpeechPipeline(config)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()  # index -> waveform, least recently read first
        self._cached_bytes = 0
        self.inputs.found = len(sources)
        segments: list[Segment] = []
        for src in sources:
            info = self.inputs.load(src.path, checked_info, src.path)
            if info is None:
                continue
            start, end = _seconds(src.extra.get("start")), _seconds(src.extra.get("end"))
            whole = info.frames / info.sample_rate
            seconds = max(0.0, min(whole, end if end is not None else whole) - (start or 0.0))
            segments.append(Segment(src.path, start, end, src.label, info.sample_rate, seconds))
        if not segments:
            raise DataError(Path(self.skipped[0][0]).parent if self.skipped else "data", f"no readable audio among {len(sources)} file(s)"
                            + (f"; first problem: {self.skipped[0][1]}" if self.skipped else ""), "point data.root at a folder of audio files")
        self.segments = segments
        self.headers_checked()
        self.labels, self.classes = class_index([s.label for s in segments])

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def lengths(self) -> list[int]:
        """Tokens per sample, from the headers' durations and the live config (``max_seconds`` crops
        count): the training sampler buckets clips of similar length into one batch, so short clips
        are not padded up to long ones."""
        c = self.config
        frames_per_token = int(c["patch"][0])
        bands = int(c["n_mels"]) // int(c["patch"][1]) if c.get("n_mels") and c["patch"][1] else 1
        out = []
        for seg in self.segments:
            s = min(seg.seconds, c["max_seconds"]) if c.get("max_seconds") else seg.seconds
            frames = max(1, round(s * 1000.0 / float(c["frame_shift_ms"])))
            out.append(-(-frames // frames_per_token) * bands)
        return out

    def label(self, index: int) -> int | None:
        return None if self.labels is None else self.labels[index]

    # -- the pipeline, step by step -----------------------------------------------------------------
    def waveform(self, index: int) -> Tensor:
        """The whole segment, mono, at the configured rate (from the worker's cache when it is there)."""
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        seg = self.segments[index]
        wave, rate = read_audio(seg.path, seg.start, seg.end)
        wave = self.pipeline.resample(wave, rate)
        budget = int(float(self.config.get("cache_mb") or 0) * 2**20)
        if 0 < wave.nbytes <= budget:
            self._cache[index] = wave
            self._cached_bytes += wave.nbytes
            while self._cached_bytes > budget:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return wave

    def crop(self, wave: Tensor, rng: torch.Generator | None) -> Tensor:
        return self.pipeline.crop(wave, rng)

    def spectrogram(self, wave: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.pipeline.spectrogram(wave, rng)

    def tokens(self, spec: Tensor):
        return self.pipeline.tokens(spec)

    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens | None:
        """Sample ``index``; None under ``data.on_error=skip`` when its file is bad (never another sample)."""
        seg = self.segments[index]
        wave = self.inputs.load(seg.path, self.waveform, index, check=False)
        if wave is None:
            return None
        sid = seg.path if seg.start is None and seg.end is None else f"{seg.path}@{seg.start or 0:g}-{'end' if seg.end is None else format(seg.end, 'g')}"
        return self.pipeline.to_sample(wave, rng, id=sid, path=seg.path, label=self.label(index))


def checked_info(path: str):
    """Header information of a file that holds audio (refuses a header with zero frames)."""
    info = audio_info(path)
    if info.frames == 0:
        raise AudioReadError(f"{path}: contains no audio samples")
    return info
