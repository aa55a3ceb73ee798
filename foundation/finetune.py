"""Supervised training of an encoder on a few labels: the from-scratch baseline every "pretraining
pays off" claim is measured against (same architecture, same budget, training accuracy reported)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from foundation.engine import TrainingDiverged
from foundation.model import Encoder
from foundation.tokens import collate
from foundation.trunk import masked_mean_std


def train_from_scratch(adapter, model_cfg: dict, dataset, pick: np.ndarray, test_idx: np.ndarray, labels: np.ndarray,
                       steps: int, lr: float, seed: int, batch_size: int = 32, init: Encoder | None = None) -> dict:
    """Encoder + linear head on mean/std pooling, trained on the labelled samples ``pick`` only
    (augmented training views ``dataset[(i, seed)]``), AdamW with warm-up and cosine decay.

    ``init`` fine-tunes a copy of a given encoder instead of a random one (same recipe).
    Returns test and training accuracy, so an under-trained baseline is visible.
    """
    torch.manual_seed(seed)
    enc = Encoder.build(adapter, model_cfg) if init is None else Encoder(init.adapter, **init.config)
    if init is not None:
        enc.load_state_dict(init.state_dict())
    head = torch.nn.Linear(2 * enc.width, int(labels.max()) + 1)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    g = np.random.default_rng(seed)
    bs = min(batch_size, len(pick))

    def logits(samples):
        out = enc(collate(samples))
        return head(masked_mean_std(out.tokens, out.padding))

    enc.train()
    for step in range(steps):
        idx = g.choice(pick, bs, replace=False)
        samples = [dataset[(int(i), seed * 100_003 + step * 1_000 + j)] for j, i in enumerate(idx)]
        loss = F.cross_entropy(logits(samples), torch.as_tensor(labels[idx]))
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"from-scratch training: non-finite loss {float(loss)} at step {step}, samples {idx.tolist()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    enc.eval()

    @torch.no_grad()
    def accuracy(idx: np.ndarray) -> float:
        preds = [logits([dataset[int(i)] for i in idx[s:s + 64]]).argmax(1) for s in range(0, len(idx), 64)]
        return float((torch.cat(preds).numpy() == labels[idx]).mean())

    return {"accuracy": accuracy(test_idx), "train_accuracy": accuracy(pick)}


def tune_lr(lrs: Sequence[float], validation_accuracy: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """The from-scratch baseline's own tuning: the learning rate with the best validation accuracy
    (the first on ties) and every score. A single candidate is returned untried: nothing to choose."""
    if len(lrs) == 1:
        return lrs[0], {}
    scores = {lr: validation_accuracy(lr) for lr in lrs}
    return max(lrs, key=scores.__getitem__), scores
