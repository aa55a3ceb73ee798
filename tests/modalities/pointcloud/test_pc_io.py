"""Readers round-trip files written here, read the real shared files, and refuse bad input clearly."""
from __future__ import annotations

import numpy as np
import pytest

from modalities.pointcloud.io import (PointCloudError, lzf_decompress, read_cloud, read_off_mesh, write_las, write_off,
                                      write_pcd, write_ply)


@pytest.fixture
def cloud():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 3)).astype(np.float32) * 10, rng.random(300).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("write,ext", [(write_ply, "ply"), (write_pcd, "pcd")])
def test_ply_and_pcd_round_trip(tmp_path, cloud, binary, write, ext):
    xyz, inten = cloud
    write(tmp_path / f"a.{ext}", xyz, {"intensity": inten}, binary=binary)
    got = read_cloud(tmp_path / f"a.{ext}")
    np.testing.assert_allclose(got.xyz, xyz, rtol=1e-6)
    np.testing.assert_allclose(got.feature(["intensity"])[:, 0], inten, rtol=1e-6)


def test_ply_binary_big_endian_with_faces_after_vertices(tmp_path):
    xyz = np.arange(12, dtype=np.float32).reshape(4, 3)
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n")
    rec = np.zeros(4, dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("red", "u1")])
    rec["x"], rec["y"], rec["z"], rec["red"] = xyz[:, 0], xyz[:, 1], xyz[:, 2], [0, 50, 100, 255]
    (tmp_path / "b.ply").write_bytes(header.encode() + rec.tobytes() + b"\x03" + np.array([0, 1, 2], ">i4").tobytes())
    got = read_cloud(tmp_path / "b.ply")
    np.testing.assert_array_equal(got.xyz, xyz)
    np.testing.assert_array_equal(got.feature(["red"])[:, 0], [0, 50, 100, 255])


