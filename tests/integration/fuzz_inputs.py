"""The bad-input fuzz table's cases: ``python fuzz_inputs.py FORMAT CORRUPTION DIR`` runs one case;
``python fuzz_inputs.py --serve DIR TIMEOUT FORMAT:CORRUPTION ...`` imports the reader stacks once and runs
each case in its own forked process with a timeout (the import is most of a case's cost).

A case writes two good files of FORMAT and one corrupted copy (``bad.<ext>``; for TU folders the corruption is
inside the one dataset folder, for DICOM inside one series folder) under DIR, then reads the folder with
the adapter's real dataset twice: under ``data.on_error=raise`` and under ``skip``. Prints one JSON line:
per mode the outcome ``error`` (a DomainfmError naming the bad file), ``skip`` (the bad file counted in the
policy's skipped files), ``unnamed`` (an error of another kind or not naming the file) or ``silent``.
A hang or a native crash is seen by the parent (timeout, negative return code).
"""
from __future__ import annotations

import io
import json
import struct
import sys
import traceback
import zipfile
from pathlib import Path

import numpy as np

FORMATS = ["wav", "flac", "ogg", "nifti", "dicom", "geotiff", "pcd", "ply", "las", "laz", "npy", "npz", "off", "xyz",
           "txt", "bin", "tu", "smiles"]
CORRUPTIONS = ["truncated", "zero-byte", "garbage", "huge-header", "wrong-dtype", "header-body-mismatch"]
NOT_APPLICABLE = {  # no header to lie, or a headerless layout whose dtype is the user's declaration
    ("xyz", "huge-header"), ("txt", "huge-header"), ("bin", "huge-header"), ("bin", "wrong-dtype"),
    ("smiles", "huge-header"), ("flac", "wrong-dtype"), ("ogg", "wrong-dtype"), ("geotiff", "huge-header"),
}
EXT = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg", "nifti": ".nii.gz", "geotiff": ".tif", "pcd": ".pcd", "ply": ".ply",
       "las": ".las", "laz": ".laz", "npy": ".npy", "npz": ".npz", "off": ".off", "xyz": ".xyz", "txt": ".txt", "bin": ".bin",
       "smiles": ".csv"}


# -- good files ----------------------------------------------------------------------------------------
def good_bytes(fmt: str, tmp: Path, seed: int) -> bytes:
    """A valid file of ``fmt`` as bytes (written through the format's real writer)."""
    rng = np.random.default_rng(seed)
    path = tmp / f"g{seed}{EXT.get(fmt, '')}"
    if fmt in ("wav", "flac", "ogg"):
        import soundfile as sf

        sf.write(str(path), rng.normal(0, 0.1, 4000).astype(np.float32), 8000,
                 subtype={"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}[fmt])
    elif fmt == "nifti":
        import nibabel as nib

        nib.save(nib.Nifti1Image(rng.normal(100, 20, (24, 24, 24)).astype(np.float32), np.eye(4)), str(path))
    elif fmt == "geotiff":
        import rasterio
        from rasterio.transform import from_origin

        with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=13, dtype="uint16", crs="EPSG:32633",
                           transform=from_origin(400000, 5500000, 10, 10)) as dst:
            dst.write(rng.integers(100, 3000, (13, 64, 64)).astype(np.uint16))
    elif fmt in ("pcd", "ply", "las", "laz"):
        from modalities.pointcloud import io as pio

        xyz = rng.normal(size=(256, 3)) * 10
        {"pcd": pio.write_pcd, "ply": pio.write_ply, "las": pio.write_las, "laz": pio.write_las}[fmt](path, xyz)
    elif fmt == "npy":
        np.save(path, rng.normal(size=(256, 3)))
    elif fmt == "npz":
        np.savez(path, points=rng.normal(size=(256, 3)))
    elif fmt == "off":
        v = rng.normal(size=(8, 3))
        faces = [(0, 1, 2), (0, 2, 3), (4, 5, 6), (4, 6, 7), (0, 1, 5), (0, 5, 4)]
        path.write_text("OFF\n8 6 0\n" + "".join(f"{a:.5f} {b:.5f} {c:.5f}\n" for a, b, c in v) + "".join(f"3 {a} {b} {c}\n" for a, b, c in faces))
    elif fmt in ("xyz", "txt"):
        np.savetxt(path, rng.normal(size=(256, 3)), fmt="%.5f")
    elif fmt == "bin":
        rng.normal(size=(256, 4)).astype(np.float32).tofile(path)
    elif fmt == "smiles":
        path.write_text("smiles,label\nCCO,a\nc1ccccc1,b\nCC(=O)O,a\nCCN,b\nC1CCCCC1,a\nCCCl,b\n")
    return path.read_bytes()


def write_dicom_series(folder: Path, seed: int, n: int = 4) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series = generate_uid()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID, series
        ds.Modality, ds.InstanceNumber = "MR", k + 1
        ds.Rows = ds.Columns = 16
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 2.0 * k]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = rng.integers(0, 1000, (16, 16)).astype(np.uint16).tobytes()
        pydicom.dcmwrite(str(folder / f"s{k}.dcm"), ds, enforce_file_format=True)


