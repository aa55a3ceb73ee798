"""A whole recording embedded by windows, in bounded memory: what `load_encoder(...).embed_recording` runs.

The evaluation view of the speech dataset is the centre ``max_seconds`` of a clip (2 s by default), so a
10-minute recording used to be embedded from its middle alone. Here the recording is read block by block
(soundfile), each window of ``max_seconds`` becomes tokens with the export's own preprocessing and is encoded
on its own (attention stays within a window, as in training), and:

- ``windows`` [W, D]: each window's embedding under the export's pooling, with ``starts``/``ends`` in seconds;
- ``embedding`` [D]: the whole recording under the same pooling, from running sums over every real token of
  every window (mean/std pools), the running max (``max``) or the windows' mean (``cls``).

Memory holds ``batch_windows`` windows and the running sums, whatever the recording's length.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from foundation.model import pool
from foundation.tokens import SampleTokens, collate
from modalities.speech.dataset import SpeechPipeline
from modalities.speech.io import iter_blocks


def _pool_features(enc, pooling: str) -> Tensor:
    """The token features a mean/std pooling averages: final tokens, or the middle block layer-normed."""
    if pooling == "mid_meanstd":
        normed = [nn.functional.layer_norm(h, h.shape[-1:]) for h in [enc.inputs, *enc.layers]]
        return normed[1 + len(enc.layers) // 2]
    return enc.tokens


@torch.no_grad()
def embed_windows(encoder: nn.Module, path: str | Path, pooling: str, window_seconds: float | None = None,
                  batch_windows: int = 8) -> dict:
    """Embed ``path`` window by window; see the module docstring. ``window_seconds`` defaults to the export's
    ``max_seconds`` (the length it was trained on), rounded to whole tokens."""
    encoder.eval()
    device = next(encoder.parameters()).device
    config = {**encoder.adapter.config, "max_seconds": None}
    pipe = SpeechPipeline(config)
    step = int(config["patch"][0]) * float(config["frame_shift_ms"]) / 1000  # seconds per token column
    window = window_seconds or encoder.adapter.config.get("max_seconds") or 2.0
    window = max(step, round(window / step) * step)
    native, blocks = iter_blocks(path, window)
    per_window: list[Tensor] = []
    sums = {"s": None, "q": None, "n": None, "max": None}
    seconds: list[float] = []
    pending: list[SampleTokens] = []

    def add(key: str, value: Tensor, fn) -> None:
        sums[key] = value if sums[key] is None else fn(sums[key], value)

    def flush() -> None:
        enc = encoder(collate(pending).to(device), return_layers=True)
        per_window.append(pool(enc, pooling).float().cpu())
        feats, keep = _pool_features(enc, pooling).float(), (~enc.padding).unsqueeze(-1).float()
        add("s", (feats * keep).sum((0, 1)), torch.add)
        add("q", (feats * feats * keep).sum((0, 1)), torch.add)
        add("n", keep.sum(), torch.add)
        add("max", enc.tokens.masked_fill(enc.padding.unsqueeze(-1), float("-inf")).amax((0, 1)), torch.maximum)
        pending.clear()

    for block in blocks:
        seconds.append(len(block) / native)
        patches, coords, targets, valid, padding = pipe.tokens(pipe.spectrogram(pipe.resample(block, native)))
        pending.append(SampleTokens(patches, coords, targets, valid, padding, {}))
        if len(pending) == batch_windows:
            flush()
    if pending:
        flush()
    if not per_window:
        raise ValueError(f"{path}: no audio to embed")
    windows = torch.cat(per_window)
    n = sums["n"].clamp(min=1)
    mean = sums["s"] / n
    whole = {"mean": mean, "meanstd": None, "mid_meanstd": None, "max": sums["max"], "cls": windows.mean(0)}
    if pooling in ("meanstd", "mid_meanstd"):
        whole[pooling] = torch.cat([mean, (sums["q"] / n - mean**2).clamp(min=1e-12).sqrt()])
    if whole.get(pooling) is None:
        raise ValueError(f"pooling {pooling!r} has no whole-recording form; use mean, meanstd, mid_meanstd, max or cls")
    starts = np.cumsum([0.0, *seconds[:-1]])
    return {"embedding": whole[pooling].cpu().numpy().astype(np.float32), "windows": windows.numpy().astype(np.float32),
            "starts": starts.astype(np.float64), "ends": (starts + np.array(seconds)).astype(np.float64),
            "window_seconds": window, "pooling": pooling}
