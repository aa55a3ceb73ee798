"""Readers (and the few writers tests and tasks need) for the point-cloud files users have.

Every reader returns a :class:`PointCloud`: float64 xyz (LiDAR coordinates in UTM lose centimetres
in float32, so we centre before casting), named per-point feature channels, and per-point labels
when the format carries them (LAS classification). Errors name the file and say what is wrong.

Formats: PLY (ascii, binary little/big endian), PCD (ascii, binary, binary_compressed), LAS/LAZ
(laspy + lazrs), NPY/NPZ, TXT/XYZ/PTS/CSV, headerless ``.bin`` with declared columns, OFF meshes
(points sampled on the surface, area-weighted).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.errors import DomainfmError

# Column layouts of the headerless float32 ``.bin`` files the field ships.
COLUMN_PRESETS: dict[str, list[str]] = {
    "kitti": ["x", "y", "z", "intensity"],
    "nuscenes": ["x", "y", "z", "intensity", "ring"],
    "scannet": ["x", "y", "z", "r", "g", "b"],
    "sunrgbd": ["x", "y", "z", "r", "g", "b"],
    "xyz": ["x", "y", "z"],
}

EXTENSIONS = (".ply", ".pcd", ".las", ".laz", ".npy", ".npz", ".txt", ".xyz", ".pts", ".csv", ".bin", ".off")


class PointCloudError(DomainfmError, ValueError):  # DomainfmError: the CLI prints it as one line
    """A file that cannot be read as a point cloud; the message names the file and the problem."""


@dataclass
class PointCloud:
    xyz: np.ndarray  # [N, 3] float64
    features: np.ndarray = None  # [N, F] float32
    feature_names: list[str] = field(default_factory=list)
    point_labels: np.ndarray | None = None  # [N] int, e.g. LAS classification
    path: str = ""

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        if self.features is None:
            self.features = np.zeros((len(self.xyz), 0), np.float32)
        self.features = np.asarray(self.features, dtype=np.float32).reshape(len(self.xyz), -1)

    def __len__(self) -> int:
        return len(self.xyz)

    def feature(self, names: list[str]) -> np.ndarray:
        """The named channels [N, len(names)]; a missing name is an error naming the file."""
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            raise PointCloudError(f"{self.path}: no per-point channel(s) {missing}; it has {self.feature_names}")
        idx = [self.feature_names.index(n) for n in names]
        return self.features[:, idx]

    def subset(self, index: np.ndarray) -> "PointCloud":
        labels = None if self.point_labels is None else self.point_labels[index]
        return PointCloud(self.xyz[index], self.features[index], list(self.feature_names), labels, self.path)


def parse_columns(columns: str | list[str] | None, path: str | Path, n_cols: int | None = None) -> list[str]:
    """Declared columns: a preset name (``kitti``), ``"x y z intensity"`` or a list; ``_`` skips one."""
    if columns is None:
        if n_cols is None or n_cols < 3:
            raise PointCloudError(f"{path}: columns must be declared (adapter.columns, e.g. 'kitti' or 'x y z intensity')")
        return ["x", "y", "z"] + [f"f{i}" for i in range(n_cols - 3)]
    if isinstance(columns, str):
        cols = COLUMN_PRESETS.get(columns.lower(), re.split(r"[\s,]+", columns.strip()))
    else:
        cols = [str(c) for c in columns]
    if not {"x", "y", "z"} <= set(cols):
        raise PointCloudError(f"{path}: declared columns {cols} must include x, y and z")
    return cols


def _from_columns(data: np.ndarray, cols: list[str], path: str | Path, labels_column: str | None = None) -> PointCloud:
    if data.ndim != 2 or data.shape[1] != len(cols):
        raise PointCloudError(f"{path}: {data.shape[-1] if data.ndim == 2 else data.shape} columns in the file, {len(cols)} declared ({cols})")
    xyz = np.stack([data[:, cols.index(a)] for a in "xyz"], 1)
    names = [c for c in cols if c not in ("x", "y", "z", "_")]
    feats = np.stack([data[:, cols.index(c)] for c in names], 1) if names else None
    labels = None
    if labels_column and labels_column in cols:
        labels = data[:, cols.index(labels_column)].astype(np.int64)
    return PointCloud(xyz, feats, names, labels, str(path))


# -- PLY ---------------------------------------------------------------------------------------------
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def read_ply(path: str | Path) -> PointCloud:
    """The ``vertex`` element of a PLY file (ascii or binary); other properties become features."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise PointCloudError(f"{path}: not a PLY file (no 'ply' magic or no 'end_header')")
    body_start = raw.index(b"\n", end) + 1
    fmt, elements = None, []  # elements: [name, count, [(prop, type) | (prop, 'list', ct, it)]]
    for line in raw[:end].decode("ascii", "replace").splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append([parts[1], int(parts[2]), []])
        elif parts[0] == "property":
            if not elements:
                raise PointCloudError(f"{path}: malformed PLY header (property before any element)")
            if parts[1] == "list":
                elements[-1][2].append((parts[4], "list", parts[2], parts[3]))
            else:
                if parts[1] not in _PLY_TYPES:
                    raise PointCloudError(f"{path}: unknown PLY property type {parts[1]!r}")
                elements[-1][2].append((parts[2], parts[1]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointCloudError(f"{path}: unknown PLY format {fmt!r}")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise PointCloudError(f"{path}: PLY file has no 'vertex' element")
    vi = names.index("vertex")
    count, props = elements[vi][1], elements[vi][2]
    if any(len(p) > 2 for p in props):
        raise PointCloudError(f"{path}: list properties on PLY vertices are not supported")
    cols = [p[0] for p in props]
    if count == 0:
        raise PointCloudError(f"{path}: PLY file has no vertices")
    if fmt == "ascii":
        lines = raw[body_start:].decode("ascii", "replace").splitlines()
        skip = sum(e[1] for e in elements[:vi])
        rows = [ln for ln in lines[skip: skip + count]]
        if len(rows) < count:
            raise PointCloudError(f"{path}: header says {count} vertices, file has {len(rows)} lines")
        total = sum(e[1] for e in elements)
        if len([ln for ln in lines if ln.strip()]) > total:
            raise PointCloudError(f"{path}: PLY header declares {total} element lines ({count} vertices), the body holds more "
                                  "(fix the header's element counts or re-export the file)")
        try:
            data = np.array([r.split()[: len(cols)] for r in rows], dtype=np.float64)
        except ValueError as err:
            raise PointCloudError(f"{path}: malformed PLY vertex line ({err})") from err
    else:
        if any(len(p) > 2 for e in elements[:vi] for p in e[2]):
            raise PointCloudError(f"{path}: elements with lists before 'vertex' are not supported")
        order = "<" if fmt == "binary_little_endian" else ">"
        offset = body_start
        for e in elements[:vi]:
            offset += e[1] * np.dtype([(p[0], order + _PLY_TYPES[p[1]]) for p in e[2]]).itemsize
        dtype = np.dtype([(p[0], order + _PLY_TYPES[p[1]]) for p in props])
        if len(raw) - offset < count * dtype.itemsize:
            raise PointCloudError(f"{path}: truncated PLY body ({len(raw) - offset} bytes for {count} vertices of {dtype.itemsize})")
        if not any(len(p) > 2 for e in elements[vi + 1:] for p in e[2]):  # fixed-size records: the body size is known
            end_all = offset + count * dtype.itemsize + sum(e[1] * np.dtype([(p[0], order + _PLY_TYPES[p[1]]) for p in e[2]]).itemsize
                                                           for e in elements[vi + 1:])
            if len(raw) - end_all >= dtype.itemsize:
                raise PointCloudError(f"{path}: PLY header declares {count} vertices, the binary body holds "
                                      f"{(len(raw) - offset) // dtype.itemsize} (fix the header or re-export the file)")
        rec = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        data = np.stack([rec[c].astype(np.float64) for c in cols], 1)
    return _from_columns(data, cols, path, labels_column="label" if "label" in cols else None)


def write_ply(path: str | Path, xyz: np.ndarray, features: dict[str, np.ndarray] | None = None, binary: bool = True) -> None:
    """Write float32 vertices (and float32 feature properties) as PLY."""
    cols, data = _float_columns(xyz, features)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {len(xyz)}"]
    header += [f"property float {c}" for c in cols] + ["end_header"]
    _write_header_and_rows(path, header, data, binary)


def _float_columns(xyz: np.ndarray, features: dict[str, np.ndarray] | None) -> tuple[list[str], np.ndarray]:
    """Column names and a float32 [N, C] table of xyz plus feature columns (PLY and PCD writers)."""
    cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], **(features or {})}
    return list(cols), np.stack([np.asarray(v, np.float32) for v in cols.values()], 1)