def write_tu(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    name = folder.name
    edges, indicator, node_labels, graph_labels, start = [], [], [], [], 1
    for g in range(12):
        n = int(rng.integers(4, 8))
        for i in range(n):
            j = (i + 1) % n
            edges += [(start + i, start + j), (start + j, start + i)]
        indicator += [g + 1] * n
        node_labels += list(rng.integers(0, 3, n))
        graph_labels.append(g % 2)
        start += n
    (raw / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (raw / f"{name}_graph_indicator.txt").write_text("".join(f"{i}\n" for i in indicator))
    (raw / f"{name}_node_labels.txt").write_text("".join(f"{x}\n" for x in node_labels))
    (raw / f"{name}_graph_labels.txt").write_text("".join(f"{x}\n" for x in graph_labels))


# -- corruptions ---------------------------------------------------------------------------------------
def patch(b: bytes, offset: int, value: bytes) -> bytes:
    return b[:offset] + value + b[offset + len(value):]


def corrupt(fmt: str, kind: str, good: bytes) -> bytes:
    """The corrupted bytes of one file (for TU and DICOM: of the one file corrupted inside the folder)."""
    rng = np.random.default_rng(99)
    if kind == "truncated":  # mid-record: a text file cut exactly at a line end is a valid, shorter file
        cut = int(len(good) * 0.6)
        while cut > 1 and good[cut - 1: cut] in (b"\n", b"\r", b","):
            cut -= 1
        return good[:cut]
    if kind == "zero-byte":
        return b""
    if kind == "garbage":
        return rng.integers(0, 256, len(good), dtype=np.uint8).tobytes()
    text = fmt in ("pcd", "ply", "off", "xyz", "txt", "tu", "smiles")
    if fmt == "wav":
        data = good.find(b"data")
        if kind == "huge-header":
            return patch(good, data + 4, struct.pack("<I", 0x7FFFFFF0))
        if kind == "wrong-dtype":
            return patch(good, 20, struct.pack("<H", 0x0055))  # MPEG layer 3 format code in a PCM file
        return patch(good, data + 4, struct.pack("<I", (len(good) - data - 8) // 2))  # header: half the audio
    if fmt in ("flac", "ogg"):  # huge-header / mismatch: a claimed length far beyond the body
        if fmt == "flac":
            return patch(good, 18, b"\xff" * 8)  # STREAMINFO: rates, channels, total samples all ones
        return patch(good, good.find(b"OggS", 4) + 6, b"\xff" * 8)  # granule position of the second page
    if fmt == "nifti":
        import gzip

        raw = bytearray(gzip.decompress(good))
        if kind == "huge-header":
            raw[42:48] = struct.pack("<hhh", 30000, 30000, 30000)
        elif kind == "wrong-dtype":
            raw[70:72] = struct.pack("<h", 1234)  # no such NIfTI datatype code
        else:
            raw[46:48] = struct.pack("<h", 30)  # z: 30 slices declared, 24 stored
        return gzip.compress(bytes(raw))
    if fmt == "dicom":
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(good))
        if kind == "huge-header":
            ds.Rows = 60000
        elif kind == "wrong-dtype":
            ds.BitsAllocated = 24
        else:
            ds.Rows = 17
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    if fmt == "geotiff":  # wrong dtype: complex numbers; mismatch: 4 bands where the preset declares 13
        import rasterio
        from rasterio.io import MemoryFile
        from rasterio.transform import from_origin

        count, dtype = (1, "complex64") if kind == "wrong-dtype" else (4, "uint16")
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", height=64, width=64, count=count, dtype=dtype, crs="EPSG:32633",
                          transform=from_origin(400000, 5500000, 10, 10)) as dst:
                dst.write(np.ones((count, 64, 64), dtype=dtype))
            return mem.read()
    if fmt == "pcd":
        s = good.decode("latin-1")
        if kind == "huge-header":
            s = s.replace("POINTS 256", "POINTS 1000000000000").replace("WIDTH 256", "WIDTH 1000000000000")
        elif kind == "wrong-dtype":
            s = s.replace("TYPE F F F", "TYPE X X X")
        else:
            s = s.replace("POINTS 256", "POINTS 128").replace("WIDTH 256", "WIDTH 128")
        return s.encode("latin-1")
    if fmt == "ply":
        s = good.decode("latin-1")
        if kind == "huge-header":
            return s.replace("element vertex 256", "element vertex 1000000000000").encode("latin-1")
        if kind == "wrong-dtype":
            return s.replace("property float x", "property quad x").encode("latin-1")
        return s.replace("element vertex 256", "element vertex 128").encode("latin-1")
    if fmt in ("las", "laz"):
        count = struct.unpack("<I", good[107:111])[0]
        if kind == "huge-header":
            return patch(good, 107, struct.pack("<I", 4_000_000_000))
        if kind == "wrong-dtype":
            return patch(good, 104, bytes([77]))
        return patch(good, 107, struct.pack("<I", count + 10))
    if fmt in ("npy", "npz"):
        arr = np.random.default_rng(1).normal(size=(256, 3))
        if kind == "wrong-dtype":
            buf = io.BytesIO()
            np.save(buf, arr.astype(np.complex128))
            member = buf.getvalue()
        else:
            buf = io.BytesIO()
            np.save(buf, arr)
            member = buf.getvalue().replace(b"(256, 3)", b"(9999999999, 3)" if kind == "huge-header" else b"(300, 3)")
        if fmt == "npy":
            return member
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("points.npy", member)
        return out.getvalue()
    if fmt == "off":
        s = good.decode()
        if kind == "huge-header":
            return s.replace("8 6 0", "1000000000 6 0", 1).encode()
        if kind == "wrong-dtype":
            return s.replace(".", "x").encode()
        return s.replace("8 6 0", "6 6 0", 1).encode()
    if fmt in ("xyz", "txt"):
        lines = good.decode().splitlines()
        if kind == "wrong-dtype":
            lines[5] = "a b c"
        else:
            lines[5] = lines[5] + " 1.0 2.0"
        return ("\n".join(lines) + "\n").encode()
    if fmt == "bin":  # mismatch: 5-column records where 4 (kitti) are declared, not a whole number of records
        return np.random.default_rng(1).normal(size=(65, 5)).astype(np.float32).tobytes()
    if fmt == "tu":  # the corrupted file is <NAME>_A.txt
        lines = good.decode().splitlines()
        if kind == "huge-header":
            lines[0] = "1, 1000000000000"
        elif kind == "wrong-dtype":
            lines[0] = "1.5, x"
        else:
            lines[0] = "1, 999"  # an edge to a node the graph indicator does not have
        return ("\n".join(lines) + "\n").encode()
    if fmt == "smiles":
        lines = good.decode().splitlines()
        if kind == "wrong-dtype":
            lines[2] = "12345,b"
        else:
            lines[2] = "c1ccccc1,b,extra"
        return ("\n".join(lines) + "\n").encode()
    assert not text
    raise ValueError(f"no {kind} corruption for {fmt}")


# -- reading -------------------------------------------------------------------------------------------
def build(fmt: str, kind: str, root: Path) -> tuple[str, dict, dict, str]:
    """(modality, adapter config, data spec, the name the error must carry)."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if fmt == "tu":
        folder = data / "TOY"
        write_tu(folder, 0)
        target = folder / "raw" / "TOY_A.txt"
        target.write_bytes(corrupt(fmt, kind, target.read_bytes()))
        return "graph", {}, {"root": str(folder)}, "TOY"
    if fmt == "dicom":
        for k in range(2):
            write_dicom_series(data / f"good{k}", k)
        write_dicom_series(data / "bad", 5)
        target = data / "bad" / "s2.dcm"
        target.write_bytes(corrupt(fmt, kind, target.read_bytes()))
        return "medical", {"patch": [4, 4, 4], "roi": [8, 8, 4], "sw_roi": [8, 8, 4], "cache": "none", "spacing": [1.0, 1.0, 2.0]}, \
            {"root": str(data)}, "bad"
    data.mkdir(parents=True, exist_ok=True)
    ext = EXT[fmt]
    for k in range(2):
        (data / f"good{k}{ext}").write_bytes(good_bytes(fmt, tmp, k))
    (data / f"bad{ext}").write_bytes(corrupt(fmt, kind, good_bytes(fmt, tmp, 5)))
    if fmt in ("wav", "flac", "ogg"):
        return "speech", {}, {"root": str(data)}, "bad"
    if fmt == "nifti":
        return "medical", {"patch": [8, 8, 8], "roi": [16, 16, 16], "sw_roi": [16, 16, 16], "cache": "none", "spacing": [2.0, 2.0, 2.0]}, \
            {"root": str(data)}, "bad"
    if fmt == "geotiff":
        return "earth", {"preset": "eurosat_ms"}, {"root": str(data)}, "bad"
    if fmt == "smiles":
        return "graph", {}, {"root": str(data / "bad.csv")}, "bad"
    cfg = {"points": 64, "groups": 8, "group_size": 8, "mesh_points": 256}
    if fmt == "bin":
        cfg["columns"] = "kitti"
    return "pointcloud", cfg, {"root": str(data)}, "bad"


def read_all(modality: str, cfg: dict, spec: dict, on_error: str):
    from modalities.base import adapter_from_config

    ds = adapter_from_config(modality, cfg).dataset({**spec, "on_error": on_error}, train=False)
    for i in range(len(ds)):
        ds[i]
    return ds


def outcome(modality: str, cfg: dict, spec: dict, on_error: str, name: str) -> tuple[str, str]:
    from foundation.errors import DomainfmError
    from foundation.inputs import policy_of

    try:
        ds = read_all(modality, cfg, spec, on_error)
    except DomainfmError as err:
        text = " ".join(str(err).split())
        return ("error" if name in text else "unnamed"), text[:240]
    except Exception as err:  # noqa: BLE001 - the table must name what escaped the policy
        return "unnamed", f"{type(err).__name__}: {' '.join(str(err).split())[:200]} | {traceback.format_exc(limit=-2)[-300:]}"
    pol = policy_of(ds)
    bad = [(p, r) for p, r in (pol.skipped.items() if pol else []) if name in p]
    if bad:
        return "skip", f"{bad[0][0].rsplit('/', 1)[-1]}: {bad[0][1][:200]}"
    return "silent", f"{len(ds)} samples, nothing reported"


def run_one(fmt: str, kind: str, root: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    modality, cfg, spec, name = build(fmt, kind, root)
    result = {"format": fmt, "corruption": kind}
    for mode in ("raise", "skip"):
        result[mode], result[mode + "_detail"] = outcome(modality, cfg, spec, mode, name)
    return result


def serve(root: Path, cases: list[tuple[str, str]], timeout: float) -> None:
    """Each case in its own forked process with a timeout, after importing the reader stacks once.

    Nothing here has run a torch op (no OpenMP pool to break across fork); a child that outlives
    ``timeout`` is killed and reported as a hang, one that dies of a signal as a crash.
    """
    import os
    import signal
    import time

    # modalities.base before monai: importing foundation after transformers is loaded (monai loads it) runs
    # foundation.hf at once, which needs modalities.base complete (a circular import otherwise)
    for module in ("torch", "modalities.base", "monai.data", "rasterio", "soundfile", "nibabel", "pydicom", "laspy", "torch_geometric.data",
                   "rdkit.Chem", "modalities.speech.adapter", "modalities.medical.adapter", "modalities.earth.adapter",
                   "modalities.pointcloud.adapter", "modalities.graph.adapter"):
        __import__(module)
    for fmt, kind in cases:
        work = root / f"{fmt}-{kind}"
        work.mkdir(parents=True, exist_ok=True)
        out = work / "result.json"
        pid = os.fork()
        if pid == 0:  # the case
            code = 0
            try:
                out.write_text(json.dumps(run_one(fmt, kind, work)))
            except BaseException:  # noqa: BLE001 - reported by the parent as no-result
                (work / "error.txt").write_text(traceback.format_exc())
                code = 3
            os._exit(code)
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.05)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            row = {"format": fmt, "corruption": kind, "raise": "hang", "skip": "hang", "raise_detail": f"no result in {timeout:g} s"}
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            row = {"format": fmt, "corruption": kind, "raise": "crash", "skip": "crash", "raise_detail": f"killed by signal {sig}"}
        elif out.exists():
            row = json.loads(out.read_text())
        else:
            err = (work / "error.txt").read_text() if (work / "error.txt").exists() else ""
            row = {"format": fmt, "corruption": kind, "raise": "no-result", "skip": "no-result", "raise_detail": err[-300:]}
        print("FUZZ " + json.dumps(row), flush=True)


def main() -> None:
    if sys.argv[1] == "--serve":  # --serve ROOT TIMEOUT fmt:kind ...
        serve(Path(sys.argv[2]), [tuple(c.split(":", 1)) for c in sys.argv[4:]], float(sys.argv[3]))
        return
    print("FUZZ " + json.dumps(run_one(sys.argv[1], sys.argv[2], Path(sys.argv[3]))), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
