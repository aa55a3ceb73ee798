"""transformers loading of domainfm exports: after ``import foundation``,
``AutoConfig.from_pretrained(EXPORT)`` and ``AutoModel.from_pretrained(EXPORT)`` give the exported encoder.

The model holds the encoder's modules under the same names as ``model.safetensors`` (tokenizer, positions,
register, trunk), so transformers reads the file as it is, and the forward is the encoder's own
(:class:`foundation.export.PortableEncoder`'s inputs and outputs). Missing or unexpected weights are an error, not
transformers' warning. Tested with transformers 5 (pinned ``>=5,<6`` in pyproject.toml).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from foundation.errors import DomainfmError
from foundation.model import MODEL_TYPE, Encoder, pool
from foundation.tokens import PatchBatch
from modalities.base import adapter_from_config


class DomainfmConfig(PretrainedConfig):
    """config.json of an export, as transformers sees it (every key kept as an attribute)."""

    model_type = MODEL_TYPE

    def __init__(self, modality: str = "grid", adapter: dict | None = None, encoder: dict | None = None,
                 pooling: str = "mean", **kwargs) -> None:
        self.modality, self.adapter, self.encoder, self.pooling = modality, adapter or {}, encoder or {}, pooling
        super().__init__(**kwargs)


class DomainfmModel(PreTrainedModel):
    """The exported encoder as a transformers model: ``model(patches, coords, padding, meta, attn_bias)``
    returns ``last_hidden_state`` (tokens, [B, N, D]) and ``pooler_output`` (the export's recommended pooling)."""

    config_class = DomainfmConfig
    base_model_prefix = ""
    main_input_name = "patches"

    def __init__(self, config: DomainfmConfig) -> None:
        super().__init__(config)
        encoder = Encoder(adapter_from_config(config.modality, config.adapter), **config.encoder)
        self.adapter, self.bias_buckets = encoder.adapter, encoder.bias_buckets
        # the encoder's own children, so parameter names are model.safetensors' names
        self.tokenizer, self.positions, self.register, self.trunk = encoder.tokenizer, encoder.positions, encoder.register, encoder.trunk
        self.post_init()

    def _init_weights(self, module) -> None:
        """Weights come from the export (the encoder initialised itself when built)."""

    encode = Encoder.forward  # the encoder's forward, on the same attribute names

    def forward(self, patches: Tensor, coords: Tensor, padding: Tensor, meta: dict[str, Tensor] | None = None,
                attn_bias: Tensor | None = None, pooling: str | None = None) -> BaseModelOutputWithPooling:
        batch = PatchBatch(patches, coords, padding, patches, padding, meta or {}, [], attn_bias=attn_bias)
        enc = self.encode(batch, return_layers=True)
        return BaseModelOutputWithPooling(last_hidden_state=enc.tokens, pooler_output=pool(enc, pooling or self.config.pooling))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, with missing, unexpected or mismatched weights raised instead of logged."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise DomainfmError(f"{Path(pretrained_model_name_or_path) / 'model.safetensors'}: weights do not match config.json "
                                f"({', '.join(f'{k}: {v[:5]}' for k, v in bad.items())}); export the run again")
        restore_computed_buffers(model)
        model.eval()
        return (model, info) if want_info else model


def restore_computed_buffers(model: DomainfmModel) -> None:
    """Non-persistent buffers (the earth tokenizer's wavelength frequencies, the medical patch extent) are not in
    model.safetensors; transformers builds the model on the meta device and leaves them unset, so they are
    recomputed by building the encoder once more (the 0.3 difference an AutoModel check found on earth)."""
    fresh = Encoder(model.adapter, **model.config.encoder)
    saved = set(fresh.state_dict())
    for name, buf in fresh.named_buffers():
        if name not in saved:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buf.to(next(model.parameters()).device)


AutoConfig.register(MODEL_TYPE, DomainfmConfig, exist_ok=True)
AutoModel.register(DomainfmConfig, DomainfmModel, exist_ok=True)


def automodel_outputs(model_dir: str | Path, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """(pooled, tokens) of ``AutoModel.from_pretrained(model_dir)`` on patch tensors (export verification)."""
    model = AutoModel.from_pretrained(str(model_dir))
    with torch.no_grad():
        out = model(*args, **kwargs)
    return out.pooler_output, out.last_hidden_state
