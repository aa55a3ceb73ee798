"""Fine-tuning an encoder on a few labels: heads, methods, the saved ``finetuned/`` directory and predict.

One model class serves every method, so training, saving and prediction have one path:

    FinetuneModel = Encoder (frozen, fully trained, or LoRA-adapted) + Head (pooling + linear)

Methods (``finetune.method``):
  linear     frozen encoder, linear head on mean+std pooled final tokens
  knn        frozen encoder, cosine k-nearest-neighbour vote over the training embeddings (no training)
  attentive  frozen encoder, a learned query cross-attending over the final tokens, then linear
  layers     frozen encoder, a learned softmax-weighted sum of every layer (s3prl-style), then linear
  full       everything trains; layer-wise learning-rate decay (the head at ``lr``, block i of L at
             ``lr * decay^(L - i)``, tokenizer and positions at ``lr * decay^(L + 1)``)
  lora       peft LoRA adapters on the trunk's blocks only (qkv, proj, fc1, fc2 of ``trunk.blocks.N``),
             the head through ``modules_to_save``; merged before saving, so the encoder keeps its
             parameter names and loads strictly

Tasks (``finetune.task``): ``classification`` (one class per sample), ``multilabel`` (a label holds
several names joined by ``finetune.label_sep``), ``regression`` (the label is a number; trained on
standardised targets, predicted in the original unit), ``segmentation`` (one class per voxel, pixel or
point, from ``data.masks``; the head is the adapter's ``dense_head``, methods linear, full and lora;
see ``foundation.dense``).
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from foundation.dense import DENSE_METHODS, DENSE_TASKS, dense_evaluate, dense_loss
from foundation.model import Encoder, load_strict, readable_under_umask
from foundation.tokens import PatchBatch, SampleTokens, collate
from foundation.trunk import AttentivePool, masked_mean_std

log = logging.getLogger("domainfm")

TASKS = ("classification", "multilabel", "regression") + DENSE_TASKS
METHODS = ("linear", "knn", "attentive", "layers", "full", "lora")
FROZEN = ("linear", "knn", "attentive", "layers")
# default learning rate per method (0 in the config means "this")
METHOD_LR = {"linear": 3e-3, "attentive": 3e-3, "layers": 3e-3, "full": 1e-3, "lora": 3e-3, "knn": 0.0}
# the trunk's block modules LoRA adapts: anchored at ``trunk.blocks.N`` so tokenizers' and
# positions' own ``proj`` layers are never hit (peft's bare-name pitfall, see DESIGN)
LORA_TARGETS = r"(?:.*\.)?encoder\.trunk\.blocks\.\d+\.(?:attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
FINETUNED_FORMAT = 1

FINETUNE_DEFAULTS: dict = {
    "task": "classification", "method": "full", "steps": 300, "batch_size": 32, "lr": 0.0, "weight_decay": 0.05,
    "layer_decay": 0.75, "warmup_steps": 0, "min_lr_ratio": 0.01, "clip": 1.0, "accumulation": 1, "precision": "no",
    "lora_rank": 8, "lora_alpha": 16, "knn_k": 5, "class_weight": True, "label_sep": ";",
    "val_fraction": 0.0, "patience": 0, "eval_every": 50, "log_every": 10, "augment": True,
}


# -- targets ------------------------------------------------------------------------------------
@dataclass
class Targets:
    """What a dataset's labels mean for one task: the per-sample targets and the output names."""

    task: str
    values: np.ndarray  # classification [N] int; multilabel [N, C] float 0/1; regression [N] float
    names: list[str]  # class names (classification, multilabel) or ["value"] (regression)

    @property
    def outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.names)


def dataset_targets(dataset, task: str, label_sep: str = ";") -> Targets:
    """Targets from a dataset's labels (``data.labels``), without loading samples.

    Every adapter maps label strings to class indices (``dataset.classes``, ``dataset.label(i)``);
    multilabel splits those strings on ``label_sep``, regression reads them as numbers.
    """
    idx = [dataset.label(i) for i in range(len(dataset))]
    if any(v is None for v in idx) or not getattr(dataset, "classes", None):
        raise ValueError("fine-tuning needs a label for every sample: set data.labels "
                         "(folder, pattern:<regex>, column:<name> or dataset)")
    raw = [str(dataset.classes[i]) for i in idx]
    if task == "classification":
        return Targets(task, np.asarray(idx, dtype=np.int64), [str(c) for c in dataset.classes])
    if task == "multilabel":
        parts = [[p.strip() for p in r.split(label_sep) if p.strip()] for r in raw]
        names = sorted({p for ps in parts for p in ps})
        y = np.zeros((len(raw), len(names)), np.float32)
        for i, ps in enumerate(parts):
            y[i, [names.index(p) for p in ps]] = 1.0
        return Targets(task, y, names)
    if task == "regression":
        try:
            return Targets(task, np.asarray([float(r) for r in raw], np.float32), ["value"])
        except ValueError as err:
            raise ValueError(f"finetune.task=regression needs numeric labels: {err}") from err
    raise ValueError(f"finetune.task={task!r} is not one of {', '.join(TASKS)}")