def _write_header_and_rows(path: str | Path, header: list[str], data: np.ndarray, binary: bool) -> None:
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        if binary:
            f.write(data.astype("<f4").tobytes())
        else:
            np.savetxt(f, data, fmt="%.7g")


# -- PCD ---------------------------------------------------------------------------------------------
_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def lzf_decompress(data: bytes, size: int) -> bytes:
    """LZF as PCL's ``binary_compressed`` uses it (pure Python; fine for files of a few MB)."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i: i + ctrl + 1]
            i += ctrl + 1
        else:
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            if ref < 0:
                raise ValueError("LZF back-reference before the start of the output")
            for _ in range(length + 2):
                out.append(out[ref])
                ref += 1
    if len(out) != size:
        raise ValueError(f"LZF gave {len(out)} bytes, header says {size}")
    return bytes(out)


def read_pcd(path: str | Path) -> PointCloud:
    """PCL's PCD (v0.5-0.7): ascii, binary or binary_compressed; packed ``rgb`` becomes r, g, b."""
    raw = Path(path).read_bytes()
    if not raw:
        raise PointCloudError(f"{path}: empty file")
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise PointCloudError(f"{path}: malformed PCD header (no DATA line)")
        line = raw[pos:nl].decode("ascii", "replace").strip()
        pos = nl + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        fields = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        mode = header["DATA"][0].lower()
    except (KeyError, ValueError, IndexError) as err:
        raise PointCloudError(f"{path}: malformed PCD header ({err!r})") from err
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise PointCloudError(f"{path}: malformed PCD header (FIELDS/SIZE/TYPE/COUNT lengths differ)")
    if n == 0:
        raise PointCloudError(f"{path}: PCD file has no points")
    try:
        dtype = np.dtype([(f if c == 1 else f"{f}", f"<{_PCD_TYPES[(t, s)]}", (c,) if c > 1 else ())
                          for f, s, t, c in zip(_unique(fields), sizes, types, counts)])
    except KeyError as err:
        raise PointCloudError(f"{path}: unsupported PCD field type/size {err}") from err
    body = raw[pos:]
    if mode == "ascii":
        try:
            flat = np.array(body.decode("ascii", "replace").split(), dtype=np.float64)
            per = sum(counts)
            if flat.size != n * per:
                raise PointCloudError(f"{path}: PCD header says {n} points, the ascii body holds {flat.size / per:g} "
                                      "(fix the header's POINTS/WIDTH/HEIGHT or re-export the file)")
            vals = flat[: n * per].reshape(n, per)
        except ValueError as err:
            raise PointCloudError(f"{path}: malformed ascii PCD body ({err})") from err
        rec = np.zeros(n, dtype)
        col = 0
        for name, c in zip(dtype.names, counts):
            rec[name] = vals[:, col: col + c] if c > 1 else vals[:, col]
            col += c
    elif mode == "binary":
        if len(body) < n * dtype.itemsize:
            raise PointCloudError(f"{path}: truncated PCD body ({len(body)} bytes, {n} points x {dtype.itemsize} expected)")
        if len(body) - n * dtype.itemsize >= dtype.itemsize:  # at least one whole extra point: the header undercounts
            raise PointCloudError(f"{path}: PCD header says {n} points, the binary body holds {len(body) // dtype.itemsize} "
                                  "(fix the header's POINTS/WIDTH/HEIGHT or re-export the file)")
        rec = np.frombuffer(body, dtype=dtype, count=n)
    elif mode == "binary_compressed":
        if len(body) < 8:
            raise PointCloudError(f"{path}: truncated binary_compressed PCD body")
        csize, usize = np.frombuffer(body[:8], "<u4")
        try:
            data = lzf_decompress(body[8: 8 + int(csize)], int(usize))
        except (ValueError, IndexError) as err:
            raise PointCloudError(f"{path}: corrupt binary_compressed PCD body ({err})") from err
        rec = np.zeros(n, dtype)
        off = 0
        for name in dtype.names:  # column-major: all of field 1, then all of field 2...
            ft = dtype.fields[name][0]
            nbytes = ft.itemsize * n
            rec[name] = np.frombuffer(data[off: off + nbytes], ft.base, count=n * max(1, int(np.prod(ft.shape)))).reshape((n, *ft.shape))
            off += nbytes
    else:
        raise PointCloudError(f"{path}: unknown PCD DATA mode {mode!r}")
    names = list(dtype.names)
    if not {"x", "y", "z"} <= set(names):
        raise PointCloudError(f"{path}: PCD fields {fields} lack x, y or z")
    cols, arrays = [], []
    for name in names:
        v = rec[name]
        if name in ("rgb", "rgba"):
            packed = np.ascontiguousarray(v).view(np.uint32) if v.dtype.itemsize == 4 else v.astype(np.uint32)
            for ch, shift in (("r", 16), ("g", 8), ("b", 0)):
                cols.append(ch)
                arrays.append(((packed >> shift) & 255).astype(np.float64))
        elif v.ndim == 1 and name != "_":
            cols.append(name)
            arrays.append(v.astype(np.float64))
    labels = "label" if "label" in cols else None
    return _from_columns(np.stack(arrays, 1), cols, path, labels_column=labels)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def write_pcd(path: str | Path, xyz: np.ndarray, features: dict[str, np.ndarray] | None = None, binary: bool = True) -> None:
    cols, data = _float_columns(xyz, features)
    k = len(cols)
    header = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(cols), "SIZE " + " ".join(["4"] * k),
              "TYPE " + " ".join(["F"] * k), "COUNT " + " ".join(["1"] * k), f"WIDTH {len(xyz)}", "HEIGHT 1",
              "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {len(xyz)}", f"DATA {'binary' if binary else 'ascii'}"]
    _write_header_and_rows(path, header, data, binary)


