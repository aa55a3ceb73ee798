"""Real files: the shared CT/MR NIfTI volumes and DICOM series, and the samples nibabel ships."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import PydicomReader
from monai.transforms import LoadImage
from nibabel.testing import data_path as NIB_DATA

from modalities.medical.io import MedicalInputError, SeriesReader, check_source
from modalities.medical.preprocess import deterministic_transforms



def load_series(folder: Path):
    return LoadImage(reader=SeriesReader(), image_only=True, ensure_channel_first=True)(str(folder))


def shuffled_copy(src: Path, dst: Path, renumber: bool) -> Path:
    """Copy a series with random file names in random order; ``renumber`` also scrambles InstanceNumber."""
    dst.mkdir()
    files = sorted(src.iterdir())
    rng = random.Random(7)
    numbers = list(range(1, len(files) + 1))
    rng.shuffle(numbers)
    order = list(range(len(files)))
    rng.shuffle(order)
    for k, i in enumerate(order):
        target = dst / f"IMG{rng.randrange(10**8):08d}_{k}"
        if renumber:
            ds = pydicom.dcmread(files[i])
            ds.InstanceNumber = numbers[i]
            ds.save_as(target)
        else:
            shutil.copy(files[i], target)
    return dst


def test_series_loads_as_one_volume_with_header_spacing(dicom_series):
    img = load_series(dicom_series)
    assert tuple(img.shape) == (1, 512, 512, 48)
    np.testing.assert_allclose(img.pixdim.numpy(), [0.41016, 0.41016, 1.5], atol=1e-4)


def test_series_order_comes_from_positions_not_names_or_numbers(dicom_series, tmp_path):
    ref = load_series(dicom_series)
    copy = shuffled_copy(dicom_series, tmp_path / "shuffled", renumber=True)
    img = load_series(copy)
    assert tuple(img.shape) == (1, 512, 512, 48)
    np.testing.assert_allclose(img.pixdim.numpy(), ref.pixdim.numpy(), atol=1e-6)
    assert torch.equal(img.as_tensor(), ref.as_tensor())
    np.testing.assert_allclose(img.affine.numpy(), ref.affine.numpy(), atol=1e-4)
    # negative control: MONAI's stock reader stacks by InstanceNumber and gets this copy wrong
    stock = LoadImage(reader=PydicomReader(), image_only=True, ensure_channel_first=True)(str(copy))
    assert not torch.equal(stock.as_tensor(), ref.as_tensor())


def test_series_renamed_copy_without_renumbering(dicom_series, tmp_path):
    img = load_series(shuffled_copy(dicom_series, tmp_path / "renamed", renumber=False))
    assert tuple(img.shape) == (1, 512, 512, 48) and abs(float(img.pixdim[2]) - 1.5) < 1e-4


def test_series_with_missing_slice_is_refused_naming_the_folder(dicom_series, tmp_path):
    dst = tmp_path / "gappy"
    shutil.copytree(dicom_series, dst)
    (dst / sorted(p.name for p in dst.iterdir())[20]).unlink()
    with pytest.raises(MedicalInputError, match="gappy.*missing or inconsistent"):
        load_series(dst)


def test_series_with_duplicate_slice_is_refused(dicom_series, tmp_path):
    dst = tmp_path / "dup"
    shutil.copytree(dicom_series, dst)
    first = sorted(dst.iterdir())[0]
    shutil.copy(first, dst / "copy_of_first.dcm")
    with pytest.raises(MedicalInputError, match="duplicate"):
        load_series(dst)


def test_real_nifti_reorient_and_resample(nifti_dir, small_cfg):
    t = deterministic_transforms(small_cfg(spacing=[2.0, 2.0, 2.0], crop_foreground=False, intensity="ct"))
    for name, shape, zooms in [("CT_AVM", (256, 242, 154), (0.72, 0.72, 1.0)), ("CT_pitch", (175, 248, 58), None), ("MR_Gd", (176, 188, 144), None)]:
        path = nifti_dir / f"{name}.nii.gz"
        raw = nib.load(str(path))
        assert raw.shape[:3] == shape
        if zooms:
            np.testing.assert_allclose(raw.header.get_zooms()[:3], zooms, atol=0.01)
        d = t({"image": str(path), "source": str(path)})
        img = d["image"]
        np.testing.assert_allclose(img.pixdim.numpy(), [2.0, 2.0, 2.0], atol=1e-5)
        assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
        # the physical extent is kept (within a voxel per axis) after resampling
        extent_raw = np.linalg.norm(raw.affine[:3, :3], axis=0) * np.array(raw.shape[:3])  # oblique-safe
        extent_new = np.sort(np.array(img.shape[1:]) * 2.0)
        assert np.all(np.abs(np.sort(extent_raw) - extent_new) <= 2.0 * 1.5 + 1e-6), (name, extent_raw, extent_new)
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_nibabel_sample_files(tmp_path, small_cfg):
    base = Path(NIB_DATA)
    t = deterministic_transforms(small_cfg(spacing=[3.0, 3.0, 3.0], crop_foreground=False))
    for name in ("anatomical.nii", "standard.nii.gz"):
        raw = nib.load(str(base / name))
        d = t({"image": str(base / name), "source": name})
        np.testing.assert_allclose(d["image"].pixdim.numpy(), [3.0, 3.0, 3.0], atol=1e-5)
        assert nib.aff2axcodes(d["image"].affine.numpy()) == ("R", "A", "S")
        assert d["image"].shape[0] == 1 and min(d["image"].shape[1:]) >= min(raw.shape[:3]) * min(raw.header.get_zooms()[:3]) / 3.0 - 1
    # nibabel's two single DICOM slices: one slice is 2-d, a folder of it is refused with the reason
    folder = tmp_path / "one_slice"
    folder.mkdir()
    shutil.copy(base / "0.dcm", folder / "0.dcm")
    with pytest.raises(MedicalInputError, match="2-d"):
        check_source(folder)


def test_bad_files_name_the_file(tmp_path, small_cfg):
    vol = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(good))
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(vol[:, :, :1], np.eye(4)), str(flat))
    junk = tmp_path / "junk.nii"
    junk.write_text("not an image")
    check_source(good)
    for bad, why in [(flat, "flat.nii.gz.*2-d"), (junk, "junk.nii.*not a readable NIfTI")]:
        with pytest.raises(MedicalInputError, match=why):
            check_source(bad)


def test_a_multichannel_file_is_refused_naming_the_channels(tmp_path, small_cfg):
    """A 4-d NIfTI with two channels read by a one-channel-per-file encoder would be cut into the wrong patches;
    it is refused naming the file. Control: the same volume as one channel reads."""
    vol = np.random.default_rng(0).random((20, 20, 20, 2)).astype(np.float32)
    two, one = tmp_path / "two.nii.gz", tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(two))
    nib.save(nib.Nifti1Image(vol[..., 0], np.eye(4)), str(one))
    t = deterministic_transforms(small_cfg(crop_foreground=False))
    assert t({"image": str(one), "source": str(one)})["image"].shape[0] == 1
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps transform errors; the dataset unwraps ours
        t({"image": str(two), "source": str(two)})
    cause = caught.value.__cause__
    assert isinstance(cause, MedicalInputError) and "two.nii.gz: image holds 2 channels" in str(cause)
