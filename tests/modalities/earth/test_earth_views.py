"""Band views (modalities/earth/views.py): a view is exactly the chip with fewer bands declared."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.embed import embed_dataset
from foundation.model import Encoder
from modalities.earth.adapter import EarthAdapter
from modalities.earth.views import BandViewEncoder, resolution_views

RGBN = ["B02", "B03", "B04", "B08"]


def test_resolution_views_add_the_finest_bands_only_when_they_are_a_proper_subset():
    s2 = EarthAdapter({"preset": "eurosat_ms"}).channels
    assert resolution_views(s2) == [s2, RGBN]
    assert resolution_views(RGBN) == [RGBN]
    assert resolution_views(["VV", "VH"]) == [["VV", "VH"]]
    assert resolution_views(["RED", "GREEN", "BLUE"]) == [["RED", "GREEN", "BLUE"]]  # resolution unknown
    assert resolution_views(["L8_B2", "L8_B3", "L8_B8", "L8_B10"]) == [["L8_B2", "L8_B3", "L8_B8", "L8_B10"], ["L8_B8"]]


@pytest.mark.parametrize("tokenizer", ["linear", "conv"])
def test_a_band_view_embeds_like_a_dataset_declaring_only_those_bands(tmp_path, eurosat, tokenizer):
    torch.manual_seed(0)
    files = sorted(eurosat.rglob("*.tif"))[::14]  # one chip per class
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,preset\n" + "".join(f"{p},eurosat_ms\n" for p in files))
    full = EarthAdapter({"preset": "eurosat_ms", "tokenizer": tokenizer})
    ds = full.dataset({"manifest": str(manifest)}, train=False)
    full.fit(ds)
    enc = Encoder.build(full, {"width": 64, "depth": 2, "heads": 4})
    sub = EarthAdapter({"bands": RGBN, "stats": full.config["stats"]}).dataset({"manifest": str(manifest)}, train=False)
    direct = embed_dataset(enc, sub)["meanstd"]  # 4 bands: one view
    both = embed_dataset(enc, ds)["meanstd"]  # the adapter's default (embed_views: resolution)
    np.testing.assert_array_equal(both, embed_dataset(BandViewEncoder(enc, full.channels), ds)["meanstd"])
    full.config["embed_views"] = "none"
    alone = embed_dataset(enc, ds)["meanstd"]
    w = alone.shape[1]
    assert both.shape == (len(files), 2 * w)
    np.testing.assert_allclose(both[:, :w], alone, atol=1e-5)  # the first view is the plain embedding
    np.testing.assert_allclose(both[:, w:], direct, atol=1e-4)  # the second is the 4-band chip's
    assert not np.allclose(alone, direct, atol=1e-2), "negative control: hiding 9 bands changes the embedding"


def test_a_view_naming_bands_the_data_lacks_is_an_error(eurosat):
    a = EarthAdapter({"preset": "eurosat_ms"})
    ds = a.dataset({"root": str(eurosat / "River")}, train=False)
    enc = Encoder.build(a, {"width": 32, "depth": 1, "heads": 4})
    with pytest.raises(ValueError, match="VV"):
        embed_dataset(BandViewEncoder(enc, a.channels, [RGBN, ["VV"]]), ds)
