"""Whole-volume embedding of any size: MONAI's sliding-window inferer over the encoder's token grid.

Each window is cut into tokens exactly as in pretraining (``to_tokens``), encoded, and its token
features are laid back on the window's patch grid. ``sliding_window_inference`` stitches the grids
of overlapping windows into one feature map of the whole volume (an output 1/patch the input size),
which is then pooled to one vector per study. A validity channel travels along, so voxels outside
the scan (padding of small volumes, NaN) weigh nothing in the pooled vector.
"""
from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor

from foundation.embed import embed_dataset
from foundation.tokens import SampleTokens, collate
from modalities.medical.dataset import _plain, to_tokens
from modalities.medical.preprocess import IMAGE, VALID


class TokenGrid:
    """A predictor for ``sliding_window_inference``: windows [b, C+1, *roi] -> features [b, D+1, *grid]."""

    def __init__(self, encoder, cfg: dict, spacing: Tensor, layer: int | None = None) -> None:
        self.encoder, self.cfg, self.spacing, self.layer = encoder, cfg, spacing, layer
        self.patch = tuple(int(p) for p in cfg["patch"])

    def __call__(self, windows: Tensor) -> Tensor:
        c = int(self.cfg["channels"])
        samples = []
        for w in windows:
            img = w[:c].cpu().as_subclass(torch.Tensor) if hasattr(w, "as_tensor") else w[:c].cpu()
            s = to_tokens(img, w[c:].cpu(), self.cfg, "", "", None)
            s.meta = {"spacing": self.spacing}
            samples.append(s)
        batch = collate(samples).to(next(self.encoder.parameters()).device)
        enc = self.encoder(batch, return_layers=self.layer is not None)
        feats = enc.tokens if self.layer is None else torch.nn.functional.layer_norm(enc.layers[self.layer], enc.tokens.shape[-1:])
        keep = (~batch.padding).unsqueeze(-1).to(feats.dtype)
        out = torch.cat([feats * keep, keep], -1)  # [b, N, D+1]
        grid = [r // p for r, p in zip(windows.shape[2:], self.patch)]
        return out.reshape(out.shape[0], *grid, out.shape[-1]).permute(0, 4, 1, 2, 3).to(windows.device)


def _offsets(size: int, window: int) -> list[int]:
    """Start positions of half-overlapping windows along one axis, the last one flush with the end."""
    window = min(size, window)
    starts = list(range(0, size - window + 1, max(1, window // 2)))
    return starts if starts[-1] == size - window else starts + [size - window]


def region_features(feats: Tensor, keep: Tensor, window: tuple[int, ...]) -> Tensor:
    """Per-feature max and min over each window-sized region of a study's feature map
    (``feats`` [D, *grid], ``keep`` [*grid]): [regions, 2D], regions with no scanned position left out.
    The regions are the instances of ``foundation.probes.bag_probe``."""
    rows = []
    for a in _offsets(feats.shape[1], window[0]):
        for b in _offsets(feats.shape[2], window[1]):
            for c in _offsets(feats.shape[3], window[2]):
                box = (slice(a, a + window[0]), slice(b, b + window[1]), slice(c, c + window[2]))
                f = feats[(slice(None), *box)][:, keep[box]]
                if f.shape[1]:
                    rows.append(torch.cat([f.amax(1), f.amin(1)]))
    return torch.stack(rows)


@torch.no_grad()
def embed_volume(encoder, volume: dict, cfg: dict, sw_batch_size: int = 4, layer: int | None = None,
                 regions: bool = False) -> dict[str, Tensor]:
    """Pooled features of one preprocessed volume (``MedicalDataset.volume(i)``) under several poolings;
    with ``regions``, also ``"regions"``: ``region_features`` over windows of the pretraining size."""
    image, valid = _plain(volume[IMAGE]).float(), _plain(volume[VALID]).float()
    spacing = torch.as_tensor(volume[IMAGE].pixdim, dtype=torch.float32)[:3] if hasattr(volume[IMAGE], "pixdim") else torch.ones(3)
    x = torch.cat([image, valid], 0)[None]
    roi = [int(r) for r in cfg["sw_roi"]]
    fmap = sliding_window_inference(x, roi, sw_batch_size, TokenGrid(encoder, cfg, spacing, layer),
                                    overlap=float(cfg["sw_overlap"]), mode="constant", padding_mode="constant", cval=0.0)[0]
    w = fmap[-1]  # [*grid]: how much of each position the windows saw inside the scan
    keep = w > 0.5
    if not keep.any():
        keep = w > 0
    grid_feats = fmap[:-1] / w.clamp_min(1e-6)
    f = grid_feats[:, keep]
    mean, top = f.mean(1), f.amax(1)
    # "maxmin": a focal finding (a small lesion) moves a few positions' features to an extreme, in
    # either sign; the mean dilutes it over the volume and max alone sees only the positive tail
    out = {"mean": mean, "meanstd": torch.cat([mean, f.std(1, unbiased=False)]), "max": top,
           "maxmin": torch.cat([top, f.amin(1)])}
    if regions:
        out["regions"] = region_features(grid_feats, keep, tuple(r // int(p) for r, p in zip(roi, cfg["patch"])))
    return out


class StudyReferences(torch.utils.data.Dataset):
    """The studies of an evaluation ``MedicalDataset`` as one placeholder token each, carrying the
    study's id, path and label: all ``SlidingWindowEncoder`` needs from the loader, so a whole study
    is not tokenised and collated only to be fetched again and its tokens thrown away. Only under
    ``on_error=skip`` is the volume read here (a cache hit), so that a study that cannot be read is left
    out (and counted) instead of failing the batch; otherwise the source is the item's own, and a file that
    cannot be read fails in ``SlidingWindowEncoder.pooled`` with the same error."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.items)  # studies, not the crops a training view would make of each

    def __getitem__(self, i: int) -> SampleTokens:
        ds = self.dataset
        if ds.on_error == "skip" and ds.volume(i) is None:
            return None  # skipped and counted; the collate leaves it out
        src = ds.items[i]["source"]
        label = None if ds.labels is None else ds.labels[ds._index[src]]
        one = torch.zeros(1, 1)
        return SampleTokens(patches=one, coords=torch.zeros(1, 3), targets=one, target_valid=torch.ones(1, 1, dtype=torch.bool),
                            id=src, path=src, label=label)


class SlidingWindowEncoder(torch.nn.Module):
    """The medical feature model of ``foundation.embed.embed_dataset`` (so of ``domainfm embed/probe/
    evaluate``): each study of a batch is embedded whole by sliding windows of the pretraining size,
    as ``embed_studies`` does, instead of as one long sequence at positions pretraining never saw.

    ``"regions"`` (one [regions, 2D] tensor per study) feeds the region probe of ``domainfm probe``.
    The loader reads ``loader_dataset`` (``StudyReferences``: ids, paths and labels only), and each
    study is fetched from the dataset by its source path (a cache hit under ``adapter.cache``); the
    wrapped encoder is shared, not copied. ``layer``: features of that block, layer-normalised,
    instead of the final tokens (``embed_volume``)."""

    def __init__(self, encoder, dataset, sw_batch_size: int = 4, layer: int | None = None, regions: bool = True) -> None:
        super().__init__()
        self.encoder, self.sw_batch_size, self.layer, self.regions = encoder, sw_batch_size, layer, regions
        self._dataset = dataset  # not a submodule: nothing of it is a parameter
        self.loader_dataset = StudyReferences(dataset)

    @torch.no_grad()
    def pooled(self, batch) -> dict[str, Tensor]:
        ds = self._dataset
        rows = [embed_volume(self.encoder, ds.volume(ds._index[path]), ds.cfg, self.sw_batch_size, self.layer, self.regions)
                for path in batch.paths]
        out = {k: torch.stack([r[k] for r in rows]).to(batch.patches.device) for k in rows[0] if k != "regions"}
        if self.regions:
            out["regions"] = [r["regions"] for r in rows]  # ragged: the region probe's instances
        return out


def embed_studies(encoder, dataset, sw_batch_size: int = 4, layer: int | None = None, regions: bool = False) -> dict:
    """One vector per volume of a ``MedicalDataset`` (any size), plus ids, paths and labels, as numpy;
    with ``regions``, also ``"regions"``: a list of [regions, 2D] arrays, one per volume. The same
    path as ``domainfm embed/probe`` (``embed_dataset`` over a ``SlidingWindowEncoder``), on the
    encoder's own device."""
    model = SlidingWindowEncoder(encoder, dataset, sw_batch_size, layer, regions)
    return embed_dataset(model, dataset, batch_size=8, device=next(encoder.parameters()).device)
