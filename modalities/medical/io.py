"""Reading medical volumes through MONAI without ITK: NIfTI via nibabel, DICOM series via pydicom.

Why a reader of our own for DICOM: MONAI's ``PydicomReader`` stacks a series by ``InstanceNumber``
and takes spacing from the z coordinate alone, so a series whose files were renamed or renumbered,
or acquired obliquely, comes out in the wrong order or with the wrong slice spacing. We keep MONAI's
reader (pixel decoding, rescale slope/intercept, affine) and replace only the stacking step: slices
are ordered by their position along the slice normal, and a gap, a duplicate or a slice with another
size or orientation is an error that names the folder and the slice.
"""
from __future__ import annotations

import gzip
import logging
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from monai.data import NibabelReader, PydicomReader
from monai.utils import MetaKeys

from foundation.errors import DomainfmError
from foundation.inputs import precheck

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")


class MedicalInputError(DomainfmError, ValueError):  # DomainfmError: the CLI prints it as one line
    """A file or series that cannot become a 3-d volume; the message names the path and the problem."""


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_EXTENSIONS):
        return True
    try:
        return pydicom.misc.is_dicom(str(path))
    except OSError:
        return False


def is_series_dir(path: str | Path) -> bool:
    """A folder whose files are DICOM slices is one volume (a DICOM series)."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and _is_dicom_file(sorted(files)[0])


def slice_geometry(ds) -> tuple[np.ndarray, np.ndarray]:
    """(position, unit normal) of one slice from ImagePositionPatient / ImageOrientationPatient."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return np.asarray(ds.ImagePositionPatient, dtype=float), normal / np.linalg.norm(normal)


class SeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` that stacks slices by position along the normal and checks the series.

    ``spacing_tolerance`` is the relative deviation of a gap from the median gap above which the series
    counts as having missing or inconsistent slices.
    """

    def __init__(self, spacing_tolerance: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spacing_tolerance = spacing_tolerance

    def verify_suffix(self, filename) -> bool:
        """Claim series folders and DICOM files only (MONAI's reader claims everything)."""
        names = [Path(str(f)) for f in (filename if isinstance(filename, (list, tuple)) else [filename])]
        return all(p.is_dir() or p.name.lower().endswith(DICOM_EXTENSIONS) for p in names)

    def _combine_dicom_series(self, data, filenames):  # MONAI's hook
        slices = list(zip(data, filenames))
        folder = Path(str(filenames[0])).parent
        for ds, name in slices:
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
                if not hasattr(ds, tag):
                    raise MedicalInputError(f"DICOM series {folder}: slice {Path(name).name} has no {tag}; cannot place it in 3-d")
        normal = slice_geometry(slices[0][0])[1]
        for ds, name in slices[1:]:
            if abs(float(np.dot(slice_geometry(ds)[1], normal))) < 0.9999:
                raise MedicalInputError(f"DICOM series {folder}: slice {Path(name).name} has another orientation than the rest")
        slices.sort(key=lambda s: float(np.dot(slice_geometry(s[0])[0], normal)))
        pos = np.array([float(np.dot(slice_geometry(ds)[0], normal)) for ds, _ in slices])
        gaps = np.diff(pos)
        if len(slices) > 1:
            step = float(np.median(gaps))
            if step <= 1e-6 or np.any(gaps <= 1e-6):
                dup = [Path(slices[i + 1][1]).name for i in np.flatnonzero(gaps <= 1e-6)]
                raise MedicalInputError(f"DICOM series {folder}: duplicate slice positions ({', '.join(dup[:3])})")
            bad = np.flatnonzero(np.abs(gaps - step) > self.spacing_tolerance * step)
            if len(bad):
                i = int(bad[0])
                raise MedicalInputError(
                    f"DICOM series {folder}: missing or inconsistent slices: gap of {gaps[i]:.3g} mm between "
                    f"{Path(slices[i][1]).name} and {Path(slices[i + 1][1]).name}, the series' step is {step:.3g} mm"
                )
        first = slices[0][0]
        shape = (int(first.Rows), int(first.Columns))
        arrays = []
        for ds, name in slices:
            if (int(ds.Rows), int(ds.Columns)) != shape:
                raise MedicalInputError(f"DICOM series {folder}: slice {Path(name).name} is {ds.Rows}x{ds.Columns}, the series is {shape[0]}x{shape[1]}")
            if not np.allclose(np.asarray(ds.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=1e-3):
                raise MedicalInputError(f"DICOM series {folder}: slice {Path(name).name} has another pixel spacing")
            try:
                arrays.append(self._get_array_data(ds, name))
            except Exception as err:  # pydicom raises many kinds for truncated pixel data
                raise MedicalInputError(f"DICOM series {folder}: cannot decode slice {Path(name).name}: {err}") from err
        meta = self._get_meta_dict(first)
        spacing = [float(v) for v in first.PixelSpacing]
        if len(slices) > 1:
            spacing.append(float(np.median(gaps)))
            meta["lastImagePositionPatient"] = np.asarray(slices[-1][0].ImagePositionPatient)
            meta[MetaKeys.SPATIAL_SHAPE] = shape + (len(slices),)
            stacked = np.stack(arrays, axis=-1)
        else:
            meta[MetaKeys.SPATIAL_SHAPE] = shape
            stacked = arrays[0]
        meta["spacing"] = np.asarray(spacing)
        return stacked, meta


def make_reader(path: str | Path, spacing_tolerance: float = 0.1):
    """The MONAI reader for one source: a series folder or a single DICOM file -> SeriesReader, else nibabel."""
    path = Path(path)
    if path.is_dir() or path.name.lower().endswith(DICOM_EXTENSIONS):
        return SeriesReader(spacing_tolerance=spacing_tolerance, swap_ij=True)
    return NibabelReader()


def check_source(path: str | Path) -> None:
    """Cheap checks before anything is cached: the file exists, its header reads, and it is 3-d.

    Raises :class:`MedicalInputError` naming the file; pixel data are checked when first loaded.
    """
    path = Path(path)
    if not path.exists():
        raise MedicalInputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
        if not files:
            raise MedicalInputError(f"{path}: empty folder, expected a DICOM series")
        for f in files:
            precheck(f)
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            except Exception as err:
                raise MedicalInputError(f"{f}: not a readable DICOM slice ({err})") from err
            if not hasattr(ds, "ImagePositionPatient"):
                raise MedicalInputError(f"{f}: DICOM slice without ImagePositionPatient")
        if len(files) < 2:
            raise MedicalInputError(f"{path}: a DICOM series of one slice is 2-d, a 3-d volume was expected")
        return
    if path.name.lower().endswith(NIFTI_EXTENSIONS):
        precheck(path)
        try:
            img = nib.load(str(path))
        except Exception as err:
            raise MedicalInputError(f"{path}: not a readable NIfTI file ({err})") from err
        check_nifti_size(path, img)
        shape = img.shape
        spatial = [s for s in shape[:3]]
        if len(shape) < 3 or min(spatial) < 2:
            raise MedicalInputError(f"{path}: image of shape {tuple(shape)} is 2-d, a 3-d volume was expected")
        if len(shape) > 4 or (len(shape) == 4 and shape[3] > 16):
            raise MedicalInputError(f"{path}: image of shape {tuple(shape)} is not a 3-d volume (with at most a few channels)")
        return
    raise MedicalInputError(f"{path}: unknown medical image format (expected .nii, .nii.gz, a DICOM file or a DICOM series folder)")


def check_nifti_size(path: Path, img) -> None:
    """Header against body, without decompressing: the voxels the header declares must fit in the file.

    ``.nii``: offset + voxels x bytes per voxel against the file size. ``.nii.gz``: the same against the
    uncompressed size gzip stores in its last 4 bytes (modulo 2**32; a cut-off file ends in random
    compressed bytes instead, so it almost never matches).
    """
    header = img.header
    try:
        need = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(header.get_data_dtype().itemsize)
    except Exception as err:  # a header whose dims or datatype nibabel cannot interpret
        raise MedicalInputError(f"{path}: NIfTI header is unusable ({err})") from err
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            stored = int.from_bytes(fh.read(4), "little")
        if stored != need % 2**32:  # or a multi-member gzip (bgzip): decompress to be sure
            total = 0
            try:
                with gzip.open(path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        total += len(chunk)
            except (OSError, EOFError, zlib.error) as err:
                raise MedicalInputError(f"{path}: truncated or corrupt NIfTI (gzip stream: {err}; re-export or re-download the file)") from err
            if total < need:
                raise MedicalInputError(f"{path}: truncated NIfTI: the header declares {need} bytes, the gzip stream "
                                        f"holds {total} (re-export or re-download the file)")
    elif size < need:
        raise MedicalInputError(f"{path}: truncated NIfTI: the header declares {need} bytes, the file holds {size} "
                                "(re-export or re-download the file)")


def quiet_monai_warnings() -> None:
    """MONAI warns about the optional GPU DICOM codec on every read; it is noise for CPU users."""
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    logging.getLogger("monai").setLevel(logging.ERROR)