# -- LAS / LAZ ---------------------------------------------------------------------------------------
def check_las_header(path: str | Path) -> None:
    """Header against body before laspy allocates anything: a header claiming more points than the file
    can hold (truncated file, or a corrupt count) is refused, naming the file. LAZ is compressed, so
    only an absurd claim (over 64x the file size) is refused there."""
    raw = Path(path).read_bytes()[:375] if Path(path).stat().st_size >= 227 else Path(path).read_bytes()
    if len(raw) < 227 or raw[:4] != b"LASF":
        raise PointCloudError(f"{path}: not a LAS/LAZ file (no LASF signature or a header shorter than 227 bytes)")
    major, minor = raw[24], raw[25]
    offset = int.from_bytes(raw[96:100], "little")
    fmt, length = raw[104] & 0x3F, int.from_bytes(raw[105:107], "little")
    count = int.from_bytes(raw[107:111], "little")
    if (major, minor) >= (1, 4) and len(raw) >= 255:
        count = max(count, int.from_bytes(raw[247:255], "little"))
    size = Path(path).stat().st_size
    need = offset + count * length
    compressed = str(path).lower().endswith(".laz") or bool(raw[104] & 0x80)
    if length == 0 or fmt > 10:
        raise PointCloudError(f"{path}: LAS header has point format {fmt} with records of {length} bytes")
    if (not compressed and need > size) or (compressed and count * length > 64 * size + 4096):
        raise PointCloudError(f"{path}: LAS header declares {count} points of {length} bytes, the file holds {size} bytes "
                              "(truncated or corrupt; re-export the file)")