def sample_groups(dataset, rule: str | None) -> np.ndarray:
    """One group name per sample (speaker, patient, scene) from ``data.groups`` (``folder``,
    ``pattern:<regex>``, ``column:<name>``). Without a rule, samples cut from one source item (a
    dataset's ``unit``: the crops of one volume) form a group, and every other sample is its own:
    two crops of one scan on both sides of a split would be a leak, not a result."""
    from foundation.sources import label_of

    if not rule:
        unit = getattr(dataset, "unit", None)
        return np.asarray([unit(i) for i in range(len(dataset))] if unit else np.arange(len(dataset))).astype(str)
    sources = getattr(dataset, "sources", None)
    out = []
    for i in range(len(dataset)):
        if sources is not None and len(sources) == len(dataset):
            src = sources[i]
            out.append(label_of(src.path, rule, getattr(src, "extra", None) or None))
        else:
            out.append(label_of(dataset[i].path, rule))
    return np.asarray(out).astype(str)


def group_split(groups: np.ndarray, fraction: float, seed: int, strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``fraction`` of the samples as whole groups (no group on both sides).

    With ``strata`` (class per sample) groups are drawn per majority class so each class keeps
    samples on both sides where it has at least two groups."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    if strata is None:
        order = rng.permutation(uniq)
        held = set(order[: max(1, int(round(fraction * len(uniq))))])
    else:
        major = {g: np.bincount(strata[groups == g]).argmax() for g in uniq}
        held = set()
        for c in np.unique(list(major.values())):
            gs = rng.permutation([g for g in uniq if major[g] == c])
            held |= set(gs[: max(1, int(round(fraction * len(gs))))] if len(gs) > 1 else [])
    test = np.array([g in held for g in groups])
    return np.flatnonzero(~test), np.flatnonzero(test)


class LabelledView(torch.utils.data.Dataset):
    """A dataset's samples ``indices`` carrying task targets as labels (so ``collate`` batches them).

    ``view[j]`` is the evaluation view of sample ``indices[j]``; ``view[(j, seed)]`` the augmented
    training view (the adapter's augmentations apply)."""

    def __init__(self, dataset, indices: Sequence[int], targets: np.ndarray | None = None, augment: bool = True) -> None:
        self.dataset, self.indices, self.targets, self.augment = dataset, np.asarray(indices, dtype=np.int64), targets, augment
        self.lengths = None if getattr(dataset, "lengths", None) is None else [dataset.lengths[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> SampleTokens:
        j, seed = key if isinstance(key, tuple) else (key, None)
        i = int(self.indices[int(j)])
        s = self.dataset[(i, seed)] if seed is not None and self.augment else self.dataset[i]
        if self.targets is not None:
            t = self.targets[i]
            s.label = t.tolist() if isinstance(t, np.ndarray) else t.item()
        return s


# -- heads --------------------------------------------------------------------------------------
class Head(nn.Module):
    """Pooling over the encoder's tokens plus one linear layer; ``kind`` is the method's pooling.

    meanstd: mean and std of the final tokens; attentive: a learned query over them; layers: mean and
    std of a softmax-weighted sum of every layer's (layer-normed) tokens, trunk input included.
    """

    def __init__(self, kind: str, width: int, depth: int, outputs: int, heads: int = 1) -> None:
        super().__init__()
        self.kind = kind
        if kind == "attentive":
            self.pool = AttentivePool(width, heads)
            self.norm = nn.LayerNorm(width)
            self.fc = nn.Linear(width, outputs)
        elif kind in ("meanstd", "layers"):
            if kind == "layers":
                self.layer_logits = nn.Parameter(torch.zeros(depth + 1))
            # the linear probe's standardisation (as MAE's linear probing): batch statistics in
            # training, running ones at inference; no affine part, so the head stays linear
            self.norm = nn.BatchNorm1d(2 * width, affine=False, eps=1e-6)
            self.fc = nn.Linear(2 * width, outputs)
        else:
            raise ValueError(f"unknown head kind {kind!r}")
        nn.init.zeros_(self.fc.bias)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)

    def forward(self, enc) -> Tensor:
        if self.kind == "attentive":
            return self.fc(self.norm(self.pool(enc.tokens, enc.padding)))
        if self.kind == "layers":
            hs = torch.stack([F.layer_norm(h, h.shape[-1:]) for h in [enc.inputs, *enc.layers]])
            x = (self.layer_logits.softmax(0).view(-1, 1, 1, 1).to(hs.dtype) * hs).sum(0)
            return self.fc(self.norm(masked_mean_std(x, enc.padding)))
        return self.fc(self.norm(masked_mean_std(enc.tokens, enc.padding)))


class KNNHead(nn.Module):
    """Cosine kNN over a bank of standardised training embeddings (mean+std pooled final tokens).

    The bank is a set of buffers, so it saves and loads with the head like any weight."""

    def __init__(self, width: int, outputs: int, bank_size: int, k: int = 5) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("bank", torch.zeros(bank_size, 2 * width))
        self.register_buffer("bank_targets", torch.zeros(bank_size, outputs))
        self.register_buffer("mean", torch.zeros(2 * width))
        self.register_buffer("std", torch.ones(2 * width))

    def embed(self, enc) -> Tensor:
        x = (masked_mean_std(enc.tokens, enc.padding).float() - self.mean) / self.std
        return F.normalize(x, dim=-1)

    def fill(self, feats: Tensor, targets: Tensor) -> None:
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0, unbiased=False).clamp(min=1e-6))
        self.bank.copy_(F.normalize((feats - self.mean) / self.std, dim=-1))
        self.bank_targets.copy_(targets)

    def forward(self, enc) -> Tensor:
        sim = self.embed(enc) @ self.bank.T
        top, idx = sim.topk(min(self.k, self.bank.shape[0]), dim=1)
        w = (top / 0.07).softmax(1)  # similarity-weighted vote (as DINO's kNN), averaged targets
        return (w.unsqueeze(-1) * self.bank_targets[idx]).sum(1)


