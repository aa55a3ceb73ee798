"""Downstream tasks on medical volumes: patient-wise splits, 3-d segmentation with a UNETR-style
decoder over encoder layers (MONAI blocks), Dice (MONAI metrics), predicted masks written back as
NIfTI in the source image's space, and a from-scratch supervised classifier baseline.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.transforms import Invertd
from sklearn.model_selection import GroupShuffleSplit
from torch import Tensor, nn

from foundation.tokens import collate
from foundation.trunk import masked_max, masked_mean
from modalities.medical.dataset import MedicalDataset, _plain, to_tokens
from modalities.medical.preprocess import IMAGE, SEG, VALID


def patient_split(dataset: MedicalDataset, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume indices (train, test) with no patient on both sides; volumes without an id are their own patient."""
    groups = [p if p is not None else f"__vol{i}" for i, p in enumerate(dataset.patients)]
    split = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    tr, te = next(split.split(np.zeros(len(groups)), groups=groups))
    return np.sort(tr), np.sort(te)


# -- segmentation ------------------------------------------------------------------------------------
def _stage_strides(patch: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per upsampling stage (coarse -> fine), the stride of each axis: a 16x16x4 patch upsamples in
    plane four times and through-plane twice."""
    logs = []
    for p in patch:
        k = int(round(math.log2(p)))
        if 2**k != p:
            raise ValueError(f"segmentation needs power-of-two patch sizes, got {patch}")
        logs.append(k)
    s = max(logs)
    return [tuple(2 if t <= k else 1 for k in logs) for t in range(s, 0, -1)]


class UNETRDecoder(nn.Module):
    """UNETR's decoder (Hatamizadeh et al. 2022) for any power-of-two patch and encoder depth.

    Skips: the image itself at full resolution (``UnetrBasicBlock``), and shallow-to-deep encoder
    layers upsampled to each finer level (chained ``UnetrPrUpBlock`` stages, so anisotropic patches
    work); the final tokens are the bottleneck; ``UnetrUpBlock`` merges level by level.
    """

    def __init__(self, in_channels: int, width: int, depth: int, patch: tuple[int, int, int], classes: int, features: int = 16) -> None:
        super().__init__()
        self.strides = _stage_strides(patch)
        s = len(self.strides)
        self.layer_ids = [max(0, round(depth * j / s) - 1) for j in range(1, s)]  # level j=1..s-1
        self.stem = UnetrBasicBlock(3, in_channels, features, kernel_size=3, stride=1, norm_name="instance", res_block=True)
        self.skips = nn.ModuleList()
        for j in range(1, s):
            stages, ch = [], width
            for t in range(s - j):  # from the token grid (level s) down to level j
                out = features * 2**j
                stages.append(UnetrPrUpBlock(3, ch, out, num_layer=0, kernel_size=3, stride=1,
                                             upsample_kernel_size=self.strides[t], norm_name="instance", res_block=True))
                ch = out
            self.skips.append(nn.Sequential(*stages))
        self.ups = nn.ModuleList()
        ch = width
        for j in range(s - 1, -1, -1):  # merge into level j
            out = features * 2**j
            self.ups.append(UnetrUpBlock(3, ch, out, kernel_size=3, upsample_kernel_size=self.strides[s - 1 - j], norm_name="instance", res_block=True))
            ch = out
        self.head = UnetOutBlock(3, features, classes)

    def forward(self, image: Tensor, layers: list[Tensor], final: Tensor) -> Tensor:
        """image [B, C, *S]; layers: per-block [B, C', *grid] maps; final [B, width, *grid]."""
        s = len(self.strides)
        skips = {0: self.stem(image)}
        for j, block in zip(range(1, s), self.skips):
            skips[j] = block(layers[self.layer_ids[j - 1]])
        x = final
        for j, up in zip(range(s - 1, -1, -1), self.ups):
            x = up(x, skips[j])
        return self.head(x)


class SegmentationModel(nn.Module):
    """Encoder (pretrained or fresh) + UNETR decoder. Input: a window [B, C+1, *roi] (image + validity)."""

    def __init__(self, encoder, classes: int, features: int = 16) -> None:
        super().__init__()
        cfg = encoder.adapter.config
        self.encoder, self.cfg, self.classes, self.features = encoder, cfg, classes, features
        self.patch = tuple(int(p) for p in cfg["patch"])
        self.decoder = UNETRDecoder(int(cfg["channels"]), encoder.width, encoder.config["depth"], self.patch, classes, features)

    def forward(self, x: Tensor, spacing: Tensor | None = None) -> Tensor:
        c = int(self.cfg["channels"])
        samples = [to_tokens(w[:c].detach().cpu(), w[c:].detach().cpu(), self.cfg, "", "", None) for w in x.as_subclass(Tensor)]
        if spacing is not None:
            for s in samples:
                s.meta = {"spacing": spacing}
        batch = collate(samples).to(x.device)
        enc = self.encoder(batch, return_layers=True)
        grid = [r // p for r, p in zip(x.shape[2:], self.patch)]

        def as_map(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], *grid, t.shape[-1]).permute(0, 4, 1, 2, 3)

        return self.decoder(x[:, :c].as_subclass(Tensor), [as_map(h) for h in enc.layers], as_map(enc.tokens))


def _window_batch(dataset: MedicalDataset, vols: list[int], roi: list[int], rng: torch.Generator, per_volume: int) -> tuple[Tensor, Tensor | None]:
    """Random ``roi`` windows (image + validity channel, and segmentation; None for a dataset read
    without masks) with random flips."""
    xs, ys = [], []
    for vi in vols:
        d = dataset.volume(vi)
        dataset.crops.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
        for crop in dataset.crops(d)[:per_volume]:
            x = torch.cat([_plain(crop[IMAGE]).float(), _plain(crop[VALID]).float()], 0)
            y = _plain(crop[SEG]).long() if dataset.with_seg else None
            for ax in range(1, 4):
                if bool(torch.rand((), generator=rng) < 0.5):
                    x = x.flip(ax)
                    y = None if y is None else y.flip(ax)
            xs.append(x)
            ys.append(y)
    return torch.stack(xs), (torch.stack(ys) if dataset.with_seg else None)


@dataclass
class WindowBatch:
    """Windows [B, C+1, *roi] (image + validity), their segmentations (None without masks) and the
    volumes' voxel spacing, as the engine's loop moves and counts batches."""

    x: Tensor
    y: Tensor | None
    spacing: Tensor
    ids: list

    @property
    def size(self) -> int:
        return self.x.shape[0]

    def to(self, device, non_blocking: bool = False) -> "WindowBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return WindowBatch(move(self.x), move(self.y), move(self.spacing), self.ids)


class _VolumeWindows(torch.utils.data.Dataset):
    """Volume ``volumes[i]`` under the engine's key ``(i, seed)``: ``per_volume`` random windows with
    random flips (``_window_batch``) drawn from a generator seeded with ``seed``."""

    def __init__(self, dataset: MedicalDataset, volumes: list[int], per_volume: int = 2) -> None:
        self.dataset, self.volumes, self.per_volume = dataset, list(volumes), per_volume
        self.spacing = torch.tensor(dataset.cfg["spacing"] or [1.0, 1.0, 1.0], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, key)
        x, y = _window_batch(self.dataset, [self.volumes[int(i)]], self.dataset.cfg["roi"], torch.Generator().manual_seed(int(seed)),
                             self.per_volume)
        return x, y, self.spacing, str(self.volumes[int(i)])


def _collate_windows(items) -> WindowBatch:
    ys = [it[1] for it in items]
    return WindowBatch(torch.cat([it[0] for it in items]), None if ys[0] is None else torch.cat(ys), items[0][2],
                       [it[3] for it in items])


class _WindowObjective(nn.Module):
    """``loss_of(windows, labels, spacing, rng)`` around a segmentation model, as the engine's model."""

    def __init__(self, model: SegmentationModel, loss_of: Callable, seed: int) -> None:
        super().__init__()
        self.model, self.loss_of = model, loss_of
        self.rng = torch.Generator().manual_seed(seed)  # the objective's own draws (e.g. corruptions), on the CPU

    @property
    def encoder(self):
        return self.model.encoder

    def forward(self, batch: WindowBatch, *args, **kwargs):
        return self.loss_of(batch.x, batch.y, batch.spacing, self.rng), {}


def train_on_windows(model: SegmentationModel, dataset: MedicalDataset, volumes: list[int], steps: int,
                     loss_of: Callable[[Tensor, Tensor | None, Tensor, torch.Generator], Tensor], lr: float, encoder_lr_scale: float,
                     batch_volumes: int, seed: int, progress: bool = False, desc: str = "train") -> list[float]:
    """The loop every segmentation-model training here shares, run by the one engine loop
    (``foundation.engine.train``): random windows of ``batch_volumes`` of ``volumes`` per step (two each,
    ``_window_batch``), AdamW (weight decay 0.01) with the encoder at ``encoder_lr_scale`` x ``lr``, warm-up
    then cosine to 1%, gradient norm clipped at 1. ``loss_of(windows, labels, spacing, rng)`` is the
    objective. Returns the loss curve (one value per step)."""
    import tempfile

    from foundation.engine import TrainingTask, train
    from foundation.recipes import DEFAULTS
    from foundation.report import read_metrics

    if steps <= 0:
        return []
    wrapped = _WindowObjective(model, loss_of, seed)

    def groups(m, weight_decay, lr_):
        enc = [p for p in model.encoder.parameters() if p.requires_grad]
        dec = [p for p in model.decoder.parameters() if p.requires_grad]
        return [g for g in ({"params": enc, "lr": lr_ * encoder_lr_scale, "weight_decay": 0.01},
                            {"params": dec, "lr": lr_, "weight_decay": 0.01}) if g["params"]]

    recipe = {"train": {**DEFAULTS["train"], "steps": int(steps), "batch_size": min(int(batch_volumes), len(volumes)), "lr": lr,
                        "min_lr": lr * 0.01, "warmup_steps": max(1, steps // 10), "weight_decay": 0.01, "betas": [0.9, 0.999],
                        "clip": 1.0, "checkpoint_every": int(steps), "keep_checkpoints": 1, "log_every": 1,
                        "monitor_every": 10**9},
              "run": {"seed": seed}, "data": dict(DEFAULTS["data"])}
    with tempfile.TemporaryDirectory(prefix="domainfm-windows-") as tmp:
        recipe["run"]["dir"] = tmp
        train(recipe, lambda resumed: TrainingTask(name=desc, model=wrapped, dataset=_VolumeWindows(dataset, volumes),
                                                   collate=_collate_windows, finish=lambda *a: None, param_groups=groups),
              progress=progress)
        losses = read_metrics(Path(tmp) / "metrics.csv")["loss"]
    model.train()
    return [float(v) for v in losses if np.isfinite(v)]


def finetune_segmentation(model: SegmentationModel, dataset: MedicalDataset, train_idx: list[int], steps: int,
                          lr: float = 1e-3, batch_volumes: int = 2, seed: int = 0, encoder_lr_scale: float = 0.5,
                          probe_first: float = 0.25, probe: str = "decoder", probe_lr: float | None = None) -> list[float]:
    """Train on random crops of the labelled volumes with Dice+CE; returns the loss curve.

    ``probe_first``: the first share of ``steps`` trains only the fresh part, ``probe`` (``decoder``: the
    encoder is frozen; ``head``: only the 1x1x1 output head trains, for a network whose decoder was
    pretrained too), then everything trains; each phase has its own warm-up and cosine (LP-FT, Kumar et
    al. 2022), the first at ``probe_lr`` (default ``lr``). Why: a fresh decoder's or head's first gradients
    are large and random, and the pretrained weights they reach forget what made them worth loading
    (measured in ``benchmarks/medical_fewlabel.py``, modalities/medical/README.md). The probe phase is also
    cheaper: nothing frozen runs a backward pass.
    """
    if not dataset.with_seg:
        raise ValueError("finetune_segmentation needs a MedicalDataset built with with_seg=True (its masks are the labels)")
    if not 0.0 <= probe_first < 1.0:
        raise ValueError(f"probe_first is a share of the steps in [0, 1), got {probe_first}")
    if probe not in ("decoder", "head"):
        raise ValueError(f"probe is 'decoder' or 'head', got {probe!r}")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def dice_ce(x: Tensor, y: Tensor, spacing: Tensor, rng: torch.Generator) -> Tensor:
        return loss_fn(model(x, spacing), y.clamp(max=model.classes - 1))

    probe_steps = int(round(steps * probe_first))
    losses: list[float] = []
    if probe_steps:
        fresh = model.decoder if probe == "decoder" else model.decoder.head
        trainable = [(p, p.requires_grad) for p in model.parameters()]
        model.requires_grad_(False)
        fresh.requires_grad_(True)
        try:  # its own window stream, so the main phase sees the windows it would see without a probe phase
            losses += train_on_windows(model, dataset, train_idx, probe_steps, dice_ce, lr if probe_lr is None else probe_lr,
                                       encoder_lr_scale, batch_volumes, seed + 1000)
        finally:
            for p, flag in trainable:
                p.requires_grad_(flag)
    return losses + train_on_windows(model, dataset, train_idx, steps - probe_steps, dice_ce, lr, encoder_lr_scale, batch_volumes, seed)


@torch.no_grad()
def predict_volume(model: SegmentationModel, volume: dict, sw_batch_size: int = 4) -> Tensor:
    """Label map [1, *S] of one preprocessed volume, by sliding windows over the whole volume."""
    model.eval()
    x = torch.cat([_plain(volume[IMAGE]).float(), _plain(volume[VALID]).float()], 0)[None]
    spacing = torch.as_tensor(volume[IMAGE].pixdim, dtype=torch.float32)[:3]
    roi = [int(r) for r in model.cfg["sw_roi"]]
    logits = sliding_window_inference(x, roi, sw_batch_size, lambda w: model(w, spacing), overlap=float(model.cfg["sw_overlap"]), mode="gaussian")
    return logits[0].argmax(0, keepdim=True)


def dice_scores(model: SegmentationModel, dataset: MedicalDataset, idx: list[int], classes: int, per_class: bool = False) -> np.ndarray:
    """Foreground Dice (MONAI ``DiceMetric``, background excluded) per volume: the mean over structures
    [n], or with ``per_class`` each structure's [n, classes - 1] (NaN where a structure is absent from
    both), because a mean over structures hides the small one that few labels fail on."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    out = []
    for i in idx:
        d = dataset.volume(i)
        pred = predict_volume(model, d)
        y = _plain(d[SEG]).long()
        p1 = F.one_hot(pred[0], classes).permute(3, 0, 1, 2)[None].float()
        y1 = F.one_hot(y[0].clamp(max=classes - 1), classes).permute(3, 0, 1, 2)[None].float()
        metric.reset()
        metric(p1, y1)
        out.append(metric.aggregate().float().numpy())
    scores = np.array(out).reshape(len(out), classes - 1)
    if per_class:
        return scores
    with warnings.catch_warnings():  # a volume without any foreground structure has no mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(scores, 1)


def write_prediction(pred: Tensor, volume: dict, dataset: MedicalDataset, out_path: str | Path) -> Path:
    """Write a label map [1, *S] of a preprocessed volume of ``dataset`` as NIfTI in the *source* image's space.

    MONAI's ``Invertd`` undoes the invertible steps of the dataset's preprocessing (foreground crop,
    padding, resampling, reorientation) from the image's recorded operations, so the mask has the
    source's shape, orientation, spacing and affine.
    """
    transform = dataset.transform
    from monai.data import MetaTensor
    from monai.utils import TraceKeys

    d = dict(volume)
    # a volume read back from the disk cache was transformed by instances of another process: match
    # by the (deterministic) order of the pipeline instead of object ids
    ops = [{**op, TraceKeys.ID: TraceKeys.NONE} for op in volume[IMAGE].applied_operations]
    d[IMAGE] = MetaTensor(_plain(volume[IMAGE]), affine=volume[IMAGE].affine, meta=dict(volume[IMAGE].meta), applied_operations=ops)
    d["pred"] = MetaTensor(pred.float(), affine=volume[IMAGE].affine, meta=dict(volume[IMAGE].meta), applied_operations=list(ops))
    inv = Invertd(keys="pred", transform=transform, orig_keys=IMAGE, nearest_interp=True, to_tensor=True)
    out = inv(d)["pred"]
    affine = np.asarray(out.affine, dtype=np.float64)
    arr = np.rint(_plain(out)[0].cpu().numpy()).astype(np.uint8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(out_path))
    return out_path


# -- the dense task of `domainfm finetune` (finetune.task=segmentation; foundation/dense.py) -----------
class UNETRHead(nn.Module):
    """UNETR's decoder as the core's dense head: each sample's patches are put back into its image and
    its encoder layers into maps (the grid read from the token coordinates, so crops and whole volumes
    of any size work), and the per-voxel logits cut back into tokens: [B, N, prod(patch), classes]."""

    needs_layers = True

    def __init__(self, encoder, classes: int, features: int = 16) -> None:
        super().__init__()
        cfg = encoder.adapter.config
        self.patch = tuple(int(p) for p in cfg["patch"])
        self.channels, self.classes, self.unit_mm = int(cfg["channels"]), classes, float(cfg["position_unit_mm"])
        self.decoder = UNETRDecoder(self.channels, encoder.width, encoder.config["depth"], self.patch, classes, features)

    def forward(self, enc, batch) -> Tensor:
        from foundation.grid import patchify, unpatchify

        b, n, _ = batch.patches.shape
        voxels = math.prod(self.patch)
        spacing = batch.meta["spacing"].float() if "spacing" in batch.meta else batch.coords.new_ones(b, 3)
        unit = torch.tensor(self.patch, dtype=torch.float32, device=spacing.device) * spacing / self.unit_mm  # [B, 3]
        out = enc.tokens.new_zeros(b, n, voxels, self.classes, dtype=torch.float32)
        for i in range(b):
            grid = tuple(int(g) + 1 for g in (batch.coords[i] / unit[i]).round().amax(0).tolist())  # batch padding sits at 0
            m = math.prod(grid)

            def as_map(t: Tensor) -> Tensor:
                return t[i, :m].reshape(*grid, t.shape[-1]).permute(3, 0, 1, 2)[None]

            image = unpatchify(batch.patches[i, :m], grid, self.patch, self.channels)[None].to(enc.tokens.dtype)
            logits = self.decoder(image, [as_map(h) for h in enc.layers], as_map(enc.tokens))[0]  # [classes, *S]
            out[i, :m] = patchify(logits.float(), self.patch).patches.reshape(m, self.classes, voxels).transpose(1, 2)
        return out


@torch.no_grad()
def window_logits(outputs: Callable, dataset: MedicalDataset, index: int, sw_batch_size: int = 4) -> Tensor | None:
    """Logits [n, prod(patch), classes] of dataset sample ``index`` (a whole volume), laid out like its
    tokens, by sliding ``sw_roi`` windows over the volume (MONAI ``sliding_window_inference``, overlap
    ``sw_overlap``, Gaussian blending), as MONAI and nnU-Net predict: a CT of 512x512x300 never enters
    the encoder at once, so memory and attention cost are bounded by one window. ``outputs(batch) ->
    [B, N, D, classes]`` is the fine-tuned model on token batches. Windows sit at the volume's own
    voxels (padded to whole patches, as its tokens are); a volume that fits in ``sw_roi`` is one
    window, the single pass itself. None under ``data.on_error=skip`` when the volume failed."""
    from foundation.grid import patchify, unpatchify

    got = dataset.voxel_dict(int(index) // dataset.k)
    if got is None:
        return None
    cfg = dataset.cfg
    patch, c = tuple(int(p) for p in cfg["patch"]), int(cfg["channels"])
    x = torch.cat([got[IMAGE].float(), got[VALID].float()], 0)
    pad = []
    for size, p in zip(reversed(x.shape[1:]), reversed(patch)):
        pad += [0, (-size) % p]
    x = F.pad(x, pad)  # validity 0 on the edge padding, as patchify pads the whole-volume tokens
    size = tuple(x.shape[1:])
    roi = [min(int(r), s) for r, s in zip(cfg["sw_roi"], size)]  # multiples of the patch (adapter checks sw_roi)
    spacing = got["spacing"]

    def predict(w: Tensor) -> Tensor:  # windows [B, C+1, *roi] -> voxel logits [B, classes, *roi]
        samples = [to_tokens(v[:c], v[c:], cfg, "", "", None, spacing=spacing) for v in w.as_subclass(Tensor)]
        logits = outputs(collate(samples)).float().cpu()  # [B, n_w, D, classes]
        b, n_w, d, k = logits.shape
        grid = tuple(r // p for r, p in zip(w.shape[2:], patch))
        return torch.stack([unpatchify(t.transpose(1, 2).reshape(n_w, k * d), grid, patch, k) for t in logits])

    out = sliding_window_inference(x[None], roi, max(1, int(sw_batch_size)), predict, overlap=float(cfg["sw_overlap"]),
                                   mode="gaussian")[0]
    k = out.shape[0]
    gp = patchify(out.as_subclass(Tensor), patch)
    return gp.patches.reshape(gp.patches.shape[0], k, -1).transpose(1, 2)


def dense_dataset(adapter_cfg: dict, data: dict, train: bool) -> MedicalDataset:
    """Volumes with their segmentations (``data.masks=column:<name>``, default the adapter's
    ``seg_column``) as dense samples: training views are one random ``roi`` crop per volume per draw
    (so each sample is one volume and splits keep a volume whole); evaluation and prediction views are
    whole volumes (``eval_roi`` is ignored: predictions must cover the source)."""
    from foundation.dense import DenseTaskError

    rule = data.get("masks") or (f"column:{adapter_cfg['seg_column']}" if train else None)
    cfg = {**adapter_cfg, "crops_per_volume": 1, "eval_roi": None}
    if rule:
        if not rule.startswith("column:"):
            raise DenseTaskError(f"data.masks={rule}: medical masks come from a manifest column (data.masks=column:<name>)")
        cfg["seg_column"] = rule[len("column:"):]
    ds = MedicalDataset(cfg, data, train=train, with_seg=bool(rule))
    ds.dense_classes = []
    if rule:
        top = max(int(np.asarray(nib.load(item[SEG]).dataobj).max()) for item in ds.items)
        if top < 1:
            raise DenseTaskError(f"{ds.items[0][SEG]}...: the masks hold one class only (need background and at least one structure)")
        ds.dense_classes = [str(c) for c in range(top + 1)]
    return ds


def write_volume_maps(dataset: MedicalDataset, predictions, out_dir: str | Path):
    """``<volume>_pred.nii.gz`` per volume, in the source image's space (``write_prediction``: the
    preprocessing inverted, so shape, orientation and affine are the source's). ``predictions`` yields
    (volume index, labels [n, prod(patch)])."""
    from foundation.grid import unpatchify

    patch = tuple(int(p) for p in dataset.cfg["patch"])
    used: set[str] = set()
    for index, labels in predictions:
        vol = dataset.volume(index)
        if vol is None:  # skipped under data.on_error=skip
            continue
        size = tuple(vol[IMAGE].shape[1:])
        grid = tuple(-(-s // p) for s, p in zip(size, patch))
        pred = unpatchify(torch.as_tensor(np.asarray(labels), dtype=torch.float32), grid, patch, 1)[:, : size[0], : size[1], : size[2]]
        name = re.sub(r"\.nii(\.gz)?$", "", Path(vol["source"]).name) + "_pred"
        while name in used:
            name += "_"
        used.add(name)
        yield index, str(write_prediction(pred, vol, dataset, Path(out_dir) / f"{name}.nii.gz"))


# -- supervised from-scratch classifier (the "same size, same budget" baseline) -----------------
class VolumeClassifier(nn.Module):
    """Encoder + pooled (``mean`` or ``max`` over tokens) linear head, trained end to end on the labelled volumes only."""

    def __init__(self, encoder, classes: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', not {pooling!r}")
        self.encoder, self.pooling = encoder, pooling
        self.head = nn.Linear(encoder.width, classes)

    def forward(self, batch) -> Tensor:
        enc = self.encoder(batch)
        pool = masked_mean if self.pooling == "mean" else masked_max
        return self.head(pool(enc.tokens, enc.padding))


class _ClassifierObjective(nn.Module):
    """A :class:`VolumeClassifier` as the engine's model: ``forward(batch) -> (cross-entropy, extras)``."""

    def __init__(self, model: VolumeClassifier) -> None:
        super().__init__()
        self.model = model

    @property
    def encoder(self):
        return self.model.encoder

    def forward(self, batch, *args, **kwargs):
        return F.cross_entropy(self.model(batch), batch.labels.long().to(batch.patches.device)), {}


def train_classifier(model: VolumeClassifier, dataset: MedicalDataset, train_idx: list[int], labels: np.ndarray,
                     steps: int, lr: float = 5e-4, batch_size: int = 8, seed: int = 0) -> float:
    """Train on random crops (``dataset`` in train mode) of the labelled volumes through the one training
    loop (``foundation.finetune.fit``: AdamW, warm-up then cosine to 1% of ``lr``, gradients clipped at 1);
    returns training accuracy on their evaluation views, so an under-trained baseline is visible."""
    from foundation.finetune import FINETUNE_DEFAULTS, LabelledView, fit

    labels = np.asarray(labels)
    per_sample = np.repeat(labels, dataset.k)  # dataset index i*k + j is crop j of volume i
    view = LabelledView(dataset, [vi * dataset.k + j for vi in train_idx for j in range(dataset.k)], per_sample)
    cfg = {**FINETUNE_DEFAULTS, "method": "full", "steps": int(steps), "lr": float(lr), "batch_size": int(batch_size),
           "layer_decay": 1.0, "weight_decay": 0.05, "min_lr_ratio": 0.01, "warmup_steps": max(1, steps // 10),
           "eval_every": int(steps), "log_every": max(1, steps // 10)}
    fit(_ClassifierObjective(model), view, cfg, seed)
    model.train()
    return float((predict_classes(model, dataset, train_idx) == labels[train_idx]).mean())


@torch.no_grad()
def predict_classes(model: VolumeClassifier, dataset: MedicalDataset, idx) -> np.ndarray:
    """Class of each volume from its central crop (the deterministic view of a train-mode dataset)."""
    model.eval()
    out = []
    for i in idx:
        out.append(int(model(collate([dataset[int(i) * dataset.k]])).argmax(-1)))
    model.train()
    return np.array(out)


def intensity_features(dataset: MedicalDataset) -> np.ndarray:
    """The classical baseline: per-volume intensity statistics and histogram of the preprocessed volume."""
    rows = []
    for i in range(len(dataset.items)):
        v = _plain(dataset.volume(i)[IMAGE]).float().flatten().numpy()
        q = np.percentile(v, [1, 5, 25, 50, 75, 95, 99])
        h = np.histogram(v, bins=16, range=(0.0, 1.0))[0] / v.size
        rows.append(np.r_[v.mean(), v.std(), q, h])
    return np.array(rows)
