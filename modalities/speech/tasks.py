"""Downstream speech uses of an encoder: utterance and frame embeddings, hour-long recordings in
chunks, speaker verification by cosine scoring (EER), and a SUPERB-style weighted sum of layers.

Utterance embeddings pool mean and standard deviation over a clip's *real* tokens only: padding
tokens of a short clip in a batch of long ones never enter the statistics, so a clip embeds the
same whatever it is batched with (the test checks exactly that).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve
from torch import Tensor, nn

from foundation.tokens import PatchBatch, collate
from modalities.speech.dataset import SpeechPipeline
from modalities.speech.io import iter_blocks


def _stats(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (sum, sum of squares, count) over tokens where ``keep`` [B, N] is True."""
    w = keep.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1), (x * x * w).sum(1), w.sum(1)


def mean_std(x: Tensor, padding: Tensor) -> Tensor:
    """[B, 2D]: mean and std over real tokens only (an all-padding row gives zeros, not NaN).

    From running sums (``_stats``) rather than the core's ``masked_mean_std``: an hour-long recording is
    embedded chunk by chunk with the same sums (``embed_recording``), so both paths round alike."""
    s, sq, n = _stats(x.float(), ~padding)
    n = n.clamp(min=1)
    mean = s / n
    return torch.cat([mean, (sq / n - mean**2).clamp(min=0).sqrt()], -1)


@torch.no_grad()
def encode_layers(encoder: nn.Module, batch: PatchBatch) -> tuple[list[Tensor], Tensor]:
    """Every block's output, layer-normed (the last one is the encoder's final-norm output), + padding."""
    enc = encoder(batch, return_layers=True)
    layers = [F.layer_norm(h.float(), h.shape[-1:]) for h in enc.layers[:-1]] + [enc.tokens.float()]
    return layers, enc.padding


@torch.no_grad()
def embed_utterances(encoder: nn.Module, dataset, batch_size: int = 32, indices: list[int] | None = None) -> dict:
    """Pooled features of every clip (evaluation view, dataset order).

    Returns ``meanstd`` (last layer), ``mid_meanstd`` (middle layer, often best for content),
    ``layers`` [N, L, 2D] (every layer, for the weighted-sum probe), ``labels``, ``ids``, ``paths``.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    idx = list(range(len(dataset))) if indices is None else list(indices)
    per_layer, labels, ids, paths = [], [], [], []
    for start in range(0, len(idx), batch_size):
        samples = [dataset[i] for i in idx[start : start + batch_size]]
        layers, padding = encode_layers(encoder, collate(samples).to(device))
        per_layer.append(torch.stack([mean_std(h, padding) for h in layers], 1).cpu())
        labels += [s.label if s.label is not None else -1 for s in samples]
        ids += [s.id for s in samples]
        paths += [s.path for s in samples]
    layers = torch.cat(per_layer).numpy()
    return {
        "meanstd": layers[:, -1],
        "mid_meanstd": layers[:, layers.shape[1] // 2],
        "layers": layers,
        "labels": np.array(labels),
        "ids": np.array(ids),
        "paths": np.array(paths),
    }


def frame_embeddings(tokens: Tensor, coords: Tensor, padding: Tensor) -> list[Tensor]:
    """Per clip [T_i, D]: the mean over frequency of the real tokens at each time step (coords[..., 0])."""
    t = coords[..., 0].round().long().clamp(min=0)  # [B, N]
    steps = int(t.max()) + 1 if t.numel() else 1
    w = (~padding).to(tokens.dtype)
    sums = tokens.new_zeros(tokens.shape[0], steps, tokens.shape[-1]).index_put_(
        (torch.arange(tokens.shape[0]).unsqueeze(1).expand_as(t), t), tokens * w.unsqueeze(-1), accumulate=True)
    count = w.new_zeros(tokens.shape[0], steps).index_put_((torch.arange(tokens.shape[0]).unsqueeze(1).expand_as(t), t), w, accumulate=True)
    out = []
    for b in range(tokens.shape[0]):
        real = count[b] > 0
        last = int(real.nonzero().max()) + 1 if real.any() else 0
        out.append(sums[b, :last] / count[b, :last].clamp(min=1).unsqueeze(-1))
    return out


@torch.no_grad()
def embed_recording(encoder: nn.Module, path: str | Path, chunk_seconds: float = 10.0, batch_chunks: int = 4, frames: bool = True) -> dict:
    """Embed a recording of any length (an hour) in fixed chunks, never holding all of it.

    Audio is read block by block (soundfile), each chunk becomes tokens with the encoder's own
    preprocessing and attends only within itself; the utterance embedding is a running mean/std
    over every real token of every chunk, frame embeddings are concatenated with their times.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    config = {**encoder.adapter.config, "max_seconds": None}
    pipe = SpeechPipeline(config)
    rate = int(config["sample_rate"])
    step = int(config["patch"][0]) * config["frame_shift_ms"] / 1000  # seconds per token column
    chunk_seconds = max(step, round(chunk_seconds / step) * step)
    native, blocks = iter_blocks(path, chunk_seconds)
    total = sq = count = None
    frame_list: list[Tensor] = []
    pending: list = []

    def flush() -> None:
        nonlocal total, sq, count
        batch = collate(pending).to(device)
        enc = encoder(batch)
        s, q, n = _stats(enc.tokens.float(), ~enc.padding)
        total = s.sum(0) if total is None else total + s.sum(0)
        sq = q.sum(0) if sq is None else sq + q.sum(0)
        count = n.sum(0) if count is None else count + n.sum(0)
        if frames:
            for f in frame_embeddings(enc.tokens.float(), batch.coords, enc.padding):
                frame_list.append(f.cpu())
        pending.clear()

    for block in blocks:
        wave = pipe.resample(block, native)
        patches, coords, targets, valid, padding = pipe.tokens(pipe.spectrogram(wave))
        from foundation.tokens import SampleTokens

        pending.append(SampleTokens(patches, coords, targets, valid, padding, {}))
        if len(pending) == batch_chunks:
            flush()
    if pending:
        flush()
    if count is None:
        raise ValueError(f"{path}: no audio to embed")
    mean = total / count.clamp(min=1)
    out = {"embedding": torch.cat([mean, (sq / count.clamp(min=1) - mean**2).clamp(min=0).sqrt()]).cpu().numpy(), "sample_rate": rate}
    if frames:
        f = torch.cat(frame_list).numpy() if frame_list else np.zeros((0, mean.numel()), np.float32)
        out["frames"], out["frame_times"] = f, (np.arange(len(f)) * step).astype(np.float32)
    return out


