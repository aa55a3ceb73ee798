"""Data across processes: which sample each rank reads, in which order, with which seed.

Training: a permutation per epoch (seeded by run seed and epoch), cut so every rank gets the same
number of whole batches; at most ``world * batch - 1`` samples are dropped per epoch (partial
batches would duplicate samples, which makes false negatives in contrastive losses). Each index is
paired with a per-sample seed so augmentation does not depend on worker RNG, which makes resume
exact: restarting at batch ``b`` of epoch ``e`` only needs (e, b).

Evaluation/embedding: every sample exactly once, in order; rank r reads a contiguous slice.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from foundation.tokens import collate
from modalities.base import sample_seed

log = logging.getLogger(__name__)


class TrainSampler(Sampler):
    """Yields ``(index, seed)`` pairs of this rank's share of one epoch, starting at ``start_batch``."""

    def __init__(self, n: int, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 lengths: Sequence[int] | None = None, bucket_batches: int = 32) -> None:
        """``lengths`` (tokens per sample, e.g. a dataset's ``lengths``) turns on bucketing: within
        windows of ``bucket_batches`` global batches, samples are sorted by length before being cut
        into batches, and batch order is shuffled, so padding shrinks while every epoch stays a
        seeded permutation (and resume stays exact)."""
        if n < world * batch_size:
            raise ValueError(f"dataset of {n} samples is smaller than one global batch ({world} x {batch_size}); lower train.batch_size")
        self.n, self.batch_size, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.float64)
        self.bucket_batches = bucket_batches
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.world * self.batch_size)

    @property
    def dropped_per_epoch(self) -> int:
        return self.n - self.batches_per_epoch * self.world * self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.batches_per_epoch * self.world * self.batch_size]
        if self.lengths is not None:
            order = self._bucketed(order, g)
        mine = order.view(self.batches_per_epoch, self.world, self.batch_size)[self.start_batch:, self.rank].reshape(-1)
        for idx in mine.tolist():
            yield idx, sample_seed(self.seed, self.epoch, idx)

    def _bucketed(self, order: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        step = self.world * self.batch_size
        window = step * self.bucket_batches
        chunks = [c[self.lengths[c].argsort(stable=True)] for c in order.split(window)]
        batches = torch.cat(chunks).view(-1, step)
        return batches[torch.randperm(batches.shape[0], generator=g)].reshape(-1)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def eval_indices(n: int, world: int = 1, rank: int = 0) -> range:
    """Rank ``rank``'s contiguous, in-order slice; concatenating ranks gives 0..n-1 exactly once."""
    per = -(-n // world)
    return range(min(rank * per, n), min((rank + 1) * per, n))


class ShardedIterable(IterableDataset):
    """Shards an iterable dataset over ranks and DataLoader workers (item i goes to exactly one)."""

    def __init__(self, source: IterableDataset, world: int = 1, rank: int = 0) -> None:
        self.source, self.world, self.rank = source, world, rank

    def __iter__(self):
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        shards, shard = self.world * workers, self.rank * workers + wid
        for i, item in enumerate(self.source):
            if i % shards == shard:
                yield item


def train_loader(dataset: Dataset, sampler: TrainSampler, data_cfg: dict, collate_fn=collate) -> DataLoader:
    """The training loader; ``collate_fn`` defaults to PatchBatch collation (alignment passes its own)."""
    workers = int(data_cfg.get("num_workers", 0))
    # a sampler that yields whole batches (alignment's pair schedule) is a batch sampler; it drops partial batches itself
    batching = ({"batch_sampler": sampler} if getattr(sampler, "yields_batches", False) else
                {"batch_size": sampler.batch_size, "sampler": sampler, "drop_last": True})
    return DataLoader(
        dataset,
        **batching,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=bool(data_cfg.get("pin_memory", False)) and torch.cuda.is_available(),
        persistent_workers=bool(data_cfg.get("persistent_workers", False)) and workers > 0,
    )


def eval_loader(dataset: Dataset, batch_size: int, world: int = 1, rank: int = 0, num_workers: int = 0) -> DataLoader:
    subset = torch.utils.data.Subset(dataset, list(eval_indices(len(dataset), world, rank)))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
