"""Towers of an aligned model: one per modality (a domainfm Encoder) or text (a local transformers model).

A tower = a backbone that gives one feature vector per sample + a projection head to the shared width,
with L2-normalised outputs. The backbone is ``frozen`` (LiT: only the head learns; its features are
cached by sample id, so a grid of folds and seeds never re-encodes them), ``train`` (fully trained) or
``lora`` (peft adapters on the trunk's blocks only: a bare module name such as ``proj`` would also hit
tokenizers and position modules). Each tower carries its own learning rate (``lr``; None = the recipe's).

Text towers load ONLY from a local directory (``local_files_only=True``): nothing is ever downloaded,
and a missing or unreadable directory is one line naming it. :func:`build_tiny_text_tower` writes a
tiny BERT-like model with its WordPiece tokenizer for tests and CPU recipes.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.errors import DomainfmError
from foundation.model import Encoder
from foundation.tokens import PatchBatch
from foundation.trunk import masked_mean, masked_mean_std

MODES = ("frozen", "train", "lora")
# LoRA targets, anchored at the trunk's blocks (full-name regexes, as peft matches them)
ENCODER_LORA_TARGETS = r".*trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
TEXT_LORA_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense)"


def add_lora(module: nn.Module, targets: str, rank: int = 8, alpha: int = 16) -> nn.Module:
    """Inject LoRA adapters (peft) into ``module`` in place at ``targets``; everything else is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    module = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0), module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


HEADS = ("linear", "mlp", "standardized")


