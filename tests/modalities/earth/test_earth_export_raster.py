"""A whole GeoTIFF scene embedded by tiles into a GeoTIFF of embeddings that keeps the source CRS and transform."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

import foundation
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data


@pytest.mark.slow
def test_a_scene_becomes_a_georeferenced_raster_of_embeddings(tmp_path):
    scene = shared_data("earth", "sen1floods11", "Spain_7370579_S2Hand.tif")
    adapter = adapter_from_config("earth", {"preset": "sen1floods11_s2"})
    adapter.fit(adapter.dataset({"root": str(scene)}, train=True))
    torch.manual_seed(0)
    out = Encoder(adapter, width=16, depth=1, heads=2).save_pretrained(tmp_path / "export", extra={"pooling": "mean"})
    enc = foundation.load_encoder(out)
    res = enc.embed_raster(scene, tmp_path / "emb.tif")
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "emb.tif") as emb:
        assert emb.crs == src.crs and emb.crs is not None
        assert emb.transform == src.transform * Affine.scale(64)
        assert (emb.height, emb.width) == (8, 8) and emb.count == res["embeddings"].shape[0]
        # the top-left of pixel (0, 1) is the top-left of the chip at column 64, in map coordinates
        assert emb.transform @ (1, 0) == src.transform @ (64, 0)
        grid = emb.read()
        assert emb.tags()["weights_sha256"] == enc.weights_sha256
    chips = enc.embed_dataset(enc.dataset({"root": str(scene)}))
    j = chips.ids.index(f"{scene}#r0c64h64w64")
    np.testing.assert_allclose(grid[:, 0, 1], chips.embeddings[j], atol=1e-6)
    assert np.isfinite(grid).all(axis=0).sum() == len(chips.ids)  # one pixel per embedded chip, dropped chips NaN
