"""Validity, units, statistics, bad input, tokenizer properties, synthetic scenes."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from foundation.tokens import collate
from modalities.earth.adapter import EarthAdapter
from modalities.earth.bands import band, canonical
from modalities.earth.preprocess import StreamingBandStats

from earth_helpers import write_raster


def _floods_copy(tmp_path, sen1floods11, s2_border=100, s1_rows=200):
    """The real Sen1Floods11 chip with a nodata border written in: S2 0 (its nodata), S1 NaN."""
    with rasterio.open(sen1floods11 / "Spain_7370579_S2Hand.tif") as f:
        s2, prof2 = f.read(), f.profile
    with rasterio.open(sen1floods11 / "Spain_7370579_S1Hand.tif") as f:
        s1, prof1 = f.read(), f.profile
    s2[:, :, :s2_border] = 0
    s1[:, :s1_rows, :] = np.nan
    d = tmp_path / "floods"
    write_raster(d / "x_S2Hand.tif", s2, crs=prof2["crs"], transform=prof2["transform"], nodata=0)
    write_raster(d / "x_S1Hand.tif", s1, crs=prof1["crs"], transform=prof1["transform"], nodata=float("nan"))
    return d, s2, s1


def test_nodata_becomes_padding_and_invalid_targets(tmp_path, sen1floods11):
    d, s2, s1 = _floods_copy(tmp_path, sen1floods11, s2_border=100, s1_rows=200)
    a = EarthAdapter({"preset": "sen1floods11_s2", "pair": "regex:S2Hand=>S1Hand", "chip_size": 128, "patch_size": 16,
                      "min_valid_fraction": 0.0})
    ds = a.dataset({"root": str(d)}, train=False)
    assert len(ds) == 16 and a.channels[-2:] == ["VV", "VH"]
    # Chip (row 0, col 0): S2 columns 0..99 are nodata, S1 rows 0..127 all NaN.
    s = ds[0]
    c, k = len(a.channels), 16 * 16
    tv = s.target_valid.view(-1, c, k)
    cols = s.coords[:, 1]
    s2_dead = cols < 6  # patches wholly inside the 100-column border (6 * 16 = 96)
    assert not tv[s2_dead, :13].any() and tv[cols >= 7, :13].all()
    assert not tv[:, 13:].any(), "NaN SAR pixels must never be valid targets"
    assert torch.equal(s.padding, s2_dead), "tokens with no valid value in any band are padding"
    edge = cols == 6  # columns 96..111: 4 of 16 pixel columns valid
    frac = tv[edge, :13].float().mean().item()
    assert abs(frac - 12 / 16) < 1e-6  # columns 100..111 of 96..111
    assert (s.patches.view(-1, c, k)[~s.target_valid.view(-1, c, k)] == 0).all()
    # With the default threshold the mostly-invalid chips (the left column, 100 of 128 columns of 13
    # of 15 bands missing) are dropped and counted; the top row keeps its valid optical bands.
    b = EarthAdapter({"preset": "sen1floods11_s2", "pair": "regex:S2Hand=>S1Hand", "chip_size": 128, "patch_size": 16})
    ds_b = b.dataset({"root": str(d)}, train=False)
    assert ds_b.dropped_invalid == 4 and len(ds_b) == 12
    assert all(int(ch.window.col_off) >= 128 for ch in ds_b.chips)


def test_all_nodata_file_is_refused_or_counted_when_skipping(tmp_path):
    good = np.full((2, 64, 64), -12.0, np.float32)
    write_raster(tmp_path / "d" / "good.tif", good, descriptions=["VV", "VH"])
    write_raster(tmp_path / "d" / "dead.tif", np.full((2, 64, 64), np.nan, np.float32), descriptions=["VV", "VH"])
    a = EarthAdapter({"bands": ["VV", "VH"]})
    ds = a.dataset({"root": str(tmp_path / "d")}, train=False)
    assert len(ds) == 1 and ds.dropped_invalid == 1
    write_raster(tmp_path / "e" / "dead.tif", np.full((2, 64, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="no usable chips"):
        EarthAdapter({"bands": ["VV", "VH"]}).dataset({"root": str(tmp_path / "e")}, train=False)


def test_bad_input_errors_name_the_file(tmp_path, eurosat):
    one = next(eurosat.rglob("*.tif"))
    with pytest.raises(ValueError, match=rf"{one.name}.*13 band\(s\) but 12"):
        EarthAdapter({"preset": "bigearthnet_s2", "layout": "stacked"}).dataset({"root": str(one)}, train=False)
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", height=8, width=8, count=1, dtype="uint16") as dst:
        dst.write(np.ones((1, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="nocrs.tif.*no CRS"):
        EarthAdapter({"bands": ["B04"]}).dataset({"root": str(nocrs)}, train=False)
    cplx = write_raster(tmp_path / "c" / "cplx.tif", np.ones((1, 8, 8), np.complex64))
    with pytest.raises(ValueError, match="cplx.tif.*unsupported data type"):
        EarthAdapter({"bands": ["VV"]}).dataset({"root": str(cplx)}, train=False)
    undeclared = write_raster(tmp_path / "u" / "u.tif", np.ones((2, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="u.tif.*not declared"):
        EarthAdapter({}).dataset({"root": str(undeclared)}, train=False)
    # Skip policy: the bad file is counted, the good one kept.
    mixed = tmp_path / "m"
    write_raster(mixed / "a.tif", np.full((13, 64, 64), 500, np.uint16))
    write_raster(mixed / "b.tif", np.full((4, 64, 64), 500, np.uint16))
    ds = EarthAdapter({"preset": "eurosat_ms"}).dataset({"root": str(mixed), "on_error": "skip"}, train=False)
    assert len(ds) == 1 and len(ds.skipped) == 1 and ds.skipped[0][0].endswith("b.tif")


def test_units_are_applied_once_as_declared(tmp_path, sen1floods11):
    with rasterio.open(sen1floods11 / "Spain_7370579_S1Hand.tif") as f:
        db, prof = f.read()[:, :64, :64], f.profile
    write_raster(tmp_path / "db" / "s1.tif", db, crs=prof["crs"], transform=prof["transform"])
    write_raster(tmp_path / "lin" / "s1.tif", (10 ** (db / 10)).astype(np.float32), crs=prof["crs"], transform=prof["transform"])
    as_db = EarthAdapter({"bands": ["VV", "VH"], "sar_units": "db"}).dataset({"root": str(tmp_path / "db")}, False).read(0)[0]
    as_lin = EarthAdapter({"bands": ["VV", "VH"], "sar_units": "linear"}).dataset({"root": str(tmp_path / "lin")}, False).read(0)[0]
    np.testing.assert_allclose(as_db, db, atol=1e-5)  # declared dB: untouched
    np.testing.assert_allclose(as_lin, db, atol=1e-3)  # declared linear: converted to dB exactly once
    with pytest.raises(ValueError, match="declared linear but holds negative values"):
        EarthAdapter({"bands": ["VV", "VH"], "sar_units": "linear"}).dataset({"root": str(tmp_path / "db")}, False).read(0)
    # the other contradiction: linear power declared as dB is refused, naming the way out (the same file declared
    # linear, above, is the control that reads)
    with pytest.raises(ValueError, match=r"declared in dB but holds only non-negative values.*adapter.sar_units=linear"):
        EarthAdapter({"bands": ["VV", "VH"], "sar_units": "db"}).dataset({"root": str(tmp_path / "lin")}, False).read(0)
    # Sentinel-2 L2A from baseline 04.00: reflectance = (DN - 1000) / 10000.
    dn = np.full((1, 64, 64), 2500, np.uint16)
    write_raster(tmp_path / "l2a" / "x.tif", dn)
    new = EarthAdapter({"bands": ["B04"], "s2_baseline": "04.00"}).dataset({"root": str(tmp_path / "l2a")}, False).read(0)[0]
    old = EarthAdapter({"bands": ["B04"], "s2_baseline": "02.09"}).dataset({"root": str(tmp_path / "l2a")}, False).read(0)[0]
    assert np.allclose(new, 0.15) and np.allclose(old, 0.25)


def test_band_orders_are_declared_per_dataset(eurosat, sen1floods11):
    e = EarthAdapter({"preset": "eurosat_ms"})
    s = EarthAdapter({"preset": "sen1floods11_s2"})
    assert e.config["bands"][12] == "B8A" and s.config["bands"][8] == "B8A"
    assert canonical("B8a") == canonical("B08A") == "B8A" and canonical("b4") == "B04" and canonical("LC09_B5") == "L8_B5"
    ds = e.dataset({"root": str(eurosat), "labels": "folder"}, False)
    wl = ds[0].meta["wavelengths"]
    assert wl[12].item() == pytest.approx(band("B8A").wavelength_um) and wl[8].item() == pytest.approx(band("B09").wavelength_um)


def test_streaming_stats_equal_a_full_computation(eurosat):
    a = EarthAdapter({"preset": "eurosat_ms"})
    ds = a.dataset({"root": str(eurosat), "labels": "folder"}, True)
    a.fit(ds)
    allv = np.stack([ds.read(i)[0] for i in range(len(ds))])  # [N, 13, 64, 64]
    for j, name in enumerate(a.config["bands"]):
        assert a.config["stats"]["mean"][name] == pytest.approx(allv[:, j].mean(), rel=1e-5)
        assert a.config["stats"]["std"][name] == pytest.approx(allv[:, j].std(), rel=1e-4)
    acc = StreamingBandStats()
    x = np.array([[[1.0, 2.0], [3.0, 100.0]]])
    acc.update(x, np.array([[[True, True], [True, False]]]), ["B04"])
    assert acc.result()["mean"]["B04"] == pytest.approx(2.0), "invalid pixels never enter the statistics"


@pytest.mark.parametrize("tokenizer", ["linear", "conv"])
def test_tokenizer_is_token_local_and_serves_band_subsets(eurosat, tokenizer):
    torch.manual_seed(0)
    a = EarthAdapter({"preset": "eurosat_ms", "tokenizer": tokenizer})
    ds = a.dataset({"root": str(eurosat), "labels": "folder"}, False)
    tok = a.make_tokenizer(32).eval()
    b = collate([ds[0], ds[1]])
    out = tok(b.patches, b.meta)
    changed = b.patches.clone()
    changed[0, 5] += 1.0
    diff = (tok(changed, b.meta) - out).abs().sum(-1)
    assert diff[0, 5] > 0 and diff.sum() == diff[0, 5], "a token depends on its own patch only"
    # 4-band (B02 B03 B04 B08) chips: same tokens as the 13-band chip with the other bands absent.
    sub = EarthAdapter({"preset": "eurosat_ms", "bands": None})
    keep = [1, 2, 3, 7]
    p4 = b.patches.view(2, b.patches.shape[1], 13, -1)[:, :, keep].reshape(2, b.patches.shape[1], -1)
    meta4 = {"wavelengths": b.meta["wavelengths"][:, keep], "polarisation": b.meta["polarisation"][:, keep]}
    present = torch.zeros(2, 13, dtype=torch.bool)
    present[:, keep] = True
    torch.testing.assert_close(tok(p4, meta4), tok(b.patches, {**b.meta, "band_valid": present}), atol=1e-4, rtol=1e-4)
    # VV and VH share a wavelength; the polarisation embedding keeps them apart.
    sar = {"wavelengths": torch.full((1, 1), band("VV").wavelength_um), "polarisation": torch.tensor([[1]])}
    x = torch.randn(1, 3, 64)
    assert not torch.allclose(tok(x, sar), tok(x, {**sar, "polarisation": torch.tensor([[2]])}))
    assert sub.config["bands"][0] == "B01"


def test_synthetic_scenes_are_labelled_georeferenced_and_defeat_band_statistics(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = EarthAdapter({"pair": "regex:_S2=>_S1", "pair_root": str(tmp_path / "syn" / "s1")})
    data = a.synthetic(tmp_path / "syn", 150, seed=0)
    ds = a.dataset(data, train=False)
    assert len(ds.classes) == 6 and a.channels[-2:] == ["VV", "VH"] and len(ds) >= 140
    feats, labels, any_cloud, any_nan = [], [], False, False
    for i in range(len(ds)):
        x, v, _ = ds.read(i)
        any_cloud |= bool((~v[:13]).any() & v[13:].all())
        any_nan |= bool((~v[13:]).any())
        feats.append(np.concatenate([[x[c][v[c]].mean(), x[c][v[c]].std()] for c in range(15)]))
        labels.append(ds.label(i))
        with rasterio.open(ds.scenes[ds.chips[i].scene].path) as f:
            assert f.crs is not None and f.crs.is_projected
    assert any_cloud and any_nan, "clouds (optical only) and nodata edges (both sensors) must occur"
    acc = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)),
                          np.array(feats), np.array(labels), cv=5).mean()
    assert acc < 0.35, f"band mean/std features separate the synthetic classes too well ({acc:.2f}; chance 0.17)"


def test_manifest_mixes_band_orders_onto_one_channel_list(tmp_path, eurosat):
    """EuroSAT (B8A last) and registry-order files in one dataset: every chip in the model's order."""
    from modalities.earth.bands import S2_BANDS
    from modalities.earth.synthetic import write_synthetic

    e_file = sorted(eurosat.rglob("*.tif"))[0]
    syn = write_synthetic(tmp_path / "syn", 2, seed=0, with_sar=False)
    s_file = sorted((tmp_path / "syn").rglob("*.tif"))[0]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,preset\n{e_file},eurosat_ms\n{s_file},\n")
    a = EarthAdapter({"bands": S2_BANDS, "min_valid_fraction": 0.0})
    ds = a.dataset({"manifest": str(manifest)}, train=False)
    x, v, names = ds.read(0)
    with rasterio.open(e_file) as f:
        raw = f.read().astype(np.float32)
    assert names == S2_BANDS and len(ds) == 2
    np.testing.assert_allclose(x[names.index("B8A")], raw[12] * 1e-4, rtol=1e-6)  # file band 13 is B8A
    np.testing.assert_allclose(x[names.index("B09")], raw[8] * 1e-4, rtol=1e-6)
    # A 4-band model reads the same 13-band file as 4 channels (RGB+NIR), the rest left out.
    b = EarthAdapter({"preset": "eurosat_ms", "bands": ["B02", "B03", "B04", "B08"]})
    m4 = tmp_path / "m4.csv"
    m4.write_text(f"path,preset\n{e_file},eurosat_ms\n")
    s4 = b.dataset({"manifest": str(m4)}, train=False)[0]
    assert s4.patches.shape[1] == 4 * 64 and s4.meta["wavelengths"].tolist() == pytest.approx([0.49, 0.56, 0.665, 0.842])
    assert syn["labels"] == "folder"
