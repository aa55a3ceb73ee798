"""Readers: windows and tiling against full reads, per-band stacking, pairs, GSD, georeferenced maps."""
from __future__ import annotations

import json

import numpy as np
import rasterio

from modalities.earth.adapter import EarthAdapter
from modalities.earth.io import RasterPart, gsd_metres, read_chip, reference_grid, tile_windows, window_id, parse_window_id
from modalities.earth.scenes import bigearthnet_pairs
from modalities.earth.tasks import spatial_block_split, write_token_map

from earth_helpers import write_raster


def test_tiling_matches_full_read_on_written_cog_like_file(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.integers(0, 4000, (3, 300, 250)).astype(np.uint16)
    path = write_raster(tmp_path / "scene.tif", full, tiled=True)
    part = RasterPart(str(path), ("B02", "B03", "B04"))
    grid = reference_grid([part])
    windows = tile_windows(grid.height, grid.width, 64, 48)
    covered = np.zeros((300, 250), bool)
    for w in windows:
        data, valid, names = read_chip([part], grid, w)
        r, c = int(w.row_off), int(w.col_off)
        assert data.shape == (3, 64, 64) and valid.all()
        np.testing.assert_array_equal(data, full[:, r:r + 64, c:c + 64])
        covered[r:r + 64, c:c + 64] = True
    assert covered.all(), "tiling must cover every pixel"
    # A different stride changes the windows, and the ids name file and window (round trip).
    assert len(tile_windows(300, 250, 64, 64)) < len(windows)
    path_back, w_back = parse_window_id(window_id(str(path), windows[5]))
    assert path_back == str(path) and w_back == windows[5]


def test_landsat_scene_tiles_equal_full_read_and_nodata_is_invalid(landsat):
    with rasterio.open(landsat) as ds:
        full = ds.read().astype(np.float32)
    part = RasterPart(str(landsat), ("RED", "GREEN", "BLUE"))
    grid = reference_grid([part])
    for w in tile_windows(grid.height, grid.width, 256)[:6]:
        data, valid, _ = read_chip([part], grid, w)
        r, c, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
        np.testing.assert_array_equal(data, full[:, r:r + h, c:c + wd])
        np.testing.assert_array_equal(valid, full[:, r:r + h, c:c + wd] != 0)  # nodata 0 -> invalid


def test_bigearthnet_bands_stack_onto_the_10m_grid(bigearthnet):
    folder = sorted((bigearthnet / "s2-tiny").iterdir())[0]
    a = EarthAdapter({"preset": "bigearthnet_s2", "chip_size": 120})
    ds = a.dataset({"root": str(bigearthnet / "s2-tiny")}, train=False)
    assert len(ds) == 3 and a.channels[:4] == ["B01", "B02", "B03", "B04"]
    raw, valid, names = read_chip(ds.scenes[0].parts, ds.grids[0], ds.chips[0].window)
    assert raw.shape == (12, 120, 120) and valid.all()
    with rasterio.open(next(folder.glob("*_B04.tif"))) as f:
        np.testing.assert_array_equal(raw[names.index("B04")], f.read(1))  # 10 m band: untouched
    for name, factor in (("B05", 2), ("B01", 6)):  # 20 m and 60 m bands, resampled
        with rasterio.open(next(folder.glob(f"*_{name}.tif"))) as f:
            coarse = f.read(1).astype(np.float64)
            assert f.res[0] == 10 * factor
        up = raw[names.index(name)].astype(np.float64)
        blocks = up.reshape(120 // factor, factor, 120 // factor, factor).mean((1, 3))
        assert np.corrcoef(blocks.ravel(), coarse.ravel())[0, 1] > 0.9
        assert abs(blocks.mean() - coarse.mean()) / coarse.mean() < 0.02


def test_s1_s2_pairs_come_from_the_metadata(bigearthnet):
    pairs = bigearthnet_pairs(bigearthnet / "s1-tiny")
    s2_names = sorted(p.name for p in (bigearthnet / "s2-tiny").iterdir())
    found = sorted(set(pairs) & set(s2_names))
    assert len(found) == 3
    for s2 in found:
        meta = json.loads(next((bigearthnet / "s1-tiny").rglob(f"{pairs[s2].split('/')[-1]}_labels_metadata.json")).read_text())
        assert meta["corresponding_s2_patch"] == s2
    a = EarthAdapter({"preset": "bigearthnet_s2", "pair": "bigearthnet", "pair_root": str(bigearthnet / "s1-tiny"), "chip_size": 120})
    ds = a.dataset({"root": str(bigearthnet / "s2-tiny")}, train=False)
    assert a.channels[-2:] == ["VV", "VH"] and len(ds) == 3
    data, valid, names = ds.read(0)
    s1_dir = pairs[ds.scenes[0].path.split("/")[-1]]
    vv = next(p for p in __import__("pathlib").Path(s1_dir).glob("*_VV.tif"))
    with rasterio.open(vv) as f:
        np.testing.assert_allclose(data[names.index("VV")], f.read(1), rtol=0, atol=1e-5)  # dB as declared: untouched
    s = ds[0]
    assert s.meta["polarisation"].tolist()[-2:] == [1, 2] and s.patches.shape[1] == 14 * 8 * 8


def test_gsd_in_metres_for_utm_and_geographic(eurosat, sen1floods11):
    with rasterio.open(next(eurosat.rglob("*.tif"))) as ds:
        assert abs(gsd_metres(ds.crs, ds.transform, ds.height) - 10.0) < 0.1
    with rasterio.open(sen1floods11 / "Spain_7370579_S2Hand.tif") as ds:
        assert ds.crs.is_geographic
        g = gsd_metres(ds.crs, ds.transform, ds.height)
    # 8.98e-5 degrees at 38 N: 10.0 m north-south, 7.9 m east-west.
    assert 8.5 < g < 9.5


def test_token_map_round_trips_georeferencing(tmp_path, landsat):
    a = EarthAdapter({"preset": "rgb_byte", "chip_size": 128, "patch_size": 16})
    ds = a.dataset({"root": str(landsat)}, train=False)
    i = len(ds) // 2
    s = ds[i]
    values = np.arange(s.patches.shape[0], dtype=np.float32)
    out = write_token_map(tmp_path / "pred.tif", values, ds, i)
    crs, chip_t, h, w = ds.georef(i)
    with rasterio.open(out) as m, rasterio.open(landsat) as src:
        assert m.crs == src.crs and m.shape == (8, 8)
        for tok in (0, 9, 63):
            r, c = divmod(tok, 8)
            # the map pixel's centre lies at the centre of the token's 16x16 patch in the source scene
            x, y = m.xy(r, c)
            row, col = src.index(x, y)
            win = ds.chips[i].window
            assert (row - int(win.row_off)) // 16 == r and (col - int(win.col_off)) // 16 == c
            assert m.read(1)[r, c] == values[tok] == s.coords[tok, 0] * 8 + s.coords[tok, 1]


def test_spatial_blocks_never_straddle_the_split(tmp_path):
    a = EarthAdapter({})
    data = a.synthetic(tmp_path / "syn", 80, seed=1)
    ds = a.dataset(data, train=False)
    tr, te = spatial_block_split(ds, block_m=3000, test_fraction=0.3, seed=0)
    assert len(tr) and len(te) and not set(tr) & set(te)
    block = lambda i: tuple(np.floor(np.asarray(ds.georef(i)[1] @ (32, 32)) / 3000).astype(int))
    assert not {block(i) for i in tr} & {block(i) for i in te}


def test_segmentation_head_learns_water_and_writes_a_georeferenced_map(tmp_path, sen1floods11):
    """Sen1Floods11: a light per-pixel head on frozen tokens beats the majority class on held-out chips,
    and its prediction map overlays the source chip (same CRS and transform)."""
    import torch

    from foundation.model import Encoder
    from foundation.tokens import collate
    from modalities.earth.tasks import SegmentationHead, read_label_chip, write_chip_values

    torch.manual_seed(0)
    a = EarthAdapter({"preset": "sen1floods11_s2", "include": "S2Hand", "chip_size": 128, "patch_size": 16})
    ds = a.dataset({"root": str(sen1floods11)}, train=False)
    a.fit(ds)
    enc = Encoder(a, width=32, depth=1, heads=2).eval()
    label_path = str(sen1floods11 / "Spain_7370579_LabelHand.tif")
    labels = torch.from_numpy(np.stack([read_label_chip(label_path, ds, i) for i in range(len(ds))]))
    with torch.no_grad():
        tokens = enc(collate([ds[i] for i in range(len(ds))])).tokens
    train, test = np.arange(0, len(ds), 2), np.arange(1, len(ds), 2)
    head = SegmentationHead(32, 16, 2)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(tokens[train], (8, 8)), labels[train], ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(tokens[test], (8, 8)).argmax(1)
    known = labels[test] >= 0
    acc = (pred[known] == labels[test][known]).float().mean().item()
    majority = max((labels[test][known] == c).float().mean().item() for c in (0, 1))
    assert acc > majority + 0.02, (acc, majority)
    out = write_chip_values(tmp_path / "water.tif", pred[0].numpy().astype(np.uint8), ds, int(test[0]))
    with rasterio.open(out) as m, rasterio.open(label_path) as lab:
        assert m.crs == lab.crs and m.shape == (128, 128)
        x, y = m.xy(5, 7)
        r, c = lab.index(x, y)
        win = ds.chips[int(test[0])].window
        assert (r - int(win.row_off), c - int(win.col_off)) == (5, 7)