class FinetuneModel(nn.Module):
    """Encoder + head. ``forward(batch)`` returns (loss, extras) when the batch has labels, the engine's
    model contract; ``outputs(batch)`` the raw head outputs (logits, or probabilities for kNN)."""

    def __init__(self, encoder: Encoder, method: str, task: str, outputs: int, bank_size: int = 0, knn_k: int = 5,
                 class_weight: Tensor | None = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"finetune.method={method!r} is not one of {', '.join(METHODS)}")
        self.encoder, self.method, self.task = encoder, method, task
        depth = encoder.config["depth"]
        if task in DENSE_TASKS:
            if method not in DENSE_METHODS:
                raise ValueError(f"finetune.method={method!r} does not serve finetune.task={task}; use one of {', '.join(DENSE_METHODS)}")
            self.head = encoder.adapter.dense_head(encoder, outputs)  # the modality's decoder, e.g. UNETR's
        elif method == "knn":
            self.head = KNNHead(encoder.width, outputs, bank_size, knn_k)
        else:
            kind = {"attentive": "attentive", "layers": "layers"}.get(method, "meanstd")
            self.head = Head(kind, encoder.width, depth, outputs, encoder.config["heads"])
        self.register_buffer("class_weight", class_weight if class_weight is not None else torch.ones(outputs), persistent=False)
        if method in FROZEN:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "FinetuneModel":
        super().train(mode)
        if self.method in FROZEN:
            self.encoder.eval()
        return self

    def outputs(self, batch: PatchBatch) -> Tensor:
        """Logits [B, outputs], or for a dense task [B, N, D, classes]."""
        layers = self.method == "layers" or bool(getattr(self.head, "needs_layers", False))
        if self.method in FROZEN:
            with torch.no_grad():
                enc = self.encoder(batch, return_layers=layers)
        else:
            enc = self.encoder(batch, return_layers=layers)
        if self.task in DENSE_TASKS:
            return self.head(enc, batch).float()
        return self.head(enc).float()

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        if self.task in DENSE_TASKS:
            return dense_loss(out, labels)
        if self.task == "classification":
            return F.cross_entropy(out, labels.long(), weight=self.class_weight)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(out, labels.float(), pos_weight=self.class_weight)
        return F.mse_loss(out[:, 0], labels.float())

    def forward(self, batch: PatchBatch, *args, **kwargs):
        out = self.outputs(batch)
        labels = batch.dense if self.task in DENSE_TASKS else batch.labels
        if labels is None:
            raise ValueError(f"finetune.task={self.task}: a training batch carries no targets")
        return self.loss(out, labels.to(out.device)), {"outputs": out.detach()}


def class_weights(targets: Targets, train_idx: np.ndarray) -> Tensor | None:
    """Inverse-frequency weights on the training labels (classification), or the negatives-to-positives
    ratio per label (multilabel's ``pos_weight``): the rare class counts as much as the common one."""
    if targets.task == "classification":
        counts = np.bincount(targets.values[train_idx], minlength=targets.outputs).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
        return torch.tensor(w, dtype=torch.float32)
    if targets.task == "multilabel":
        pos = targets.values[train_idx].sum(0)
        return torch.tensor(np.clip((len(train_idx) - pos) / np.maximum(pos, 1), 0.1, 10.0), dtype=torch.float32)
    return None


# -- LoRA ---------------------------------------------------------------------------------------
def apply_lora(model: FinetuneModel, rank: int = 8, alpha: int = 16):
    """Wrap ``model`` with peft LoRA on the trunk's blocks only; the head is trained and saved through
    ``modules_to_save``. Returns the PeftModel (``merge_lora`` turns it back into a FinetuneModel)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, modules_to_save=["head"])
    return get_peft_model(model, config)


def lora_adapted_modules(peft_model) -> list[str]:
    """Names of the modules that carry LoRA weights (the wiring test checks they are all in blocks)."""
    return sorted({n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")})


def merge_lora(peft_model) -> FinetuneModel:
    """Fold the adapters into the base weights and drop the wrappers: parameter names are the
    encoder's own again (strict loading and export work), the trained head replaces the original."""
    return peft_model.merge_and_unload()


