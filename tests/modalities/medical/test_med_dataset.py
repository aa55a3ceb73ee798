"""The dataset: layouts, crops, tokens, NaN voxels, bad-input policy, ids without patient fields."""
from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from foundation.grid import unpatchify
from foundation.tokens import collate
from modalities.medical.adapter import MedicalAdapter
from modalities.medical.dataset import MedicalDataset, list_sources
from modalities.medical.io import MedicalInputError


def write(path, vol, spacing=(1.5, 1.5, 1.5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


def blob(seed, shape=(40, 40, 40)):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"), -1)
    return 100.0 * ((g ** 2).sum(-1) < 15 ** 2) + rng.normal(0, 5, shape) + 10


def test_crops_tokens_and_targets(tmp_path, small_cfg):
    for i in range(3):
        write(tmp_path / ("a" if i % 2 else "b") / f"v{i}.nii.gz", blob(i))
    cfg = small_cfg()
    ds = MedicalDataset(cfg, {"root": str(tmp_path), "labels": "folder"}, train=True)
    assert len(ds) == 3 * cfg["crops_per_volume"] and ds.classes == ["a", "b"]
    s = ds[(1, 42)]
    assert s.patches.shape == (64, 512) and s.coords.shape == (64, 3) and s.targets.shape == (64, 512)
    assert s.id.endswith("#crop1") and s.label == ds.label(1)
    assert torch.equal(s.patches, ds[(1, 42)].patches)  # the same seed gives the same crop in any worker
    assert not torch.equal(s.patches, ds[(1, 43)].patches)
    # per-patch normalised targets: zero mean, unit variance on every fully valid patch
    full = s.target_valid.all(1)
    assert full.any()
    t = s.targets[full]
    assert torch.allclose(t.mean(1), torch.zeros(len(t)), atol=1e-4) and torch.allclose(t.std(1, unbiased=False), torch.ones(len(t)), atol=1e-2)
    # the patches reassemble into the crop (patchify round trip on real tokens)
    vol = unpatchify(s.patches, (4, 4, 4), (8, 8, 8), 1)
    assert vol.shape == (1, 32, 32, 32) and float(vol.max()) <= 1.0
    # coordinates are physical: 8 voxels x 1.5 mm / 16 mm per unit
    assert torch.allclose(torch.unique(s.coords[:, 2]), torch.arange(4) * 0.75)
    b = collate([ds[(i, i)] for i in range(len(ds))])
    assert b.patches.shape == (6, 64, 512) and b.meta["spacing"].shape == (6, 3)


def test_anisotropic_patches(tmp_path, small_cfg):
    write(tmp_path / "v.nii.gz", blob(0, (48, 48, 12)), spacing=(0.5, 0.5, 3.0))
    cfg = small_cfg(patch=[16, 16, 4], roi=[32, 32, 8], sw_roi=[32, 32, 8], spacing=None, crop_foreground=False)
    s = MedicalDataset(cfg, {"root": str(tmp_path)}, train=True)[(0, 1)]
    assert s.patches.shape == (2 * 2 * 2, 16 * 16 * 4)
    assert torch.allclose(s.meta["spacing"], torch.tensor([0.5, 0.5, 3.0]))
    assert MedicalAdapter(cfg).patch_dim == 1024


def test_nan_voxels_are_skipped_in_targets(tmp_path, small_cfg):
    vol = blob(0)
    vol[:20] = np.nan
    write(tmp_path / "v.nii.gz", vol)
    ds = MedicalDataset(small_cfg(spacing=None, crop_foreground=False), {"root": str(tmp_path)}, train=False)
    s = ds[0]
    assert torch.isfinite(s.patches).all() and torch.isfinite(s.targets).all()
    invalid = ~s.target_valid
    assert invalid.float().mean() > 0.3 and s.padding.any()  # NaN half: its tokens are padding
    assert (s.targets[invalid] == 0).all()
    write(tmp_path / "allnan" / "w.nii.gz", np.full((20, 20, 20), np.nan))
    with pytest.raises(MedicalInputError, match="w.nii.gz.*NaN"):
        MedicalDataset(small_cfg(), {"root": str(tmp_path / "allnan")}, train=False)[0]


def test_bad_input_raise_or_counted_skip(tmp_path, small_cfg):
    write(tmp_path / "good.nii.gz", blob(0))
    write(tmp_path / "flat.nii.gz", blob(1)[:, :, :1])
    good = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(MedicalInputError, match="flat.nii.gz"):
        MedicalDataset(small_cfg(), {"root": str(tmp_path)}, train=False)
    ds = MedicalDataset(small_cfg(), {"root": str(tmp_path), "on_error": "skip"}, train=False)
    # the truncated file fails the header-against-body check before anything is cached
    assert sorted(p.split("/")[-1] for p, _ in ds.skipped) == ["flat.nii.gz", "truncated.nii.gz"] and len(ds) == 1
    (tmp_path / "flat.nii.gz").unlink()
    with pytest.raises(MedicalInputError, match="truncated.nii.gz"):
        MedicalDataset(small_cfg(), {"root": str(tmp_path)}, train=False)


def test_load_time_failure_is_counted_once_and_not_replaced(tmp_path, small_cfg):
    """A volume whose header passes but whose voxels fail is None under skip (no stand-in), counted once."""
    write(tmp_path / "good.nii.gz", blob(0))
    write(tmp_path / "bad.nii.gz", blob(1))
    ds = MedicalDataset(small_cfg(cache="none"), {"root": str(tmp_path), "on_error": "skip"}, train=False)
    bad = [s.path.split("/")[-1] for s in ds.sources].index("bad.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b" + b"0" * 100)  # corrupted after the dataset was built
    assert ds[bad] is None and ds[bad] is None and ds.read_failures == 1 and len(ds.skipped) == 1
    assert ds[1 - bad].path.endswith("good.nii.gz")



def test_manifest_with_seg_patient_and_extra_channel(tmp_path, small_cfg):
    rows = []
    for i in range(4):
        t1 = write(tmp_path / "img" / f"s{i}_t1.nii.gz", blob(i))
        t2 = write(tmp_path / "img" / f"s{i}_t2.nii.gz", 200 - blob(i + 10))
        seg = write(tmp_path / "seg" / f"s{i}.nii.gz", (blob(i) > 50).astype(np.float32))
        rows.append({"path": f"img/{t1.name}", "t2": f"img/{t2.name}", "seg": f"seg/{seg.name}", "patient": f"P{i // 2}", "label": str(i % 2)})
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = small_cfg(channels=2, channel_columns=["t2"])
    ds = MedicalDataset(cfg, {"manifest": str(tmp_path / "m.csv"), "labels": "column:label"}, train=True, with_seg=True)
    assert ds.patients == ["P0", "P0", "P1", "P1"] and ds.labels == [0, 1, 0, 1]
    s = ds[(0, 3)]
    assert s.patches.shape == (64, 2 * 512) and MedicalAdapter(cfg).patch_dim == 1024
    d = ds.volume(0)
    assert d["image"].shape[0] == 2 and d["seg"].shape[1:] == d["image"].shape[1:]
    from modalities.medical.tasks import patient_split

    for seed in range(4):  # patient-wise: both scans of a patient fall on the same side
        tr, te = patient_split(ds, 0.5, seed)
        assert {ds.patients[i] for i in tr}.isdisjoint({ds.patients[i] for i in te}) and len(tr) == len(te) == 2


def test_dicom_folder_of_series_ids_carry_no_patient_fields(dicom_series, tmp_path, small_cfg):
    root = tmp_path / "studies"
    for name in ("study_a", "study_b"):
        dst = root / "cls" / name
        dst.mkdir(parents=True)
        for f in sorted(dicom_series.iterdir())[:16]:
            shutil.copy(f, dst / f.name)
    sources = list_sources({"root": str(root), "labels": "folder"})
    assert [s.path.split("/")[-1] for s in sources] == ["study_a", "study_b"] and {s.label for s in sources} == {"cls"}
    ds = MedicalDataset(small_cfg(spacing=[3.0, 3.0, 3.0]), {"root": str(root)}, train=False)
    hdr = pydicom.dcmread(sorted(dicom_series.iterdir())[0], stop_before_pixels=True)
    private = [str(v) for v in (hdr.get("PatientName"), hdr.get("PatientID"), hdr.get("PatientBirthDate"), hdr.get("StudyInstanceUID")) if v]
    s = ds[0]
    assert s.patches.shape[1] == 512 and s.id.endswith("study_a")
    assert not any(p and p in s.id for p in private)
    # a single series folder given as data.root is one volume
    assert len(MedicalDataset(small_cfg(spacing=[3.0, 3.0, 3.0]), {"root": str(root / "cls" / "study_a")}, train=False)) == 1


def test_disk_cache_is_keyed_by_preprocessing(tmp_path, small_cfg):
    write(tmp_path / "d" / "v.nii.gz", blob(0))
    cache = tmp_path / "cache"
    a = MedicalDataset(small_cfg(cache="disk", cache_dir=str(cache)), {"root": str(tmp_path / "d")}, train=False)
    x = a[0].patches
    b = MedicalDataset(small_cfg(cache="disk", cache_dir=str(cache), intensity="none"), {"root": str(tmp_path / "d")}, train=False)
    y = b[0].patches
    assert len(list((cache / "medical").iterdir())) == 2 and not torch.allclose(x, y)
    assert torch.equal(MedicalDataset(small_cfg(cache="disk", cache_dir=str(cache)), {"root": str(tmp_path / "d")}, train=False)[0].patches, x)


def test_training_crops_read_plain_voxels_equal_to_the_monai_volume(tmp_path, small_cfg):
    """Training crops read plain tensors from the disk cache (no MetaTensor rebuild per read); they are
    the very voxels and spacing of the MONAI-decoded volume, and a damaged entry is rebuilt."""
    for i in range(2):
        write(tmp_path / "d" / f"v{i}.nii.gz", blob(i), spacing=(1.5, 1.5, 2.0))
    ds = MedicalDataset(small_cfg(cache="disk", cache_dir=str(tmp_path / "cache"), spacing=None),
                        {"root": str(tmp_path / "d")}, train=True)
    for vi in range(2):
        first = ds.voxel_dict(vi)  # builds the entry
        again = ds.voxel_dict(vi)  # the plain fast path
        full = ds.volume(vi)  # MONAI's MetaTensor dict, decoded from the same entry
        for got in (first, again):
            assert torch.equal(got["image"], full["image"].as_tensor()) and torch.equal(got["valid"], full["valid"].as_tensor())
            assert torch.allclose(got["spacing"], torch.tensor([1.5, 1.5, 2.0]))
    # negative control: the two volumes' voxels differ, so the equality above can fail
    assert not torch.equal(ds.voxel_dict(0)["image"], ds.voxel_dict(1)["image"])
    # a crop is a roi-sized window of those voxels, placed by the sample's seed
    s, t = ds[(0, 5)], ds[(0, 6)]
    assert s.patches.shape == t.patches.shape and not torch.equal(s.patches, t.patches)
    # a damaged cache entry is rebuilt from the source, not reported as a bad input
    expected = ds.voxel_dict(0)["image"].clone()
    for f in (tmp_path / "cache").rglob("*.safetensors"):
        f.unlink()  # a new file, as the cache's own atomic replace makes: tensors read before stay valid
        f.write_bytes(b"garbage")
    assert torch.equal(ds.voxel_dict(0)["image"], expected)


def test_evaluation_and_finetune_splits_keep_the_crops_of_one_volume_together(tmp_path, small_cfg):
    """Training views give crops_per_volume samples per volume; a split that put two crops of one scan on
    both sides would score the scan against itself. Splits group samples by their volume."""
    from foundation.evaluate import _split
    from foundation.finetune import group_split, sample_groups

    for i in range(12):
        write(tmp_path / ("a" if i % 2 else "b") / f"v{i}.nii.gz", blob(i, (20, 20, 20)))
    ds = MedicalDataset(small_cfg(crops_per_volume=4), {"root": str(tmp_path), "labels": "folder"}, train=True)
    labels = np.array([ds.label(i) for i in range(len(ds))])
    volume = np.array([ds.unit(i) for i in range(len(ds))])
    assert len(ds) == 48 and len(set(volume)) == 12
    pool, test = _split(ds, labels, None, 0.3)
    assert not set(volume[pool]) & set(volume[test]) and len(test) % 4 == 0
    train_idx, val_idx = group_split(sample_groups(ds, None), 0.25, 0)
    assert not set(volume[train_idx]) & set(volume[val_idx])
    # negative control: one group per sample (the behaviour before units) mixes crops of a volume
    naive_pool, naive_test = group_split(np.arange(len(ds)).astype(str), 0.3, 12345, labels)
    assert set(volume[naive_pool]) & set(volume[naive_test])
