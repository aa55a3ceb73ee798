"""The encoder every objective trains and every downstream use loads: tokenizer + positions +
register token + trunk. One class with the same parameter names in pretraining, fine-tuning and
export, loaded strictly from safetensors (never unpickled).
"""
from __future__ import annotations

import json
import sys
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from foundation.masking import Visible
from foundation.positions import make_positions
from foundation.tokens import PatchBatch, gather_bias, gather_tokens
from foundation.trunk import Transformer, masked_max, masked_mean, masked_mean_std
from foundation.errors import DomainfmError
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


def pool(enc: Encoded, name: str) -> Tensor:
    """One pooling of an encoding made with ``return_layers=True`` (``mid_meanstd``: the middle block's
    layer-normed tokens, where the benchmarks found frozen features best for speech and EO)."""
    if name == "mean":
        return masked_mean(enc.tokens, enc.padding)
    if name == "meanstd":
        return masked_mean_std(enc.tokens, enc.padding)
    if name == "max":
        return masked_max(enc.tokens, enc.padding)
    if name == "cls":
        return enc.register
    normed = [nn.functional.layer_norm(h, h.shape[-1:]) for h in [enc.inputs, *enc.layers]]
    if name == "mid_meanstd":
        return masked_mean_std(normed[1 + len(enc.layers) // 2], enc.padding)
    if name == "layers_meanstd":  # every depth, trunk input included (what an early layer keeps, e.g. spectra, stays readable)
        return torch.cat([masked_mean_std(h, enc.padding) for h in normed], -1)
    raise ValueError(f"unknown pooling {name!r}; choose from {list(POOLINGS)}")


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
    def pooled(self, batch: PatchBatch, names: tuple[str, ...] = POOLINGS) -> dict[str, Tensor]:
        """Frozen features under several poolings; probes pick one by inner cross-validation."""
        enc = self(batch, return_layers=True)
        return {name: pool(enc, name) for name in names}

    # -- I/O ---------------------------------------------------------------------------------------
    def export_config(self) -> dict:
        return {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "modality": self.adapter.name,
            "adapter": self.adapter.preprocessing(),
            "encoder": dict(self.config),
        }

    def save_pretrained(self, out_dir: str | Path, extra: dict | None = None, modules: dict[str, nn.Module] | None = None,
                        card: str | None = None, files: dict[str, Path] | None = None) -> Path:
        """Write config.json, model.safetensors (this encoder) and a model card, atomically (temp dir, then rename).

        ``modules`` adds named parts beside the encoder (``head``, ``towers.<name>``, ``projection.<name>``), each in
        ``<name>.safetensors`` and listed in config.json's ``modules``, so :func:`load_module` reads each strictly.
        ``files`` copies further artefacts in (``model.onnx``, ``golden/``...). Every file is left readable under the
        user's umask, as any other file they write (safetensors alone would leave 0600).
        """
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        modules = dict(modules or {})
        config = {**self.export_config(), **(extra or {})}
        config["modules"] = {"encoder": WEIGHTS, **{name: f"{name}.safetensors" for name in modules}}
        config["weights_sha256"] = write_weights(tmp / WEIGHTS, self.state_dict())
        for name, module in modules.items():
            write_weights(tmp / f"{name}.safetensors", module.state_dict())
        for name, src in (files or {}).items():
            (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, tmp / name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "README.md").write_text(card if card is not None else model_card(config))
        readable_under_umask(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, map_location: str = "cpu") -> "Encoder":
        model_dir = Path(model_dir)
        config = read_config(model_dir)
        adapter = adapter_from_config(config["modality"], config["adapter"])
        model = cls(adapter, **config["encoder"])
        load_strict(model, model_dir / WEIGHTS, map_location)
        return model.eval()


WEIGHTS = "model.safetensors"


class ExportError(DomainfmError, ValueError):
    """An export that cannot be read as asked (a ValueError too, as callers caught before)."""


def read_config(model_dir: str | Path) -> dict:
    """An export's config.json, refused with a message when it is not one this domainfm can read."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise ExportError(f"{model_dir} is not an exported model: no config.json (export one with `domainfm export RUN_DIR {model_dir}`)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{cfg_path}: not valid JSON ({err}); export the run again with `domainfm export RUN_DIR OUT_DIR`") from err
    if config.get("model_type") != MODEL_TYPE:
        raise ExportError(f"{cfg_path}: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{cfg_path}: format_version {config.get('format_version')} cannot be read by this domainfm "
                            f"(reads {FORMAT_VERSION}); export the run again with this version")
    return config


def umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_under_umask(path: Path) -> None:
    """Give ``path`` (and everything under it) the modes a plain ``open`` would: 0666 & ~umask for files,
    0777 & ~umask for folders, so teammates read an export as they read the user's other files."""
    mask = umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_weights(path: Path, state: dict[str, Tensor]) -> str:
    """Save a state dict as safetensors; returns its sha256 (recorded in config.json and every embedding file)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


PICKLE_HINT = ("domainfm loads only safetensors and never unpickles; re-save the weights with "
               "safetensors.torch.save_file(state_dict, PATH) or export the run with `domainfm export RUN_DIR OUT_DIR`")


def read_weights(path: str | Path, map_location: str = "cpu") -> dict[str, Tensor]:
    """A safetensors file's tensors. A pickle (``torch.save``'s zip or a bare pickle) put in its place is
    named as one instead of surfacing safetensors' "header too large"."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: weights file not found (export the model again with `domainfm export RUN_DIR OUT_DIR`)")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] != b"{" and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # safetensors: u64 length, then JSON
        kind = "a torch.save zip archive (a pickle)" if head[:2] == b"PK" else "a pickle"
        raise ExportError(f"{path}: this is {kind}, not safetensors; {PICKLE_HINT}")
    try:
        return load_file(str(path), device=map_location)
    except SafetensorError as err:
        raise ExportError(f"{path}: not a readable safetensors file ({err}); {PICKLE_HINT}") from err


def load_strict(module: nn.Module, path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Load ``path`` into ``module``; a missing or unexpected weight is an error naming the file and the keys."""
    state = read_weights(path, map_location)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not match the model built from config.json (missing {sorted(missing)[:5]}"
                            f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
                            f"{'...' if len(unexpected) > 5 else ''}); export the run again")
    return module


def load_module(model_dir: str | Path, name: str, module: nn.Module, map_location: str = "cpu") -> nn.Module:
    """Load the named part of an export (``encoder``, ``head``, ``towers.<name>``...) into ``module``, strictly."""
    config = read_config(model_dir)
    files = config.get("modules", {"encoder": WEIGHTS})
    if name not in files:
        raise ExportError(f"{model_dir}: holds no module {name!r}; it holds {sorted(files)}")
    return load_strict(module, Path(model_dir) / files[name], map_location)


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


if "transformers" in sys.modules and "foundation.hf" not in sys.modules:  # see foundation/__init__.py
    import foundation.hf  # noqa: E402,F401  (registers exports with AutoConfig/AutoModel)
