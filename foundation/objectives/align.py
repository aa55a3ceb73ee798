"""Cross-modal alignment losses (CLIP's symmetric InfoNCE, SigLIP's sigmoid loss), open_clip loss.py style.

Every process scores ITS rows against the columns of the WHOLE global batch (the "local loss"): the
other processes' embeddings arrive through :func:`gather_with_grad`, an all-gather whose backward sums
the gradient every process computed for each block and hands each process back its own block. With
DDP's gradient averaging this gives exactly the gradient of the single-process loss on the global
batch (``tests/integration/test_align_distributed.py`` checks it, with a plain all-gather as the
negative control: Accelerate's ``gather`` carries no gradient, so the towers would learn from their
local block only).

Multi-positive targets: rows that share a key (the same class text, the same label) are all positives
of each other, and a row's loss is ``-log`` of the probability mass its positives get together (the
SupCon "sum of positives" form). CLIP's ``arange`` targets ask each row to pick ONE of k identical class
texts, which caps its probability at 1/k: that loss can never go below ``mean log k`` over the batch
(:func:`arange_floor`), and pushes same-class rows apart trying. The multi-positive loss goes to 0.

The temperature is learnable per pair type (``"speech|text"``), stored as a log scale clamped to
``[log 1, log 100]`` in the forward (as CLIP does); it is a 0-d parameter, so the engine puts it
in the no-weight-decay group. SigLIP's bias exists only in SigLIP mode.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

MAX_LOGIT_SCALE = math.log(100.0)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward: sum every process's gradient for the gathered tensor, keep
    this process's block (gloo has no reduce_scatter, so an all-reduce and a slice do it)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world, rank = _world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Every process's ``x`` [b, ...] concatenated in rank order [world * b, ...], with gradients
    flowing back to each process's own block (identity on one process)."""
    world, _ = _world()
    return x if world == 1 else _GatherWithGrad.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """A plain all-gather (what ``accelerator.gather`` does): no gradient reaches any block. Exists as
    the negative control of the distributed test and for gathering keys, which need none."""
    world, _ = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def positives(keys_rows: Tensor | None, keys_cols: Tensor | None, rows: int, cols: int, offset: int, device) -> Tensor:
    """[rows, cols] bool: True where row i and column j are a positive pair. Without keys a row's only
    positive is its own column (``offset + i``); with keys, every column with the same key."""
    if keys_rows is None:
        pos = torch.zeros(rows, cols, dtype=torch.bool, device=device)
        pos[torch.arange(rows, device=device), offset + torch.arange(rows, device=device)] = True
        return pos
    return keys_rows[:, None] == keys_cols[None, :]


def arange_floor(keys: Tensor | None) -> float:
    """The lowest value CLIP's ``arange``-target InfoNCE can take on a batch with these keys: the mean of
    log(number of rows sharing a row's key), 0 when all keys differ. The multi-positive loss has no floor."""
    if keys is None:
        return 0.0
    counts = (keys[:, None] == keys[None, :]).sum(1).double()
    return float(counts.log().mean())


def multi_positive_nll(logits: Tensor, pos: Tensor) -> Tensor:
    """Mean over rows of -log(sum of the softmax over the row's positives); cross-entropy when each row has one."""
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)).mean()


class AlignLoss(nn.Module):
    """Symmetric InfoNCE (``kind="infonce"``) or SigLIP (``kind="siglip"``) over L2-normalised
    embeddings of two towers; one learnable temperature (and, for SigLIP, bias) per pair type."""

    def __init__(self, pair_types: list[str], kind: str = "infonce", init_temperature: float | None = None,
                 init_bias: float = -10.0, gather: str = "grad") -> None:
        super().__init__()
        if kind not in ("infonce", "siglip"):
            raise ValueError(f"align loss kind {kind!r} is not infonce or siglip")
        self.kind = kind
        t0 = init_temperature if init_temperature is not None else (0.07 if kind == "infonce" else 0.1)
        self.logit_scale = nn.ParameterDict({self._key(p): nn.Parameter(torch.tensor(math.log(1 / t0))) for p in pair_types})
        self.logit_bias = (nn.ParameterDict({self._key(p): nn.Parameter(torch.tensor(float(init_bias))) for p in pair_types})
                           if kind == "siglip" else None)
        self._gather = {"grad": gather_with_grad, "none": gather_no_grad}[gather]

    @staticmethod
    def _key(pair_type: str) -> str:
        return pair_type.replace("|", "__").replace(".", "_")  # ParameterDict keys may not hold dots

    def scale(self, pair_type: str) -> Tensor:
        return self.logit_scale[self._key(pair_type)].clamp(0.0, MAX_LOGIT_SCALE).exp()

    def forward(self, za: Tensor, zb: Tensor, pair_type: str, keys: Tensor | None = None) -> Tensor:
        """``za``, ``zb`` [b, d]: this process's normalised embeddings, row i of each a pair; ``keys``
        [b] (optional, integer): rows with equal keys are positives of each other. Returns this
        process's share of the global-batch loss (DDP's averaging makes it the global loss)."""
        world, rank = _world()
        b = za.shape[0]
        all_a, all_b = self._gather(za), self._gather(zb)
        all_keys = gather_no_grad(keys) if keys is not None else None
        pos = positives(keys, all_keys, b, b * world, rank * b, za.device)
        scale = self.scale(pair_type)
        logits_ab = scale * za.float() @ all_b.float().T  # my a rows vs every b
        if self.kind == "infonce":
            logits_ba = scale * zb.float() @ all_a.float().T  # my b rows vs every a
            return 0.5 * (multi_positive_nll(logits_ab, pos) + multi_positive_nll(logits_ba, pos))
        # SigLIP: every (row, column) pair once, as a binary decision; rows of this process only
        logits = logits_ab + self.logit_bias[self._key(pair_type)]
        sign = pos.float() * 2 - 1
        return -F.logsigmoid(sign * logits).sum() / b


class AlignModel(nn.Module):
    """Towers + loss: ``forward(PairBatch) -> (loss, extras)``. Only the batch's two towers run;
    the other towers' trainable parameters join the loss with weight 0, so DDP sees every parameter
    used at every step (one pair type per step would otherwise leave towers without gradient)."""

    def __init__(self, towers: dict[str, nn.Module], pair_types: list[str], kind: str = "infonce",
                 init_temperature: float | None = None, gather: str = "grad") -> None:
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        self.loss = AlignLoss(pair_types, kind, init_temperature, gather=gather)

    def forward(self, batch, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        a, b = batch.towers
        za = self.towers[a](batch.inputs[0], batch.ids[0])
        zb = self.towers[b](batch.inputs[1], batch.ids[1])
        loss = self.loss(za, zb, batch.pair_type, batch.keys)
        idle = [p for n, t in self.towers.items() if n not in (a, b) for p in t.parameters() if p.requires_grad]
        idle += [p for k, p in self.loss.named_parameters() if not k.endswith(self.loss._key(batch.pair_type))]
        if idle:
            loss = loss + 0.0 * sum(p.sum() for p in idle)
        with torch.no_grad():
            top1 = float((za @ zb.T).argmax(1).eq(torch.arange(za.shape[0], device=za.device)).float().mean())
        return loss, {"pair": batch.pair_type, "top1_local": top1,
                      "temperature": float(1 / self.loss.scale(batch.pair_type).detach())}