def _lzf_literals(data: bytes) -> bytes:
    """A valid LZF stream of literal runs only (enough to test the decoder's framing)."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i: i + 32]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out)


def test_pcd_binary_compressed_and_packed_rgb(tmp_path):
    xyz = np.random.default_rng(1).random((50, 3)).astype(np.float32)
    rgb = (np.uint32(10) << 16 | np.uint32(20) << 8 | np.uint32(30)) * np.ones(50, np.uint32)
    body = xyz[:, 0].tobytes() + xyz[:, 1].tobytes() + xyz[:, 2].tobytes() + rgb.view(np.float32).tobytes()
    comp = _lzf_literals(body)
    header = ("VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 50\nHEIGHT 1\n"
              "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 50\nDATA binary_compressed\n")
    (tmp_path / "c.pcd").write_bytes(header.encode() + np.array([len(comp), len(body)], "<u4").tobytes() + comp)
    got = read_cloud(tmp_path / "c.pcd")
    np.testing.assert_array_equal(got.xyz, xyz)
    np.testing.assert_array_equal(got.feature(["r", "g", "b"])[0], [10, 20, 30])


def test_lzf_back_reference():
    # literal "abc", then a back-reference of length 3+2=5 at distance 3 -> "abcabcab"
    stream = bytes([2]) + b"abc" + bytes([(3 << 5) | 0, 2])
    assert lzf_decompress(stream, 8) == b"abcabcab"


@pytest.mark.parametrize("ext", ["las", "laz"])
def test_las_round_trip_with_classes(tmp_path, cloud, ext):
    xyz, _ = cloud
    xyz = xyz.astype(np.float64) + [500000.0, 4000000.0, 100.0]  # UTM-like magnitudes
    cls = np.arange(len(xyz)) % 5
    write_las(tmp_path / f"a.{ext}", xyz, classification=cls)
    got = read_cloud(tmp_path / f"a.{ext}")
    np.testing.assert_allclose(got.xyz, xyz, atol=1e-3)  # LAS stores millimetre integers
    np.testing.assert_array_equal(got.point_labels, cls)


def test_npy_npz_text_bin_round_trip(tmp_path, cloud):
    xyz, inten = cloud
    data = np.concatenate([xyz, inten[:, None]], 1)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "a.npz", points=data, labels=np.arange(300))
    np.savetxt(tmp_path / "a.csv", data, delimiter=",", header="x,y,z,intensity", comments="")
    np.savetxt(tmp_path / "a.xyz", data)
    data.astype(np.float32).tofile(tmp_path / "a.bin")
    for name, cols in [("a.npy", "x y z intensity"), ("a.npz", "kitti"), ("a.csv", None), ("a.xyz", ["x", "y", "z", "intensity"]),
                       ("a.bin", "kitti")]:
        got = read_cloud(tmp_path / name, columns=cols)
        np.testing.assert_allclose(got.xyz, xyz, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(got.feature(["intensity"])[:, 0], inten, rtol=1e-5, err_msg=name)
    assert read_cloud(tmp_path / "a.npz", columns="kitti").point_labels.tolist() == list(range(300))
    (tmp_path / "a.pts").write_text("3\n0 0 0\n1 0 0\n0 1 0\n")  # a point count first, as .pts files have
    assert read_cloud(tmp_path / "a.pts").xyz.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_off_surface_sampling_is_area_weighted(tmp_path):
    # two triangles in the plane z=0: the big one has 9x the area of the small one
    verts = np.array([[0, 0, 0], [3, 0, 0], [0, 3, 0], [10, 0, 0], [11, 0, 0], [10, 1, 0]], float)
    write_off(tmp_path / "m.off", verts, [[0, 1, 2], [3, 4, 5]])
    got = read_cloud(tmp_path / "m.off", mesh_points=20000)
    big = (got.xyz[:, 0] < 5).mean()
    assert abs(big - 0.9) < 0.015
    assert np.all(got.xyz[:, 2] == 0)
    # ModelNet's glued header "OFF6 2 0" and a quad are read too
    (tmp_path / "q.off").write_text("OFF4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    v, t = read_off_mesh(tmp_path / "q.off")
    assert v.shape == (4, 3) and t.shape == (2, 3)


def test_real_modelnet10_pcd(modelnet10):
    for cls in ("chair", "toilet", "bathtub"):
        f = sorted((modelnet10 / cls).glob("*.pcd"))[0]
        got = read_cloud(f)
        assert got.xyz.shape == (1024, 3) and np.isfinite(got.xyz).all()
        assert got.xyz.std() > 1.0  # raw ModelNet units, not normalised


@pytest.mark.parametrize("name,cols,n,features", [
    ("kitti_000008.bin", "kitti", 17238, ["intensity"]),
    ("nuscenes_lidar_top.bin", "nuscenes", 34688, ["intensity", "ring"]),
    ("scannet_scene0000_00.bin", "scannet", 40684, ["r", "g", "b"]),
    ("sunrgbd_000017.bin", "sunrgbd", 50000, ["r", "g", "b"]),
])
def test_real_bin_scans(scans, name, cols, n, features):
    got = read_cloud(scans / name, columns=cols)
    assert len(got) == n and got.feature_names == features and np.isfinite(got.xyz).all()


def test_real_bin_with_wrong_columns_names_file_and_fits(scans):
    with pytest.raises(PointCloudError, match=r"kitti_000008\.bin.*5-column.*fit: \[.*4"):
        read_cloud(scans / "kitti_000008.bin", columns="x y z intensity extra")
    with pytest.raises(PointCloudError, match="needs declared columns"):
        read_cloud(scans / "kitti_000008.bin")


def test_real_las(scans):
    got = read_cloud(scans / "simple.las")
    assert len(got) == 1065 and "intensity" in got.feature_names
    assert set(np.unique(got.point_labels)) == {1, 2}


@pytest.mark.parametrize("name,content,match", [
    ("empty.pcd", b"", "empty file"),
    ("bad.pcd", b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4\nTYPE F F F\nPOINTS 3\nDATA ascii\n1 2 3\n", "FIELDS/SIZE/TYPE/COUNT"),
    ("noheader.pcd", b"VERSION 0.7\nFIELDS x y z\n", "no DATA line"),
    ("short.pcd", b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS 10\nDATA binary\n" + b"\0" * 12, "truncated"),
    ("bad.ply", b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n1 2 3\n",
     "header says 2 vertices"),
    ("nomagic.ply", b"hello\nend_header\n", "not a PLY"),
    ("bad.csv", b"x,y,z\n1,2,3\n4,five,6\n", "non-numeric"),
    ("bad.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n", "malformed OFF"),
    ("a.foo", b"1 2 3", "unsupported extension"),
])
def test_bad_files_raise_naming_the_file(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PointCloudError, match=match) as err:
        read_cloud(tmp_path / name)
    assert name in str(err.value)