# -- optimisation -------------------------------------------------------------------------------
def param_groups(model: nn.Module, method: str, lr: float, weight_decay: float, layer_decay: float, depth: int) -> list[dict]:
    """AdamW groups: no decay on norms, biases and learned tokens; for ``full``, layer-wise learning-
    rate decay (BEiT/MAE fine-tuning recipe): the deeper the layer, the closer its rate to ``lr``."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.replace("base_model.model.", "")
        wd = weight_decay if p.ndim >= 2 and "bias_tables" not in name and "lora_" not in name else 0.0
        scale = 1.0
        if method == "full" and name.startswith("encoder."):
            m = re.match(r"encoder\.trunk\.(?:blocks|bias_tables)\.(\d+)\.", name)
            layer = int(m.group(1)) + 1 if m else (depth + 1 if name.startswith("encoder.trunk.norm") else 0)
            scale = layer_decay ** (depth + 1 - layer)
        groups.setdefault((lr * scale, wd), []).append(p)
    return [{"params": ps, "lr": glr, "weight_decay": wd} for (glr, wd), ps in groups.items()]


def training_recipe(cfg: dict, seed: int, run_dir: Path, n_train: int, lr: float) -> dict:
    """The engine's ``train.*`` / ``run.*`` / ``data.*`` settings for one fine-tuning run."""
    from foundation.recipes import DEFAULTS

    steps = int(cfg["steps"])
    train = {**DEFAULTS["train"], "steps": steps, "batch_size": min(int(cfg["batch_size"]), n_train), "lr": lr,
             "min_lr": lr * float(cfg["min_lr_ratio"]), "warmup_steps": int(cfg["warmup_steps"]) or max(1, steps // 10),
             "weight_decay": float(cfg["weight_decay"]), "betas": [0.9, 0.999], "accumulation": int(cfg["accumulation"]),
             "precision": cfg["precision"], "clip": float(cfg["clip"]), "checkpoint_every": steps, "keep_checkpoints": 1,
             "log_every": int(cfg["log_every"]), "monitor_every": int(cfg["eval_every"])}
    return {"train": train, "run": {"dir": str(run_dir), "seed": seed}, "data": dict(DEFAULTS["data"]), "finetune": cfg}


def fit(model: nn.Module, train_view: LabelledView, cfg: dict, seed: int = 0, val_view: LabelledView | None = None,
        run_dir: Path | None = None, score: Callable[[nn.Module, LabelledView], float] | None = None,
        progress: bool = False) -> dict:
    """Train ``model`` (forward -> (loss, extras)) on ``train_view`` for ``cfg['steps']`` optimiser steps
    through the one training loop (``foundation.engine.train``: warm-up + cosine, accumulation, mixed
    precision, clipping, NaN guard, checkpoints and resume, metrics.csv, TensorBoard, progress bar).

    Fixed budget by default. With ``val_view`` and ``score``, the validation score is logged every
    ``cfg['eval_every']`` steps (TensorBoard ``monitor/val_score``); with ``cfg['patience']`` > 0 as
    well, training stops after that many evaluations without improvement and the trainable weights of
    the best score are restored. ``run_dir`` None trains in a temporary directory (few-label sweeps).
    """
    import tempfile

    from foundation.engine import TrainingTask, train

    lr = float(cfg["lr"]) or METHOD_LR[cfg["method"]]
    depth = _encoder_of(model).config["depth"]
    early = val_view is not None and score is not None and int(cfg["patience"]) > 0
    track = {"best": -math.inf, "bad": 0, "state": None, "scores": []}

    def monitor(m, teacher, held) -> dict:
        s = score(m, val_view)
        track["scores"].append(s)
        if s > track["best"]:
            track.update(best=s, bad=0)
            if early:
                track["state"] = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
        else:
            track["bad"] += 1
        return {"val_score": s}

    def finish(run_dir, m, teacher) -> dict:
        if track["state"] is not None:
            with torch.no_grad():
                for n, p in m.named_parameters():
                    if n in track["state"]:
                        p.copy_(track["state"][n])
        return {"best_val_score": None if track["best"] == -math.inf else track["best"]}

    def build(resumed):
        return TrainingTask(
            name=f"finetune {cfg['method']}", model=model, dataset=train_view, finish=finish, lengths=train_view.lengths,
            held_out=collate([val_view[0]]) if val_view is not None and score is not None else None,
            monitor=monitor if val_view is not None and score is not None else None,
            param_groups=lambda m, wd, lr_: param_groups(m, cfg["method"], lr_, wd, cfg["layer_decay"], depth),
            should_stop=(lambda: track["bad"] >= int(cfg["patience"])) if early else None)

    with tempfile.TemporaryDirectory(prefix="domainfm-finetune-") as tmp:
        out = Path(run_dir) if run_dir is not None else Path(tmp)
        train(training_recipe(cfg, seed, out, len(train_view), lr), build, progress=progress)
        summary = json.loads((out / "summary.json").read_text())
    model.eval()
    return {"steps": summary["steps"], "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
            "best_val_score": summary.get("best_val_score"), "early_stopped": bool(summary.get("stopped_early")),
            "val_scores": track["scores"]}


@dataclass
class ArrayBatch:
    """A batch of fixed feature rows and their classes, as the engine's loop moves and counts batches."""

    x: Tensor
    y: Tensor
    ids: list

    @property
    def size(self) -> int:
        return self.x.shape[0]

    def to(self, device, non_blocking: bool = False) -> "ArrayBatch":
        return ArrayBatch(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking), self.ids)