class Standardize(nn.Module):
    """Per-feature standardisation with fixed statistics (buffers, saved with the head): a frozen tower's
    features standardised as a probe standardises them, the statistics taken from the training rows'
    features once before the first step (``foundation.align_task.precompute_frozen``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def fit(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Tower(nn.Module):
    """Backbone features -> projection -> L2 norm. Subclasses implement ``backbone_features``."""

    def __init__(self, name: str, feature_dim: int, dim: int, mode: str = "frozen", lr: float | None = None,
                 head: str = "linear") -> None:
        super().__init__()
        if mode not in MODES:
            raise DomainfmError(f"towers.{name}.mode={mode!r} is not one of {', '.join(MODES)}")
        if head not in HEADS:
            raise DomainfmError(f"towers.{name}.head={head!r} is not one of {', '.join(HEADS)}")
        if head == "standardized" and mode != "frozen":
            raise DomainfmError(f"towers.{name}.head=standardized needs mode=frozen (it standardises fixed features)")
        self.name, self.mode, self.lr, self.head_kind = name, mode, lr, head
        self.head = (nn.Linear(feature_dim, dim) if head == "linear" else
                     nn.Sequential(Standardize(feature_dim), nn.Linear(feature_dim, dim)) if head == "standardized" else
                     nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, dim)))
        self.cache: dict[str, Tensor] = {}

    def backbone(self) -> nn.Module:
        raise NotImplementedError

    def backbone_features(self, inputs) -> Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Tower":
        super().train(mode)
        if self.mode == "frozen":
            self.backbone().eval()  # a frozen backbone never runs in training mode (no dropout, fixed features)
        return self

    def features(self, inputs, ids: list[str] | None = None) -> Tensor:
        """Backbone features [B, F]; frozen backbones run without gradient and are cached by id."""
        if self.mode != "frozen":
            return self.backbone_features(inputs)
        if ids is not None and all(i in self.cache for i in ids):
            return torch.stack([self.cache[i] for i in ids]).to(self.head_device())
        with torch.no_grad():
            out = self.backbone_features(inputs).float()
        if ids is not None:
            for i, f in zip(ids, out.detach().cpu()):
                self.cache[i] = f
        return out

    def head_dim(self) -> int:
        return (self.head if isinstance(self.head, nn.Linear) else self.head[-1]).out_features

    def head_device(self) -> torch.device:
        return next(self.head.parameters()).device

    def forward(self, inputs, ids: list[str] | None = None) -> Tensor:
        return F.normalize(self.head(self.features(inputs, ids)).float(), dim=-1)


class EncoderTower(Tower):
    """A domainfm Encoder (any modality), pooled by masked mean (or mean+std) over its tokens."""

    def __init__(self, name: str, encoder: Encoder, dim: int, mode: str = "frozen", lr: float | None = None,
                 pooling: str = "mean", head: str = "linear") -> None:
        if pooling not in ("mean", "meanstd"):
            raise DomainfmError(f"towers.{name}.pooling={pooling!r} is not mean or meanstd")
        super().__init__(name, encoder.width * (2 if pooling == "meanstd" else 1), dim, mode, lr, head)
        self.encoder, self.pooling = encoder, pooling
        if mode == "frozen":
            encoder.requires_grad_(False)
        elif mode == "lora":
            add_lora(encoder, ENCODER_LORA_TARGETS)

    def backbone(self) -> nn.Module:
        return self.encoder

    def backbone_features(self, batch: PatchBatch) -> Tensor:
        enc = self.encoder(batch)
        return (masked_mean if self.pooling == "mean" else masked_mean_std)(enc.tokens, enc.padding)


class FeatureTower(Tower):
    """A tower over precomputed feature vectors [B, F] (embeddings from any model, e.g. another
    tool's): the backbone is the identity, so only the head learns."""

    def __init__(self, name: str, feature_dim: int, dim: int, lr: float | None = None, head: str = "mlp") -> None:
        super().__init__(name, feature_dim, dim, "train", lr, head)
        self.identity = nn.Identity()

    def backbone(self) -> nn.Module:
        return self.identity

    def backbone_features(self, x: Tensor) -> Tensor:
        return x.float()


def load_text_model(directory: str | Path, name: str = "text"):
    """``AutoModel`` + ``AutoTokenizer`` from a LOCAL directory only; one clear line when it cannot be read."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a tiny local tower's unused pooler is not worth a load report

    d = Path(directory) if directory else None
    fix = "point towers.%s.init at a local transformers model directory (config.json + weights + tokenizer); nothing is downloaded" % name
    if d is None or not d.is_dir():
        raise DomainfmError(f"text tower {name!r}: {directory} is not a directory ({fix})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        model = AutoModel.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DomainfmError(f"text tower {name!r}: cannot read {d}: {first} ({fix})") from None
    return model, tokenizer


class TextTower(Tower):
    """A transformers encoder (BERT-like) from a local directory, mean-pooled over real tokens."""

    def __init__(self, name: str, directory: str | Path, dim: int, mode: str = "frozen", lr: float | None = None,
                 max_length: int = 32, head: str = "linear") -> None:
        model, tokenizer = load_text_model(directory, name)
        super().__init__(name, int(model.config.hidden_size), dim, mode, lr, head)
        self.model, self.tokenizer, self.max_length, self.directory = model, tokenizer, max_length, str(directory)
        if getattr(model, "pooler", None) is not None:
            model.pooler.requires_grad_(False)  # unused (we mean-pool); a trainable unused part would stall DDP's buckets
        if mode == "frozen":
            model.requires_grad_(False)
        elif mode == "lora":
            add_lora(model, TEXT_LORA_TARGETS)

    def backbone(self) -> nn.Module:
        return self.model

    def backbone_features(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        tok = {k: v.to(device) for k, v in tok.items()}
        hidden = self.model(**tok).last_hidden_state
        return masked_mean(hidden, tok["attention_mask"] == 0)

    def forward(self, texts: list[str], ids: list[str] | None = None) -> Tensor:
        return super().forward(texts, ids if ids is not None else list(texts))  # a text is its own cache key


def build_tiny_text_tower(out_dir: str | Path, texts: list[str], width: int = 64, depth: int = 2, heads: int = 2,
                          vocab_size: int = 200, seed: int = 0) -> Path:
    """Write a tiny BERT-like model (random weights) and a WordPiece tokenizer trained on ``texts`` to
    ``out_dir``, loadable with ``AutoModel``/``AutoTokenizer`` and ``local_files_only=True``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(str(out_dir))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                        intermediate_size=4 * width, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(out_dir))
    (out_dir / "domainfm_text_tower.json").write_text(json.dumps({"built_from_texts": len(texts), "seed": seed}))
    return out_dir
