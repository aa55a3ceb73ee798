"""The Transformer trunk shared by encoder, MAE decoder and JEPA predictor (timm-style blocks).

Attention goes through ``F.scaled_dot_product_attention``. Padding and structure enter as one
additive float mask built in :func:`attention_mask`, the single place where "True = padding" (our
contract) is turned into SDPA's convention. A batch known to hold no padding (``padding=None``) and
no structure bias gets no mask at all: SDPA may then pick its flash kernels, which take no mask.

``checkpoint_activations`` recomputes each block's activations in the backward pass instead of
storing them (for 3-d volumes, whose token counts make activations the largest memory cost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN attention builds an execution plan for every new sequence length. Masked objectives and
# ragged batches change lengths every step (JEPA's context blocks, padded clips and graphs), so on an
# H200 it made a JEPA step 6x slower than the memory-efficient kernel (benchmarks/results/
# core_throughput_cuda.json). These backends take any length at no planning cost.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_mask(padding: Tensor, bias: Tensor | None = None, heads: int = 1) -> Tensor:
    """[B, N] padding (+ optional [B, H|1, N, N] additive bias) -> additive mask [B, H|1, N, N].

    Padded keys get -inf; rows of padded queries stay finite because the register token is never
    padded, so every row keeps at least one key.
    """
    keep = torch.zeros(padding.shape, dtype=torch.float32, device=padding.device).masked_fill(padding, float("-inf"))
    mask = keep[:, None, None, :]
    if bias is not None:
        mask = mask + bias.float()
    return mask


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if mask is not None:
            mask = mask.to(q.dtype)
        with sdpa_kernel(SDPA_BACKENDS):
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads, qkv_bias)
        self.norm2, self.mlp = nn.LayerNorm(width), Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks with a final norm. ``bias_buckets`` > 0 learns a per-head additive bias for
    each integer structure code (graph distance, edge type), one table per block."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, bias_buckets: int = 0,
                 checkpoint_activations: bool = False) -> None:
        super().__init__()
        self.width, self.depth, self.heads = width, depth, heads
        self.checkpoint_activations = checkpoint_activations
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.bias_tables = nn.ModuleList(nn.Embedding(bias_buckets, heads) for _ in range(depth)) if bias_buckets else None
        self.apply(_init_weights)

    def forward(self, x: Tensor, padding: Tensor | None, bias: Tensor | None = None, return_layers: bool = False):
        """x [B, N, D]; padding [B, N], or None when the caller knows no token is padding;
        bias: float [B, N, N] or integer codes [B, N, N]."""
        base = attention_mask(padding) if padding is not None else None
        float_bias = bias.unsqueeze(1).float() if bias is not None and bias.is_floating_point() else None
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        layers = []
        for i, blk in enumerate(self.blocks):
            mask = _add(base, float_bias)
            if self.bias_tables is not None and bias is not None and not bias.is_floating_point():
                mask = _add(base, self.bias_tables[i](bias.long()).permute(0, 3, 1, 2))
            x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False) if recompute else blk(x, mask)
            if return_layers:
                layers.append(x)
        x = self.norm(x)
        return (x, layers) if return_layers else x


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a + b


def set_activation_checkpointing(model: nn.Module, on: bool = True) -> int:
    """Switch activation checkpointing on every trunk inside ``model`` (encoder, decoder, predictor);
    returns how many trunks were switched. A training choice, so it is not part of any saved config."""
    trunks = [m for m in model.modules() if isinstance(m, Transformer)]
    for t in trunks:
        t.checkpoint_activations = on
    return len(trunks)


def compile_trunks(model: nn.Module, **kwargs) -> int:
    """``torch.compile`` every block of every trunk in ``model``, in place (regional compilation).

    Blocks are where the FLOPs are and they are free of host syncs, while masking and gathering
    around them read counts back to the host; compiling blocks keeps those outside the graph, compiles
    one block shape once for all depths, and lets dynamo mark the token axis dynamic after the second
    length it sees (varying visible counts). Parameter names are unchanged, so checkpoints and exports
    do not notice. Returns the number of blocks compiled."""
    blocks = [b for m in model.modules() if isinstance(m, Transformer) for b in m.blocks]
    for b in blocks:
        b.compile(**kwargs)
    return len(blocks)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.zeros_(m.weight)


def masked_mean(x: Tensor, padding: Tensor) -> Tensor:
    w = (~padding).unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


def masked_std(x: Tensor, padding: Tensor) -> Tensor:
    """Std over real tokens. The variance is floored before the square root: a sample with one token
    (a one-node graph) or identical tokens has variance 0, where sqrt's gradient is infinite and turns
    every parameter NaN after one step of a supervised head."""
    w = (~padding).unsqueeze(-1).to(x.dtype)
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
    return ((((x - mean) ** 2) * w).sum(1) / w.sum(1).clamp(min=1)).clamp(min=1e-12).sqrt()


def masked_mean_std(x: Tensor, padding: Tensor) -> Tensor:
    """[B, 2D]: mean and std over real tokens, the pooling probes and supervised heads share."""
    return torch.cat([masked_mean(x, padding), masked_std(x, padding)], -1)


def masked_max(x: Tensor, padding: Tensor) -> Tensor:
    return x.masked_fill(padding.unsqueeze(-1), float("-inf")).amax(1)


def masked_max_mean(x: Tensor, padding: Tensor) -> Tensor:
    """[B, 2D]: max and mean over real tokens, Point-MAE's readout (contrastive views, point-cloud heads)."""
    return torch.cat([masked_max(x, padding), masked_mean(x, padding)], -1)


class AttentivePool(nn.Module):
    """A learned query cross-attending over valid tokens (attentive probing, as V-JEPA does)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        out, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, key_padding_mask=padding)
        return out[:, 0]