class _ArrayRows(torch.utils.data.Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return self.x[i], self.y[i], str(i)


def _collate_rows(rows) -> ArrayBatch:
    return ArrayBatch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), [r[2] for r in rows])


class _Classifier(nn.Module):
    """(loss, extras) around a module that maps feature rows to logits."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: ArrayBatch, *args, **kwargs):
        return F.cross_entropy(self.module(batch.x), batch.y.long()), {}


def fit_on_arrays(module: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, weight_decay: float = 0.0, seed: int = 0,
                  batch_size: int | None = None, warmup_steps: int = 1, min_lr_ratio: float = 1.0) -> nn.Module:
    """Train ``module`` (feature rows -> logits) with cross-entropy through the one engine loop: a probe on
    fixed features (e.g. a per-layer weighted sum) needs no private loop. Full batches and a constant
    learning rate by default (``warmup_steps`` / ``min_lr_ratio`` give warm-up and cosine decay)."""
    import tempfile

    from foundation.engine import TrainingTask, train
    from foundation.recipes import DEFAULTS

    wrapped = _Classifier(module)
    recipe = {"train": {**DEFAULTS["train"], "steps": int(steps), "batch_size": int(batch_size or len(x)), "lr": lr, "min_lr": lr * min_lr_ratio,
                        "warmup_steps": warmup_steps, "weight_decay": weight_decay, "betas": [0.9, 0.999],
                        "checkpoint_every": int(steps), "keep_checkpoints": 1, "log_every": max(1, steps // 10)},
              "run": {"seed": seed}, "data": dict(DEFAULTS["data"])}
    with tempfile.TemporaryDirectory(prefix="domainfm-probe-") as tmp:
        recipe["run"]["dir"] = tmp
        train(recipe, lambda resumed: TrainingTask(name="probe", model=wrapped, dataset=_ArrayRows(x, y), collate=_collate_rows,
                                                   finish=lambda *a: None), progress=False)
    return module.eval()


def _encoder_of(model: nn.Module) -> Encoder:
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.encoder


# -- outputs ------------------------------------------------------------------------------------
@torch.no_grad()
def predict_outputs(model: nn.Module, view, batch_size: int = 64, device: torch.device | None = None) -> dict:
    """Scores for every sample of ``view`` in order: probabilities (classification, multilabel) or
    values (regression, in the standardised unit), plus ids and paths."""
    device = device or next(model.parameters()).device
    model.eval()
    scores, ids, paths = [], [], []
    for s in range(0, len(view), batch_size):
        batch = collate([view[j] for j in range(s, min(len(view), s + batch_size))]).to(device)
        out = model.outputs(batch) if hasattr(model, "outputs") else model.base_model.model.outputs(batch)
        scores.append(out.float().cpu())
        ids += batch.ids
        paths += batch.paths
    out = torch.cat(scores)
    method, task = _method_task(model)
    if method != "knn":
        out = out.softmax(1) if task == "classification" else out.sigmoid() if task == "multilabel" else out
    return {"scores": out.numpy().astype(np.float64), "ids": ids, "paths": paths}


def _method_task(model: nn.Module) -> tuple[str, str]:
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.method, m.task


def outputs_metric(task: str, scores: np.ndarray, y: np.ndarray) -> float:
    """The single number early stopping and logs follow: accuracy, mean per-label accuracy, or R²."""
    if task == "classification":
        return float((scores.argmax(1) == y).mean())
    if task == "multilabel":
        return float(((scores > 0.5) == (y > 0.5)).mean())
    return float(1 - ((scores[:, 0] - y) ** 2).sum() / max(1e-12, ((y - y.mean()) ** 2).sum()))


# -- the whole fine-tuning of one labelled set ---------------------------------------------------
@dataclass
class Finetuned:
    """A trained model with what it needs to be saved and used: targets' meaning and normalisation."""

    model: FinetuneModel
    task: str
    method: str
    names: list[str]
    target_mean: float = 0.0
    target_std: float = 1.0
    history: dict | None = None

    def scores(self, view, batch_size: int = 64) -> dict:
        out = predict_outputs(self.model, view, batch_size)
        if self.task == "regression":
            out["scores"] = out["scores"] * self.target_std + self.target_mean
        return out


def build_model(encoder: Encoder, cfg: dict, targets: Targets, train_idx: np.ndarray) -> FinetuneModel:
    weight = class_weights(targets, train_idx) if cfg["class_weight"] else None
    return FinetuneModel(encoder, cfg["method"], targets.task, targets.outputs, bank_size=len(train_idx), knn_k=int(cfg["knn_k"]),
                         class_weight=weight)