_LAS_FEATURES = ("intensity", "return_number", "number_of_returns", "red", "green", "blue", "nir", "gps_time")


def read_las(path: str | Path) -> PointCloud:
    """LAS/LAZ via laspy (LAZ through the lazrs backend); classification becomes per-point labels."""
    import laspy

    check_las_header(path)
    try:
        las = laspy.read(str(path))
    except Exception as err:  # laspy raises several types for bad files
        raise PointCloudError(f"{path}: cannot read LAS/LAZ ({type(err).__name__}: {err})") from err
    if len(las.points) == 0:
        raise PointCloudError(f"{path}: LAS file has no points")
    xyz = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], 1)
    dims = set(las.point_format.dimension_names)
    names = [d for d in _LAS_FEATURES if d in dims]
    feats = np.stack([np.asarray(las[d], np.float64) for d in names], 1) if names else None
    labels = np.asarray(las.classification, np.int64) if "classification" in dims else None
    return PointCloud(xyz, feats, names, labels, str(path))


def write_las(path: str | Path, xyz: np.ndarray, classification: np.ndarray | None = None,
              intensity: np.ndarray | None = None, template: str | Path | None = None) -> None:
    """Write points (and per-point classes, e.g. a segmentation head's output) as LAS/LAZ.

    With ``template`` the header (scales, offsets, CRS, point format) is copied from that file.
    """
    import laspy

    if template is not None:
        src = laspy.read(str(template))
        header = laspy.LasHeader(point_format=src.header.point_format, version=src.header.version)
        header.scales, header.offsets = src.header.scales, src.header.offsets
        for vlr in src.header.vlrs:
            header.vlrs.append(vlr)
    else:
        header = laspy.LasHeader(point_format=3, version="1.2")
        header.offsets = np.floor(xyz.min(0))
        header.scales = np.array([0.001, 0.001, 0.001])
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if classification is not None:
        las.classification = np.asarray(classification, np.uint8)
    if intensity is not None:
        las.intensity = np.asarray(intensity, np.uint16)
    las.write(str(path))


