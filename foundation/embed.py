"""Frozen features of a dataset: every sample exactly once, in dataset order, on every process."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from foundation.data import eval_loader
from foundation.model import Encoder


@torch.no_grad()
def embed_dataset(encoder: Encoder, dataset, batch_size: int = 64, device: str | torch.device | None = None,
                  num_workers: int = 0, progress: bool = False) -> dict:
    """Pooled embeddings under every pooling, plus ids, paths and labels, as numpy arrays.

    A feature model may also give a key a list, one [instances, D] tensor per sample (medical: a
    study's regions, for ``foundation.probes.bag_probe``); that key stays a list of arrays.

    Under torch.distributed each rank embeds a contiguous slice and the slices are gathered back
    in order, so the result is identical whatever the number of processes.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
    if isinstance(encoder, Encoder):  # the adapter may embed several views of a sample (earth band views)
        encoder = encoder.adapter.feature_model(encoder, dataset)
    encoder = encoder.to(device).eval()
    feats: dict[str, list] = {}
    ragged: set[str] = set()
    ids, paths, labels = [], [], []
    # a feature model that fetches each sample from the dataset itself (medical: whole studies by
    # sliding windows) names a light dataset for the loader (ids, paths, labels), so no sample is
    # tokenised and collated only to be thrown away
    source = dataset if getattr(encoder, "loader_dataset", None) is None else encoder.loader_dataset
    for batch in tqdm(eval_loader(source, batch_size, world, rank, num_workers), disable=not progress, desc="embed"):
        batch = batch.to(device)
        for k, v in encoder.pooled(batch).items():
            if isinstance(v, list):  # ragged: one array per sample
                ragged.add(k)
                feats.setdefault(k, []).extend(t.float().cpu().numpy() for t in v)
            else:
                feats.setdefault(k, []).append(v.float().cpu().numpy())
        ids += batch.ids
        paths += batch.paths
        labels += batch.labels.tolist() if batch.labels is not None else [-1] * batch.size
    out = {k: v if k in ragged else np.concatenate(v) for k, v in feats.items()}
    out.update(ids=np.array(ids), paths=np.array(paths), labels=np.array(labels))
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (out, sorted(ragged)))
        ragged = {k for _, r in parts for k in r}
        outs = [o for o, _ in parts]
        keys = dict.fromkeys(k for o in outs for k in o)  # a rank with no samples has no feature keys
        out = {k: [a for o in outs for a in o.get(k, [])] if k in ragged
               else np.concatenate([o[k] for o in outs if k in o and len(o["ids"])]) for k in keys}
    return out
