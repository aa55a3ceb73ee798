"""The encoder every objective trains and every downstream use loads: tokenizer + positions +
register token + trunk. One class with the same parameter names in pretraining, fine-tuning and
export, loaded strictly from safetensors (never unpickled).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from foundation.masking import Visible
from foundation.positions import make_positions
from foundation.tokens import PatchBatch, gather_bias, gather_tokens
from foundation.trunk import Transformer, masked_max, masked_mean, masked_mean_std
from modalities.base import Adapter, adapter_from_config

MODEL_TYPE = "domainfm-encoder"
FORMAT_VERSION = 1
ENCODER_KEYS = {"width": 192, "depth": 6, "heads": 3, "mlp_ratio": 4.0, "qkv_bias": True}
POOLINGS = ("mean", "meanstd", "max", "cls", "mid_meanstd", "layers_meanstd")


@dataclass
class Encoded:
    tokens: Tensor  # [B, M, D] final-norm outputs of the kept tokens (register token removed)
    register: Tensor  # [B, D] the register/CLS token
    padding: Tensor  # [B, M]
    layers: list[Tensor] | None = None  # per-block outputs [B, M, D] (register removed)
    inputs: Tensor | None = None  # with layers: the trunk's input [B, M, D] (tokenizer output plus positions)


def with_register_bias(bias: Tensor | None, buckets: int) -> Tensor | None:
    """Give the register token a row and column in the structure bias: zero for float biases,
    its own code (``buckets``) for integer codes."""
    if bias is None:
        return None
    b, n, _ = bias.shape
    fill = 0 if bias.is_floating_point() else buckets
    out = bias.new_full((b, n + 1, n + 1), fill)
    out[:, 1:, 1:] = bias
    return out


class Encoder(nn.Module):
    def __init__(self, adapter: Adapter, width: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.adapter = adapter
        self.config = {"width": width, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias}
        self.tokenizer = adapter.make_tokenizer(width)
        self.positions = make_positions(adapter.position_kind, adapter.coord_dims, width)
        self.register = nn.Parameter(torch.zeros(1, 1, width))
        self.bias_buckets = adapter.attn_bias_buckets
        self.trunk = Transformer(width, depth, heads, mlp_ratio, qkv_bias, bias_buckets=self.bias_buckets + 1 if self.bias_buckets else 0)
        nn.init.trunc_normal_(self.register, std=0.02)

    @classmethod
    def build(cls, adapter: Adapter, model_cfg: dict) -> "Encoder":
        return cls(adapter, **{k: model_cfg[k] for k in ENCODER_KEYS if k in model_cfg})

    @property
    def width(self) -> int:
        return self.config["width"]

    def forward(self, batch: PatchBatch, keep: Visible | None = None, replace: Tensor | None = None,
                replacement: Tensor | None = None, return_layers: bool = False) -> Encoded:
        """Encode the kept tokens only (all tokens when ``keep`` is None).

        The tokenizer is called on the gathered visible patches, so hidden tokens cost nothing.
        ``replace`` [B, N] swaps the tokenizer output of those tokens for ``replacement`` [1, 1, D], the
        objective's learned mask embedding (GraphMAE-style: masked tokens stay in the trunk with their
        structure and position, not their values).
        """
        if keep is None:
            patches, coords, padding, bias = batch.patches, batch.coords, batch.padding, batch.attn_bias
            padded = batch.has_padding
        else:
            patches, coords = gather_tokens(batch.patches, keep.index), gather_tokens(batch.coords, keep.index)
            padding, padded = keep.padding, keep.has_padding
            bias = gather_bias(batch.attn_bias, keep.index) if batch.attn_bias is not None else None
        x = self.tokenizer(patches, batch.meta)
        if replace is not None:
            rep = replace if keep is None else gather_tokens(replace, keep.index)
            x = torch.where(rep.unsqueeze(-1), replacement.to(x.dtype), x)
        x = x + self.positions(coords).to(x.dtype)
        x = torch.cat([self.register.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        pad = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], 1) if padded else None  # None: no mask, flash kernels allowed
        out = self.trunk(x, pad, with_register_bias(bias, self.bias_buckets), return_layers=return_layers)
        if return_layers:
            out, layers = out
            return Encoded(out[:, 1:], out[:, 0], padding, [h[:, 1:] for h in layers], x[:, 1:])
        return Encoded(out[:, 1:], out[:, 0], padding)

    @torch.no_grad()
    def pooled(self, batch: PatchBatch) -> dict[str, Tensor]:
        """Frozen features under several poolings; probes pick one by inner cross-validation."""
        enc = self(batch, return_layers=True)
        normed = [nn.functional.layer_norm(h, h.shape[-1:]) for h in [enc.inputs, *enc.layers]]
        mid = normed[1 + len(enc.layers) // 2]
        return {
            "mean": masked_mean(enc.tokens, enc.padding),
            "meanstd": masked_mean_std(enc.tokens, enc.padding),
            "max": masked_max(enc.tokens, enc.padding),
            "cls": enc.register,
            "mid_meanstd": masked_mean_std(mid, enc.padding),
            # every depth, trunk input included (what an early layer keeps, e.g. spectra, stays readable)
            "layers_meanstd": torch.cat([masked_mean_std(h, enc.padding) for h in normed], -1),
        }

    # -- I/O ---------------------------------------------------------------------------------------
    def export_config(self) -> dict:
        return {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "modality": self.adapter.name,
            "adapter": self.adapter.preprocessing(),
            "encoder": dict(self.config),
        }

    def save_pretrained(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write config.json, model.safetensors and a model card, atomically (temp dir, then rename)."""
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = {**self.export_config(), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "README.md").write_text(model_card(config))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, map_location: str = "cpu") -> "Encoder":
        model_dir = Path(model_dir)
        cfg_path = model_dir / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{model_dir} is not an exported encoder: no config.json")
        config = json.loads(cfg_path.read_text())
        if config.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{cfg_path}: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format_version {config.get('format_version')} cannot be read by this domainfm (reads {FORMAT_VERSION})")
        adapter = adapter_from_config(config["modality"], config["adapter"])
        model = cls(adapter, **config["encoder"])
        model.load_state_dict(load_file(str(model_dir / "model.safetensors"), device=map_location), strict=True)
        return model.eval()


def model_card(config: dict) -> str:
    enc = config["encoder"]
    return (
        f"# domainfm encoder ({config['modality']})\n\n"
        f"Transformer encoder, width {enc['width']}, depth {enc['depth']}, {enc['heads']} heads"
        f"{', pretrained with ' + config['objective'].upper() if config.get('objective') else ''}.\n\n"
        "Load it and embed raw files with the preprocessing it was trained with:\n\n"
        "    domainfm embed THIS_DIR DATA --out embeddings.npz\n\n"
        "or in Python: `Encoder.from_pretrained(THIS_DIR)`. The preprocessing is in `config.json` under `adapter`.\n"
    )