# -- arrays and text ---------------------------------------------------------------------------------
def read_npy(path: str | Path, columns=None) -> PointCloud:
    """``.npy`` [N, C] or ``.npz`` (key ``points``/``xyz``/first array; optional ``labels``)."""
    try:
        obj = np.load(path, allow_pickle=False)
    except Exception as err:
        raise PointCloudError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    labels = None
    if isinstance(obj, np.lib.npyio.NpzFile):
        keys = list(obj.keys())
        key = next((k for k in ("points", "xyz", "pos", "data") if k in keys), keys[0] if keys else None)
        if key is None:
            raise PointCloudError(f"{path}: empty .npz archive")
        data = obj[key]
        labels = obj["labels"] if "labels" in keys and key != "labels" else None
    else:
        data = obj
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating) or data.dtype == bool):
        raise PointCloudError(f"{path}: array of dtype {data.dtype} is not real numbers (expected float or int point rows)")
    data = np.asarray(data, np.float64)
    if data.ndim != 2 or data.shape[0] == 0:
        raise PointCloudError(f"{path}: expected a non-empty [N, C>=3] array, got shape {data.shape}")
    cloud = _from_columns(data, parse_columns(columns, path, data.shape[1]), path)
    if labels is not None:
        if len(labels) != len(cloud):
            raise PointCloudError(f"{path}: 'labels' has {len(labels)} entries for {len(cloud)} points")
        cloud.point_labels = np.asarray(labels, np.int64)
    return cloud


def read_text(path: str | Path, columns=None) -> PointCloud:
    """TXT/XYZ/PTS/CSV: comma, semicolon or whitespace separated; a non-numeric first line is a header."""
    text = Path(path).read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise PointCloudError(f"{path}: empty file")
    sep = "," if "," in lines[0] else (";" if ";" in lines[0] else None)
    first = [t.strip() for t in (lines[0].split(sep) if sep else lines[0].split())]
    header = None
    try:
        [float(t) for t in first]
    except ValueError:
        header, lines = [t.lower() for t in first], lines[1:]
    if len(lines) > 1 and len(first) == 1 and header is None and len(lines[1].split(sep) if sep else lines[1].split()) >= 3:
        lines = lines[1:]  # .pts (and some .xyz) files start with the point count
    try:
        data = np.array([[float(t) for t in (ln.split(sep) if sep else ln.split())] for ln in lines], dtype=np.float64)
    except ValueError as err:
        raise PointCloudError(f"{path}: non-numeric value in the point rows ({err})") from err
    if data.ndim != 2 or data.shape[0] == 0:
        raise PointCloudError(f"{path}: no point rows (or rows of different lengths)")
    cols = parse_columns(columns if columns is not None else header, path, data.shape[1])
    return _from_columns(data, cols, path)


