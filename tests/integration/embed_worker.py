"""Run by test_distributed.py under torchrun: embed_dataset on two gloo processes, pooled and ragged
(per-sample) features, written per rank for the test to compare with one process."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from foundation.distributed import exit_process, release_process_group
from foundation.embed import embed_dataset
from foundation.model import Encoder
from modalities.grid.adapter import GridAdapter


class TokensToo(torch.nn.Module):
    """A feature model with a ragged key: each sample's real tokens (as the medical regions are)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @torch.no_grad()
    def pooled(self, batch):
        out = self.encoder.pooled(batch)
        enc = self.encoder(batch)
        out["tokens"] = [t[~p] for t, p in zip(enc.tokens, enc.padding)]
        return out


def setup(data_root: str):
    torch.manual_seed(0)
    adapter = GridAdapter({"patch": [4, 4]})
    encoder = Encoder(adapter, width=32, depth=2, heads=2).eval()
    return TokensToo(encoder), adapter.dataset({"root": data_root, "labels": "folder"}, train=False)


def main(data_root: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, ds = setup(data_root)
    out = embed_dataset(model, ds, batch_size=4, device="cpu")  # 45 samples: uneven slices
    np.savez(Path(out_dir) / f"embed.rank{rank}.npz", mean=out["mean"], ids=out["ids"], n_tokens=np.array([len(t) for t in out["tokens"]]),
             tokens=np.concatenate(out["tokens"]))
    release_process_group()
    exit_process(0)  # as the CLI under torchrun: nothing left to finalise but gloo's threads


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
