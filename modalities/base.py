"""The adapter protocol: what a modality must provide for the core to pretrain, probe and export it.

An adapter *knows its data* (files, preprocessing, how a sample becomes tokens) and owns the only
learnable part that sees raw values, the token-local tokenizer. The core knows nothing else.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from foundation.grid import masked_mse
from foundation.inputs import InputPolicy
from foundation.masking import sample_mask as core_sample_mask
from foundation.recipes import check_settings
from foundation.tokens import PatchBatch, SampleTokens

log = logging.getLogger(__name__)

# name -> "module:Class"; imported lazily so a missing optional stack only affects its own modality.
ADAPTERS: dict[str, str] = {
    "grid": "modalities.grid.adapter:GridAdapter",
    "speech": "modalities.speech.adapter:SpeechAdapter",
    "medical": "modalities.medical.adapter:MedicalAdapter",
    "earth": "modalities.earth.adapter:EarthAdapter",
    "pointcloud": "modalities.pointcloud.adapter:PointCloudAdapter",
    "graph": "modalities.graph.adapter:GraphAdapter",
}


def register_adapter(name: str, target: str) -> None:
    """Make a third-party adapter ("package.module:Class") available to recipes and exported models."""
    ADAPTERS[name] = target


def adapter_class(name: str) -> type["Adapter"]:
    if name not in ADAPTERS:
        raise ValueError(f"unknown modality {name!r}; known: {sorted(ADAPTERS)}")
    module, cls = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def adapter_from_config(name: str, config: dict) -> "Adapter":
    return adapter_class(name)(config)


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that depends only on (seed, epoch, index).

    Augmentation draws from a generator seeded with it, so a sample looks the same whichever worker
    loads it and whether or not the run was resumed: exact resume needs no worker RNG state.
    """
    h = hashlib.blake2b(f"{base_seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


class TokenDataset(Dataset, ABC):
    """A map-style dataset of :class:`SampleTokens`.

    ``dataset[i]`` gives the deterministic (evaluation) view; ``dataset[(i, seed)]`` the augmented
    training view drawn from a generator seeded with ``seed``. Subclasses implement :meth:`sample`.
    """

    classes: list[str] = []

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def sample(self, index: int, rng: torch.Generator | None) -> SampleTokens:
        """Return sample ``index``; ``rng`` is None for the deterministic evaluation view."""

    def label(self, index: int) -> int | None:
        """The class of sample ``index`` without loading it (few-shot splits need all labels fast)."""
        return None

    # -- the bad-input policy's counts, for datasets that read files through ``self.inputs`` ----------
    inputs: InputPolicy
    _header_skips: int = 0

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every input skipped under ``data.on_error=skip``, each once."""
        return self.inputs.skipped_items()

    def headers_checked(self) -> None:
        """Call once every input's header has been checked: later skips are counted as read failures."""
        self._header_skips = len(self.inputs.skipped)

    @property
    def read_failures(self) -> int:
        """Inputs that passed the header checks but failed when their data were read."""
        return len(self.inputs.skipped) - self._header_skips

    def __getitem__(self, key: int | tuple[int, int]) -> SampleTokens:
        if isinstance(key, tuple):
            index, seed = key
            return self.sample(int(index), torch.Generator().manual_seed(int(seed)))
        return self.sample(int(key), None)


class Adapter(ABC):
    """Base class of every modality adapter.

    ``config`` is the adapter's full preprocessing (it is stored in an exported model's
    ``config.json`` and must be enough to rebuild the adapter with no code from the training run).
    Subclasses set ``defaults``; unknown keys are refused so typos do not silently do nothing, and a value of
    another kind than its default (text for a number) is refused naming ``adapter.<key>``.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    position_kind: ClassVar[str] = "sincos"
    # the masking a recipe gets when it sets none (``foundation.recipes.modality_defaults``); the one
    # place a modality's masking is stated
    default_masking: ClassVar[dict[str, Any]] = {"kind": "random"}
    # >0: ``attn_bias`` holds integer structure codes in [0, buckets) (e.g. clipped shortest-path
    # distance); the trunk learns one additive bias per code and head. 0: float bias or none.
    attn_bias_buckets: ClassVar[int] = 0
    # mask kinds this adapter adds to the core's (random, block, tube, span); see ``mask_scores``
    mask_kinds: ClassVar[tuple[str, ...]] = ()
    # the poolings ``foundation.evaluate.few_label_report`` chooses among by inner CV: the encoder's
    # own, plus any that this adapter's ``feature_model`` adds (it may also offer fewer)
    probe_poolings: ClassVar[tuple[str, ...]] = ("meanstd", "mid_meanstd", "max")

    def __init__(self, config: dict | None = None) -> None:
        config = check_settings("adapter", self.defaults, dict(config or {}))  # the check recipes and overrides get
        self.config = {**copy.deepcopy(self.defaults), **config}

    # -- shapes the core needs to build a model ------------------------------------------------
    @property
    @abstractmethod
    def patch_dim(self) -> int:
        """P: values per token as the tokenizer receives them."""

    @property
    def target_dim(self) -> int:
        """T: values per token the MAE decoder predicts (by default the patch itself)."""
        return self.patch_dim

    @property
    @abstractmethod
    def coord_dims(self) -> int:
        """C: coordinate dimensions per token."""

    # -- data ------------------------------------------------------------------------------------
    @abstractmethod
    def dataset(self, data: dict, train: bool) -> TokenDataset:
        """A dataset over ``data`` (root/manifest/labels and adapter keys) with this preprocessing."""

    def fit(self, dataset: TokenDataset) -> None:
        """Compute data statistics (normalisation) on the training data and store them in ``config``."""

    @abstractmethod
    def synthetic(self, out_dir: str | Path, n: int, seed: int = 0) -> dict:
        """Write a small realistic labelled dataset of files; return the ``data`` keys that read it."""

    # -- model parts -----------------------------------------------------------------------------
    @abstractmethod
    def make_tokenizer(self, width: int) -> nn.Module:
        """A token-local module: ``forward(patches [B, M, P], meta: dict) -> [B, M, width]``."""

    def reconstruction_loss(self, pred: Tensor, targets: Tensor, target_valid: Tensor, mask: Tensor) -> Tensor:
        """MAE loss on masked tokens' valid targets; override for set losses such as Chamfer."""
        return masked_mse(pred, targets, target_valid, mask)

    def mask_scores(self, kind: str, coords: Tensor, padding: Tensor, attn_bias: Tensor | None,
                    generator: torch.Generator | None, **kwargs) -> Tensor:
        """Token scores [B, N] for an adapter-specific mask kind (the lowest are hidden), for
        structure the coordinates do not carry, such as hop distance in a graph."""
        raise ValueError(f"{self.name} adapter has no mask kind {kind!r}; it offers {list(self.mask_kinds)}")

    def sample_mask(self, batch: PatchBatch, masking: dict, generator: torch.Generator | None) -> Tensor:
        """The core's MAE-style mask for ``batch`` (True = hidden), with this adapter's own kinds
        (``mask_scores``) available beside the core's; every masked objective draws its masks here."""
        def scores(kind, coords, padding, g, **kw):
            return self.mask_scores(kind, coords, padding, batch.attn_bias, g, **kw)

        return core_sample_mask(batch.coords, batch.padding, generator=generator, scores=scores, **masking)

    def view_augment(self, batch: PatchBatch, generator: torch.Generator | None) -> PatchBatch:
        """A freshly augmented view of a whole batch, on the device (contrastive pretraining calls it
        once per view so the two views of a sample differ by more than their masks). Default: the
        batch unchanged; adapters whose augmentation can act on tokens (point clouds: rotate and
        scale patches and centres together) override it."""
        return batch

    def feature_model(self, encoder: nn.Module, dataset: TokenDataset) -> nn.Module:
        """What ``foundation.embed.embed_dataset`` calls ``pooled`` on to get ``dataset``'s frozen
        features. Default: the encoder itself. An adapter may wrap it to embed several views of each
        sample and concatenate them (earth: all bands and the finest-resolution bands)."""
        return encoder

    # -- dense tasks (``finetune.task=segmentation``; see foundation/dense.py) ---------------------
    def dense_dataset(self, data: dict, train: bool) -> TokenDataset:
        """A dataset whose samples carry ``dense`` targets [N, D] (one label per element a token covers,
        -1 for none) read from ``data.masks``, with ``dense_classes`` naming the classes."""
        from foundation.dense import DenseTaskError

        raise DenseTaskError(f"the {self.name} adapter has no dense task; finetune.task=segmentation serves "
                             "medical, earth and pointcloud encoders")

    def dense_head(self, encoder: nn.Module, classes: int) -> nn.Module:
        """The dense task's head: ``forward(enc, batch) -> logits [B, N, D, classes]`` (an attribute
        ``needs_layers = True`` asks for every encoder layer)."""
        from foundation.dense import DenseTaskError

        raise DenseTaskError(f"the {self.name} adapter has no dense head")

    def write_dense(self, dataset: TokenDataset, predictions, out_dir: Path, names: list[str]):
        """Write each ``(index, class indices [n, D])`` of ``predictions`` in the sample's source geometry
        under ``out_dir`` (``names``: the fine-tuned model's classes); yield ``(index, written file)``."""
        from foundation.dense import DenseTaskError

        raise DenseTaskError(f"the {self.name} adapter cannot write dense predictions")

    def preprocessing(self) -> dict:
        """What travels with an exported encoder: the full adapter config."""
        return copy.deepcopy(self.config)
