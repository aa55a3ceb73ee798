"""The speech adapter: recordings -> normalised log-mel -> (time x mel) patch tokens.

Config keys are the whole preprocessing and travel with an exported encoder. ``sample_rate``,
``n_mels`` and ``high_freq`` left as ``null`` are derived from the data the first time a dataset is
built (the data's rate, capped at 16 kHz; bands that suit the bandwidth); ``mel_mean``/``mel_std``
are fitted on training data by :meth:`SpeechAdapter.fit`.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from foundation.sources import find_sources
from foundation.recipes import RecipeError
from modalities.base import Adapter, TokenDataset
from modalities.speech import features
from modalities.speech.dataset import SpeechDataset
from modalities.speech.io import AUDIO_EXTENSIONS
from modalities.speech.tokenizer import SpectrogramPatchEmbed

log = logging.getLogger(__name__)

MAX_AUTO_RATE = 16000


class SpeechAdapter(Adapter):
    name: ClassVar[str] = "speech"
    defaults: ClassVar[dict[str, Any]] = {
        "sample_rate": None,  # Hz every clip is resampled to; null = the data's most common rate (<= 16 kHz)
        "n_mels": None,  # null = 40 / 64 / 80 by rate, fewer if a band would cover < 2 FFT bins
        "low_freq": 20.0,
        "high_freq": None,  # null = Nyquist of the lowest native rate seen in the data
        "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0,
        # frames x mel bands per token; null bands = all of them: one token per 40 ms frame, as in
        # SSAST's frame patches, which beat square patches on speech tasks (a digit is a sequence of
        # full spectra; splitting bands into separate tokens lets pooling blur the spectral shape)
        "patch": [4, None],
        "max_seconds": 2.0,  # random crops (training) / centre crops (evaluation); null = whole clips
        "mel_mean": None,  # per-band statistics fitted on training data
        "mel_std": None,
        "fit_max_files": 500,
        "aug_gain_db": 6.0,  # training views only
        "aug_tilt_db": 0.0,
        "aug_noise_snr_db": None,  # [low, high] SNR range for added white noise, or null
        # decoded, resampled recordings kept in memory per DataLoader worker (MB; 0 = off): from the
        # second epoch on, a corpus that fits is never decoded again (decoding was a third of a
        # worker's time per clip); a larger one keeps the most recently read
        "cache_mb": 512,
    }
    position_kind: ClassVar[str] = "sincos"
    default_masking: ClassVar[dict[str, Any]] = {"kind": "span", "axis": 0, "ratio": 0.7, "span": 2}

    # -- shapes ------------------------------------------------------------------------------------
    @property
    def patch_dim(self) -> int:
        frames, bands = self.config["patch"]
        if bands is None:
            if self.config["n_mels"] is None:
                raise RecipeError("speech adapter: patch bands follow n_mels, which is derived from the data: build a dataset first or set adapter.n_mels")
            bands = self.config["n_mels"]
        return int(frames) * int(bands)

    @property
    def coord_dims(self) -> int:
        return 2

    # -- data ----------------------------------------------------------------------------------------
    def resolve_settings(self, native_rates: list[int]) -> None:
        """Fill the unset rate/mel settings from the data's native rates (once; later data keeps them)."""
        c = self.config
        if c["sample_rate"] is None:
            if not native_rates:
                raise ValueError("speech adapter: sample_rate is unset and there is no data to derive it from")
            common = Counter(native_rates).most_common(1)[0][0]
            c["sample_rate"] = int(min(common, MAX_AUTO_RATE))
            log.info("speech: sample_rate set to %d Hz from the data", c["sample_rate"])
        rate = int(c["sample_rate"])
        if c["high_freq"] is None and native_rates:
            lowest = min(native_rates)
            if lowest / 2 < rate / 2:
                c["high_freq"] = float(lowest / 2)
                log.info("speech: mel range capped at %.0f Hz, the Nyquist of the lowest native rate (%d Hz)", lowest / 2, lowest)
        n_mels, high = features.resolve_mel(rate, c["n_mels"], float(c["low_freq"]), c["high_freq"], float(c["frame_length_ms"]))
        c["n_mels"], c["high_freq"] = n_mels, high
        if c["patch"][1] is None:
            c["patch"] = [int(c["patch"][0]), int(n_mels)]

    def dataset(self, data: dict, train: bool) -> SpeechDataset:
        sources = find_sources(data.get("root"), data.get("manifest"), data.get("labels"), extensions=AUDIO_EXTENSIONS)
        ds = SpeechDataset(sources, self.config, train, on_error=data.get("on_error", "raise") or "raise")
        self.resolve_settings([s.native_rate for s in ds.segments])
        return ds

    def fit(self, dataset: TokenDataset) -> None:
        """Per-band mean/std of the log-mel over (up to ``fit_max_files``) training clips, unaugmented."""
        assert isinstance(dataset, SpeechDataset), "SpeechAdapter.fit needs a SpeechDataset"
        self.resolve_settings([s.native_rate for s in dataset.segments])
        n = len(dataset)
        take = torch.linspace(0, n - 1, min(n, int(self.config["fit_max_files"]))).round().long().unique().tolist()
        saved = self.config["mel_mean"], self.config["mel_std"]
        self.config["mel_mean"] = self.config["mel_std"] = None
        total, sq, count = 0.0, 0.0, 0
        try:
            for i in take:
                wave = dataset.inputs.load(dataset.segments[i].path, dataset.waveform, i, check=False)
                if wave is None:  # skipped (and counted) under data.on_error=skip
                    continue
                spec = dataset.spectrogram(dataset.crop(wave, None)).double()
                total = total + spec.sum(0)
                sq = sq + (spec**2).sum(0)
                count += spec.shape[0]
        except Exception:
            self.config["mel_mean"], self.config["mel_std"] = saved
            raise
        if count == 0:
            self.config["mel_mean"], self.config["mel_std"] = saved
            raise ValueError("speech adapter: no readable training clip to fit normalisation statistics on")
        mean = total / count
        std = (sq / count - mean**2).clamp(min=0).sqrt().clamp(min=1e-3)  # all-silent bands: no division by 0
        self.config["mel_mean"] = [round(float(v), 6) for v in mean]
        self.config["mel_std"] = [round(float(v), 6) for v in std]

    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        from modalities.speech.synthetic import write_synthetic

        return write_synthetic(out_dir, n, seed)

    # -- model parts ------------------------------------------------------------------------------------
    def make_tokenizer(self, width: int) -> nn.Module:
        return SpectrogramPatchEmbed(self.patch_dim, width)