def read_bin(path: str | Path, columns=None, dtype: str = "float32") -> PointCloud:
    """Headerless binary records of declared columns (KITTI ``x y z intensity`` float32...)."""
    if columns is None:
        raise PointCloudError(f"{path}: a headerless .bin needs declared columns (adapter.columns: kitti, nuscenes, scannet, sunrgbd or 'x y z ...')")
    cols = parse_columns(columns, path)
    raw = Path(path).read_bytes()
    item = np.dtype(dtype).itemsize * len(cols)
    if not raw:
        raise PointCloudError(f"{path}: empty file")
    if len(raw) % item:
        guesses = [c for c in range(3, 10) if len(raw) % (np.dtype(dtype).itemsize * c) == 0]
        raise PointCloudError(f"{path}: {len(raw)} bytes is not a whole number of {len(cols)}-column {dtype} records; "
                              f"column counts that fit: {guesses}")
    data = np.frombuffer(raw, dtype=dtype).reshape(-1, len(cols)).astype(np.float64)
    return _from_columns(data, cols, path)


# -- OFF meshes --------------------------------------------------------------------------------------
def read_off_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [T, 3] (polygons fan-triangulated); tolerates ModelNet's 'OFF123 456 0'."""
    tokens = Path(path).read_text(errors="replace").split()
    if not tokens or not tokens[0].upper().startswith("OFF"):
        raise PointCloudError(f"{path}: not an OFF file (no 'OFF' magic)")
    rest = tokens[0][3:]
    tokens = ([rest] if rest else []) + tokens[1:]
    try:
        nv, nf = int(tokens[0]), int(tokens[1])
        vals = tokens[3:]
        verts = np.array(vals[: 3 * nv], dtype=np.float64).reshape(nv, 3)
        tris, i = [], 3 * nv
        for _ in range(nf):
            k = int(vals[i])
            idx = [int(v) for v in vals[i + 1: i + 1 + k]]
            tris += [(idx[0], idx[j], idx[j + 1]) for j in range(1, k - 1)]
            i += 1 + k
        if i != len(vals):
            raise PointCloudError(f"{path}: OFF header declares {nv} vertices and {nf} faces, the body holds "
                                  f"{len(vals) - i} more values (header/body mismatch; re-export the file)")
    except (ValueError, IndexError) as err:
        raise PointCloudError(f"{path}: malformed OFF body ({err})") from err
    if nv == 0 or not tris:
        raise PointCloudError(f"{path}: OFF mesh has no vertices or no faces")
    tris = np.array(tris, dtype=np.int64)
    if tris.max() >= nv or tris.min() < 0:
        raise PointCloudError(f"{path}: OFF face refers to a vertex outside 0..{nv - 1}")
    return verts, tris


def sample_surface(verts: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the surface: triangles drawn by area, then uniform barycentric points."""
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if area.sum() <= 0:
        raise PointCloudError("mesh has zero surface area")
    t = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[t] + u[:, None] * (b[t] - a[t]) + v[:, None] * (c[t] - a[t])


def write_off(path: str | Path, verts: np.ndarray, faces: np.ndarray) -> None:
    with open(path, "w") as f:
        f.write(f"OFF\n{len(verts)} {len(faces)} 0\n")
        for v in verts:
            f.write(f"{v[0]:.6f} {v[1]:.6f} {v[2]:.6f}\n")
        for face in faces:
            f.write(f"{len(face)} " + " ".join(str(int(i)) for i in face) + "\n")


# -- dispatch ----------------------------------------------------------------------------------------
def read_cloud(path: str | Path, columns=None, mesh_points: int = 8192, seed: int = 0) -> PointCloud:
    """Read any supported file; ``columns`` declares .bin/.npy/.txt layouts, ``mesh_points`` OFF sampling."""
    path = Path(path)
    if not path.exists():
        raise PointCloudError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise PointCloudError(f"{path}: empty file")
    ext = path.suffix.lower()
    if ext == ".ply":
        return read_ply(path)
    if ext == ".pcd":
        return read_pcd(path)
    if ext in (".las", ".laz"):
        return read_las(path)
    if ext in (".npy", ".npz"):
        return read_npy(path, columns)
    if ext in (".txt", ".xyz", ".pts", ".csv"):
        return read_text(path, columns)
    if ext == ".bin":
        return read_bin(path, columns)
    if ext == ".off":
        verts, tris = read_off_mesh(path)
        try:
            return PointCloud(sample_surface(verts, tris, mesh_points, np.random.default_rng(seed)), path=str(path))
        except PointCloudError as err:
            raise PointCloudError(f"{path}: {err}") from err
    raise PointCloudError(f"{path}: unsupported extension {ext!r}; supported: {list(EXTENSIONS)}")
