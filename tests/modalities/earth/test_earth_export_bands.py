"""A 13-band EuroSAT encoder embeds a 4-band file described by its band descriptions or by input.bands; band
descriptions that contradict the declared bands fail loudly, naming the file; every suggested fix is accepted."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

import foundation
from foundation.errors import DomainfmError
from foundation.model import Encoder
from modalities.base import adapter_from_config
from tests.shared_data import shared_data

SUBSET = ["B02", "B03", "B04", "B08"]
EUROSAT = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]


def write(path, src, bands_idx, descriptions):
    with rasterio.open(src) as s:
        data, profile = s.read([i + 1 for i in bands_idx]), s.profile
    profile.update(count=len(bands_idx))
    with rasterio.open(path, "w", **profile) as d:
        d.write(data)
        if descriptions:
            d.descriptions = tuple(descriptions)
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    forest = shared_data("earth", "eurosat_ms", "Forest")
    tmp = tmp_path_factory.mktemp("earth")
    adapter = adapter_from_config("earth", {"preset": "eurosat_ms"})
    adapter.fit(adapter.dataset({"root": str(forest)}, train=True))
    torch.manual_seed(0)
    out = Encoder(adapter, width=32, depth=2, heads=2).save_pretrained(tmp / "export", extra={"pooling": "mid_meanstd"})
    chip = sorted(forest.glob("*.tif"))[0]
    idx = [EUROSAT.index(b) for b in SUBSET]
    files = {
        "described": write(tmp / "described.tif", chip, idx, SUBSET),
        "bare": write(tmp / "bare" / "bare.tif", chip, idx, None) if (tmp / "bare").mkdir() is None else None,
        "contradicting": write(tmp / "contra.tif", chip, list(range(13)), list(reversed(EUROSAT))),
    }
    return out, chip, files


def test_a_four_band_file_is_embedded_by_its_descriptions_or_input_bands(export):
    out, chip, files = export
    by_description = foundation.load_encoder(out).embed([files["described"]])
    by_declaration = foundation.load_encoder(out, overrides={"input.bands": SUBSET}).embed([files["bare"]])
    np.testing.assert_allclose(by_description.embeddings, by_declaration.embeddings, atol=1e-6)
    full = foundation.load_encoder(out).embed([chip]).embeddings
    assert by_description.embeddings.shape == full.shape
    # the 4 bands are not the 13: the subset embedding differs from the full one (the tokenizer sees fewer bands)
    assert np.abs(by_description.embeddings - full).max() > 1e-4


def test_contradicting_descriptions_and_undescribed_counts_fail_with_a_fix_the_command_accepts(export):
    out, chip, files = export
    with pytest.raises(DomainfmError, match=r"contra.tif: the file's band descriptions say \['B8A', 'B12'.*input.bands=\[B8A,B12"):
        foundation.load_encoder(out).embed([files["contradicting"]])
    with pytest.raises(DomainfmError, match=r"described.tif: the file's band descriptions say \['B02', 'B03', 'B04', 'B08'\] but input.bands"):
        foundation.load_encoder(out, overrides={"input.bands": ["B04", "B03", "B02", "B08"]}).embed([files["described"]])
    with pytest.raises(Exception, match=r"bare.tif: file has 4 band\(s\) but 13 were declared.*adapter.bands"):
        foundation.load_encoder(out).embed([files["bare"]])
    # the advice (adapter.bands) is accepted by embed as an input description
    assert foundation.load_encoder(out, overrides={"adapter.bands": SUBSET}).embed([files["bare"]]).embeddings.shape[0] == 1