# -- speaker verification ------------------------------------------------------------------------------
def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """EER: the operating point where false acceptances equal false rejections (interpolated)."""
    same = np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("EER needs both target (same-speaker) and non-target trials")
    fpr, tpr, _ = roc_curve(same.astype(int), scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    if i + 1 < len(fpr) and (fnr[i] - fpr[i]) * (fnr[i + 1] - fpr[i + 1]) < 0:
        a = (fnr[i] - fpr[i]) / ((fnr[i] - fpr[i]) - (fnr[i + 1] - fpr[i + 1]))
        return float(fpr[i] + a * (fpr[i + 1] - fpr[i]))
    return float((fpr[i] + fnr[i]) / 2)


def cosine_trials(emb: np.ndarray, speakers: np.ndarray, test_speaker: str, center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Trials of the held-out speaker's takes: against each other (target) and against every other
    speaker's takes (non-target), scored by cosine similarity after subtracting ``center``."""
    x = emb - (emb.mean(0) if center is None else center)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    test = np.flatnonzero(speakers == test_speaker)
    others = np.flatnonzero(speakers != test_speaker)
    sim_tt = x[test] @ x[test].T
    iu = np.triu_indices(len(test), 1)
    target = sim_tt[iu]
    nontarget = (x[test] @ x[others].T).ravel()
    return np.concatenate([target, nontarget]), np.concatenate([np.ones(len(target), bool), np.zeros(len(nontarget), bool)])


# -- weighted sum of layers (SUPERB-style probing) -------------------------------------------------------
class LayerWeightedProbe(nn.Module):
    """Softmax-weighted sum of per-layer pooled features, then a linear classifier."""

    def __init__(self, layers: int, dim: int, classes: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:  # x [B, L, D]
        return self.head((torch.softmax(self.weights, 0)[None, :, None] * x).sum(1))


def fit_layer_probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 300, weight_decay: float = 1e-3, seed: int = 0) -> LayerWeightedProbe:
    """Full-batch AdamW on standardised [N, L, D] features (statistics from ``x`` itself, stored), trained by
    the core loop (``foundation.finetune.fit_on_arrays``)."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    mu, sd = xt.mean(0, keepdim=True), xt.std(0, keepdim=True).clamp(min=1e-6) if len(xt) > 1 else torch.ones_like(xt[:1])
    probe = LayerWeightedProbe(x.shape[1], x.shape[2], classes)
    with torch.no_grad():
        probe.head.weight.normal_(0, 0.01, generator=g)
        probe.head.bias.zero_()
    probe.register_buffer("mu", mu)
    probe.register_buffer("sd", sd)
    from foundation.finetune import fit_on_arrays

    # full-batch AdamW at a constant rate, through the one training loop (foundation.engine)
    return fit_on_arrays(probe, (xt - mu) / sd, torch.as_tensor(y, dtype=torch.long), steps, lr=1e-2, weight_decay=weight_decay,
                         seed=seed)


@torch.no_grad()
def predict_layer_probe(probe: LayerWeightedProbe, x: np.ndarray) -> np.ndarray:
    xt = torch.as_tensor(x, dtype=torch.float32)
    return probe((xt - probe.mu) / probe.sd).argmax(1).numpy()
