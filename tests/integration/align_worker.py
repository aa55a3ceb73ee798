"""Shared setup of the alignment distributed test: an encoder tower (grid adapter, trained) and a
tiny BERT text tower (trained), a global batch of 8 pairs with repeated texts (multi-positive keys).

Run under torchrun (2 gloo processes) it writes each rank's loss and DDP-averaged gradients for
InfoNCE and SigLIP, with the autograd-aware gather and with a plain gather (the negative control);
imported by the test, ``reference`` computes the same on one process over the whole global batch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from foundation.model import Encoder
from foundation.objectives.align import AlignModel
from foundation.pairs import PairBatch
from foundation.tokens import collate
from foundation.towers import EncoderTower, TextTower, build_tiny_text_tower
from modalities.grid.adapter import GridAdapter

TEXTS = ["a red square", "a blue circle", "a red square", "a green star", "a blue circle", "a tiny dot", "a red square", "a big wave"]
KINDS = ("infonce", "siglip")


def build_model(text_dir: Path, kind: str, gather: str = "grad") -> AlignModel:
    torch.manual_seed(0)
    enc = Encoder(GridAdapter({"patch": [4, 4]}), width=32, depth=2, heads=2)
    towers = {"image": EncoderTower("image", enc, 16, mode="train"), "text": TextTower("text", text_dir, 16, mode="train")}
    return AlignModel(towers, ["image|text"], kind=kind, gather=gather)


def global_batch(rows: slice = slice(None)) -> PairBatch:
    g = torch.Generator().manual_seed(1)
    adapter = GridAdapter({"patch": [4, 4]})
    images = [adapter.to_patches(torch.randn(1, 12, 12, generator=g), id=f"img{i}") for i in range(len(TEXTS))]
    keys = torch.tensor([sorted(set(TEXTS)).index(t) for t in TEXTS])
    idx = list(range(len(TEXTS)))[rows]
    texts = [TEXTS[i] for i in idx]
    return PairBatch(("image", "text"), (collate([images[i] for i in idx]), texts), ([f"img{i}" for i in idx], texts), keys[idx])


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone().contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def reference(text_dir: Path, kind: str) -> tuple[float, dict[str, torch.Tensor]]:
    model = build_model(text_dir, kind)
    loss, _ = model(global_batch())
    loss.backward()
    return float(loss.detach()), grads(model)


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    text_dir = Path(out_dir) / "text"
    per = len(TEXTS) // world
    for kind in KINDS:
        for gather in ("grad", "none"):
            model = DDP(build_model(text_dir, kind, gather))
            loss, _ = model(global_batch(slice(rank * per, (rank + 1) * per)))
            loss.backward()  # DDP averages the gradients over ranks
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            out = {k.removeprefix("module."): v for k, v in grads(model).items()}
            out["__loss__"] = (mean_loss / world).reshape(1)
            save_file(out, str(Path(out_dir) / f"{kind}.{gather}.rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