def finetune_indices(encoder: Encoder, dataset, targets: Targets, train_idx: np.ndarray, cfg: dict, seed: int = 0,
                     val_idx: np.ndarray | None = None, run_dir: Path | None = None, progress: bool = False) -> Finetuned:
    """Fine-tune a copy of ``encoder`` on samples ``train_idx`` (the caller's encoder is not touched)."""
    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder).float()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mean, std = 0.0, 1.0
    values = targets.values
    if targets.task == "regression":
        mean, std = float(values[train_idx].mean()), float(values[train_idx].std() + 1e-8)
        values = ((values - mean) / std).astype(np.float32)
    model = build_model(enc, cfg, targets, train_idx).to(device)
    dense = targets.task in DENSE_TASKS
    labels = None if dense else values  # dense targets come with each sample (SampleTokens.dense)
    train_view = LabelledView(dataset, train_idx, labels, augment=cfg["augment"])
    val_view = LabelledView(dataset, val_idx, labels) if val_idx is not None and len(val_idx) else None
    history = None
    if cfg["method"] == "knn":
        fill_knn(model, LabelledView(dataset, train_idx, values), targets, device)
    else:
        trained = apply_lora(model, int(cfg["lora_rank"]), int(cfg["lora_alpha"])) if cfg["method"] == "lora" else model

        def score(m, view):
            if dense:
                return dense_evaluate(m, view, targets.names, device=device)["mean_dice"]
            out = predict_outputs(m, view, device=device)["scores"]
            return outputs_metric(targets.task, out, values[view.indices])

        history = fit(trained, train_view, cfg, seed, val_view, run_dir, score, progress)
        model = merge_lora(trained) if cfg["method"] == "lora" else trained
    model.eval()
    return Finetuned(model, targets.task, cfg["method"], targets.names, mean, std, history)


@torch.no_grad()
def fill_knn(model: FinetuneModel, view: LabelledView, targets: Targets, device) -> None:
    feats = []
    for s in range(0, len(view), 64):
        batch = collate([view[j] for j in range(s, min(len(view), s + 64))]).to(device)
        enc = model.encoder(batch)
        feats.append(masked_mean_std(enc.tokens, enc.padding).float())
    y = torch.as_tensor(view.targets[view.indices])
    if targets.task == "classification":
        y = F.one_hot(y.long(), targets.outputs).float()
    model.head.fill(torch.cat(feats), y.float().reshape(len(view), -1).to(device))


# -- the finetuned directory ---------------------------------------------------------------------
def save_finetuned(ft: Finetuned, out_dir: str | Path, extra: dict | None = None) -> Path:
    """``out_dir/encoder/`` (Encoder.save_pretrained: config, safetensors, card), ``head.safetensors``
    and ``finetuned.json`` (task, method, label names, head shape, target normalisation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ft.model.encoder.save_pretrained(out_dir / "encoder", extra={"finetuned": ft.method})
    head = ft.model.head
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(out_dir / "head.safetensors"))
    config = {"format": "domainfm-finetuned", "format_version": FINETUNED_FORMAT, "task": ft.task, "method": ft.method,
              "names": ft.names, "outputs": len(ft.names) if ft.task != "regression" else 1,
              "bank_size": int(head.bank.shape[0]) if ft.method == "knn" else 0, "knn_k": getattr(head, "k", 5),
              "target_mean": ft.target_mean, "target_std": ft.target_std, **(extra or {})}
    (out_dir / "finetuned.json").write_text(json.dumps(config, indent=2))
    readable_under_umask(out_dir)  # safetensors writes 0600; a fine-tuned model is handed on like an export
    return out_dir


def load_finetuned(model_dir: str | Path, map_location: str = "cpu") -> Finetuned:
    """The inverse of :func:`save_finetuned`; every tensor loads strictly."""
    model_dir = Path(model_dir)
    path = model_dir / "finetuned.json"
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} is not a fine-tuned model directory: no finetuned.json "
                                "(write one with `domainfm finetune MODEL_DIR DATA`)")
    cfg = json.loads(path.read_text())
    if cfg.get("format_version") != FINETUNED_FORMAT:
        raise ValueError(f"{path}: format_version {cfg.get('format_version')} cannot be read by this domainfm (reads {FINETUNED_FORMAT})")
    # run.dir/finetuned/ keeps the encoder in encoder/; an export of it (`domainfm export`) is flat, the head beside it
    encoder = Encoder.from_pretrained(model_dir / "encoder" if (model_dir / "encoder").is_dir() else model_dir, map_location)
    model = FinetuneModel(encoder, cfg["method"], cfg["task"], cfg["outputs"], cfg["bank_size"], cfg["knn_k"])
    load_strict(model.head, model_dir / "head.safetensors", map_location)
    return Finetuned(model.eval(), cfg["task"], cfg["method"], cfg["names"], cfg["target_mean"], cfg["target_std"])


def prediction_rows(ft: Finetuned, view, batch_size: int = 64) -> tuple[list[str], list[list]]:
    """The predictions CSV: id, path, prediction, then score_<class> (classification, multilabel)
    or nothing more (regression: the prediction is the value)."""
    out = ft.scores(view, batch_size)
    s = out["scores"]
    if ft.task == "regression":
        return ["id", "path", "prediction"], [[i, p, f"{v[0]:.9g}"] for i, p, v in zip(out["ids"], out["paths"], s)]
    header = ["id", "path", "prediction"] + [f"score_{n}" for n in ft.names]
    rows = []
    for i, p, v in zip(out["ids"], out["paths"], s):
        pred = ft.names[int(v.argmax())] if ft.task == "classification" else ";".join(n for n, x in zip(ft.names, v) if x > 0.5)
        rows.append([i, p, pred] + [f"{x:.9g}" for x in v])
    return header, rows


def write_csv(path: str | Path, header: list[str], rows: list) -> Path:
    """A CSV file of ``header`` and ``rows`` (its folder made first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_predictions(ft: Finetuned, view, out: str | Path, batch_size: int = 64) -> Path:
    return write_csv(out, *prediction_rows(ft, view, batch_size))


# -- the from-scratch baseline (benchmarks) -------------------------------------------------------
def train_from_scratch(adapter, model_cfg: dict, dataset, pick: np.ndarray, test_idx: np.ndarray, labels: np.ndarray,
                       steps: int, lr: float, seed: int, batch_size: int = 32, init: Encoder | None = None) -> dict:
    """Encoder + linear head on mean/std pooling, trained on the labelled samples ``pick`` only
    (augmented training views), AdamW with warm-up and cosine decay: the baseline every "pretraining
    pays off" claim is measured against (same architecture, same budget).

    ``init`` fine-tunes a copy of a given encoder instead of a random one (same recipe). Runs through
    the same model and loop as ``domainfm finetune`` (method ``full`` without layer decay).
    Returns test and training accuracy, so an under-trained baseline is visible.
    """
    torch.manual_seed(seed)
    enc = Encoder.build(adapter, model_cfg) if init is None else copy.deepcopy(init)
    labels = np.asarray(labels)
    targets = Targets("classification", labels.astype(np.int64), [str(c) for c in range(int(labels.max()) + 1)])
    cfg = {**FINETUNE_DEFAULTS, "method": "full", "steps": steps, "lr": lr, "layer_decay": 1.0, "batch_size": batch_size,
           "class_weight": False, "min_lr_ratio": 0.0}
    ft = finetune_indices(enc, dataset, targets, np.asarray(pick), cfg, seed)

    def accuracy(idx: np.ndarray) -> float:
        return float((ft.scores(LabelledView(dataset, idx))["scores"].argmax(1) == labels[idx]).mean())

    return {"accuracy": accuracy(np.asarray(test_idx)), "train_accuracy": accuracy(np.asarray(pick))}


def tune_lr(lrs: Sequence[float], validation_accuracy: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """The from-scratch baseline's own tuning: the learning rate with the best validation accuracy
    (the first on ties) and every score. A single candidate is returned untried: nothing to choose."""
    if len(lrs) == 1:
        return lrs[0], {}
    scores = {lr: validation_accuracy(lr) for lr in lrs}
    return max(lrs, key=scores.__getitem__), scores


# -- the `domainfm finetune` and `domainfm predict` verbs -----------------------------------------
def load_encoder(model_dir: str | Path) -> Encoder:
    """An exported encoder directory, or a pretraining run directory (its ``encoder/``)."""
    from foundation.errors import RunDirError

    d = Path(model_dir)
    for cand in (d, d / "encoder"):
        if (cand / "config.json").exists() and (cand / "model.safetensors").exists():
            return Encoder.from_pretrained(cand)
    if (d / "finetuned.json").exists():
        return Encoder.from_pretrained(d / "encoder")
    raise RunDirError(f"{d}: neither an exported encoder (config.json + model.safetensors) nor a finished pretraining run "
                      "(encoder/); export one with `domainfm export RUN_DIR OUT_DIR` or finish the run")


def finetune_spec(data: str, overrides: list[str]) -> dict:
    """DATA and ``key=value`` overrides as the fine-tuning config: ``data.*`` (plus ``data.groups``),
    ``finetune.*`` (see FINETUNE_DEFAULTS) and ``run.dir`` / ``run.seed``."""
    from foundation.recipes import DEFAULTS, RecipeError, apply_overrides

    spec = {"data": {**DEFAULTS["data"], "groups": None, "masks": None}, "finetune": dict(FINETUNE_DEFAULTS),
            "run": {"dir": "runs/finetune", "seed": 0}, "probe": {**DEFAULTS["probe"], "test_fraction": 0.3}}
    p = Path(data)
    spec["data"]["manifest" if p.is_file() and p.suffix in (".csv", ".jsonl", ".json", ".ndjson") else "root"] = str(p)
    spec = apply_overrides(spec, overrides)
    ft = spec["finetune"]
    for key, allowed in (("task", TASKS), ("method", METHODS)):
        if ft[key] not in allowed:
            raise RecipeError(f"finetune.{key}={ft[key]!r} is not one of {', '.join(allowed)}")
    if ft["task"] in DENSE_TASKS and ft["method"] not in DENSE_METHODS:
        raise RecipeError(f"finetune.method={ft['method']} does not serve finetune.task={ft['task']}; use one of {', '.join(DENSE_METHODS)}")
    if not 0 <= ft["val_fraction"] < 1:
        raise RecipeError(f"finetune.val_fraction must be in [0, 1), got {ft['val_fraction']}")
    if ft["patience"] and not ft["val_fraction"]:
        raise RecipeError("finetune.patience needs a validation set: set finetune.val_fraction (e.g. 0.2); "
                          "budgets are fixed otherwise, because early stopping on a few samples is noise")
    return spec


def adapter_data(data: dict) -> dict:
    """The ``data`` keys an adapter reads (``groups`` is the core's)."""
    return {k: v for k, v in data.items() if k != "groups"}


def run_finetune(model_dir: str | Path, data: str, overrides: list[str], progress: bool = True) -> tuple[Path, Finetuned]:
    """``domainfm finetune``: train on DATA's labels and write ``run.dir/finetuned/`` with its report;
    returns the directory and the trained model."""
    from foundation.evaluate import task_metrics
    from foundation.report import finetune_report

    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from foundation.errors import DomainfmError

        raise DomainfmError("domainfm finetune runs in one process (the trained model is collected on one rank): "
                            "run it without torchrun/accelerate launch")
    spec = finetune_spec(data, overrides)
    cfg, seed, run_dir = spec["finetune"], int(spec["run"]["seed"]), Path(spec["run"]["dir"])
    encoder = load_encoder(model_dir)
    dense = cfg["task"] in DENSE_TASKS
    if dense:  # one label per element: the adapter's dense dataset reads them from data.masks
        dataset = encoder.adapter.dense_dataset(adapter_data(spec["data"]), train=True)
        targets = Targets(cfg["task"], np.zeros(len(dataset), np.int64), [str(c) for c in dataset.dense_classes])
    else:
        dataset = encoder.adapter.dataset(adapter_data(spec["data"]), train=True)
        targets = dataset_targets(dataset, cfg["task"], cfg["label_sep"])
    groups = sample_groups(dataset, spec["data"]["groups"])
    if cfg["val_fraction"] and dense:
        train_idx, val_idx = group_split(groups, cfg["val_fraction"], seed)
    elif cfg["val_fraction"]:
        strata = targets.values if targets.task == "classification" else None
        train_idx, val_idx = group_split(groups, cfg["val_fraction"], seed, strata)
    else:
        train_idx, val_idx = np.arange(len(dataset)), np.array([], dtype=np.int64)
    if (run_dir / "finetuned" / "finetuned.json").exists():
        from foundation.errors import RunDirError

        raise RunDirError(f"{run_dir} already holds a fine-tuned model (finetuned/): choose another run.dir, or delete it to retrain")
    run_dir.mkdir(parents=True, exist_ok=True)
    ft = finetune_indices(encoder, dataset, targets, train_idx, cfg, seed, val_idx if len(val_idx) else None, run_dir, progress)
    out = save_finetuned(ft, run_dir / "finetuned", extra={"finetune": cfg, "data": spec["data"], "seed": seed,
                                                             "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
                                                             "source_model": str(Path(model_dir).resolve())})
    split, idx = ("validation", val_idx) if len(val_idx) else ("train", train_idx)
    if dense:
        metrics = dense_evaluate(ft.model, LabelledView(dataset, idx), targets.names)
    else:
        scores = ft.scores(LabelledView(dataset, idx))["scores"]
        metrics = task_metrics(targets.task, targets.values[idx], scores, targets.names)
    (out / "evaluation.json").write_text(json.dumps({"split": split, "metrics": metrics, "history": ft.history}, indent=2))
    finetune_report(out, run_dir / "metrics.csv")
    return out, ft


def run_predict(finetuned_dir: str | Path, data: str, out: str | Path, overrides: list[str], batch_size: int = 64) -> Path:
    """``domainfm predict``: the predictions CSV of DATA read with the stored preprocessing; for a dense
    task, each sample's labels in its source geometry plus an index CSV (``foundation.dense``)."""
    from foundation.recipes import DEFAULTS, apply_overrides

    ft = load_finetuned(finetuned_dir)
    spec = {"data": dict(DEFAULTS["data"])}
    p = Path(data)
    spec["data"]["manifest" if p.is_file() and p.suffix in (".csv", ".jsonl", ".json", ".ndjson") else "root"] = str(p)
    if ft.task in DENSE_TASKS:
        from foundation.dense import write_dense_predictions

        spec["data"]["masks"] = None
        spec = apply_overrides(spec, overrides)
        dataset = ft.model.encoder.adapter.dense_dataset(spec["data"], train=False)
        return write_dense_predictions(ft, dataset, out, max(1, min(batch_size, 8)))
    spec = apply_overrides(spec, overrides)
    dataset = ft.model.encoder.adapter.dataset(spec["data"], train=False)
    return write_predictions(ft, LabelledView(dataset, np.arange(len(dataset))), out, batch_size)
