"""Tokenizer, whole-volume embedding, segmentation head, masks in the source space, synthetic cohort."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from foundation.model import Encoder
from foundation.tokens import collate
from foundation.trunk import masked_mean
from modalities.medical.adapter import MedicalAdapter
from modalities.medical.dataset import MedicalDataset, to_tokens
from modalities.medical.embed import embed_volume
from modalities.medical.synthetic import CLASSES, make_volume, write_cohort
from modalities.medical.tasks import SegmentationModel, UNETRDecoder, dice_scores, finetune_segmentation, predict_volume, write_prediction

TINY = {"width": 32, "depth": 2, "heads": 2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return root, write_cohort(root, 6, seed=3, size=(32, 32, 32))


@pytest.mark.parametrize("kind,patch", [("linear", [4, 4, 4]), ("conv", [4, 4, 4]), ("conv", [8, 8, 2])])
def test_tokenizer_is_token_local(kind, patch):
    roi = [2 * p for p in patch]
    adapter = MedicalAdapter({"patch": patch, "roi": roi, "sw_roi": roi, "tokenizer": kind})
    tok = adapter.make_tokenizer(16)
    torch.nn.init.normal_(tok.extent.weight)
    x = torch.randn(2, 5, adapter.patch_dim)
    meta = {"spacing": torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 3.0]])}
    y = tok(x, meta)
    x2 = x.clone()
    x2[:, 1:] = torch.randn_like(x2[:, 1:])
    assert torch.allclose(tok(x2, meta)[:, 0], y[:, 0])  # token 0 ignores the others
    assert not torch.allclose(y[0, 0], tok(x[:1, :1].expand(2, 1, -1), meta)[1, 0])  # but sees its spacing
    x3 = x.clone()
    x3[:, 0, : adapter.patch_dim // 2] += 1.0  # and its own values
    assert not torch.allclose(tok(x3, meta)[:, 0], y[:, 0])


def test_smoothed_mae_targets_average_valid_voxels_inside_each_patch():
    cfg = MedicalAdapter({"patch": [8, 8, 4], "roi": [16, 16, 8], "sw_roi": [16, 16, 8], "target_pool": 2}).config
    img, valid = torch.rand(1, 16, 16, 8), torch.ones(1, 16, 16, 8)
    valid[0, :3] = 0  # the first three x-slices are invalid (NaN in the source)
    s = to_tokens(img, valid, cfg, "", "", None)
    assert s.targets.shape == (8, MedicalAdapter(cfg).target_dim) == (8, 4 * 4 * 2)
    ref = torch.nn.functional.avg_pool3d(img[None], 2)[0, 0]  # whole patches at x >= 8 are fully valid
    t = ref[4:8, 4:8, 2:4].flatten()
    assert torch.allclose(s.targets[7], (t - t.mean()) / t.std(unbiased=False), atol=2e-3)  # the normalisation's eps
    assert s.target_valid[0].float().mean() == 0.75  # pooled cells with no valid voxel are invalid
    with pytest.raises(ValueError, match="target_pool"):
        MedicalAdapter({"patch": [8, 8, 4], "roi": [16, 16, 8], "sw_roi": [16, 16, 8], "target_pool": 3})


def test_sliding_window_embedding_matches_plain_encoding_and_handles_any_size(small_cfg):
    cfg = small_cfg(spacing=None)
    adapter = MedicalAdapter(cfg)
    torch.manual_seed(0)
    enc = Encoder.build(adapter, TINY).eval()
    from monai.data import MetaTensor

    img = torch.rand(1, 32, 32, 32)
    vol = {"image": MetaTensor(img, affine=torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0]))), "valid": torch.ones(1, 32, 32, 32)}
    pooled = embed_volume(enc, vol, cfg)
    s = to_tokens(img, torch.ones(1, 32, 32, 32), cfg, "x", "", None)
    s.meta = {"spacing": torch.tensor([1.5, 1.5, 1.5])}
    with torch.no_grad():
        e = enc(collate([s]))
    assert torch.allclose(pooled["mean"], masked_mean(e.tokens, e.padding)[0], atol=1e-5)
    assert torch.allclose(pooled["maxmin"], torch.cat([e.tokens[0].amax(0), e.tokens[0].amin(0)]), atol=1e-5)
    # a volume of any size, smaller than a window along one axis and larger along others
    big = torch.rand(1, 20, 72, 50)
    vol2 = {"image": MetaTensor(big, affine=torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0]))), "valid": torch.ones(1, 20, 72, 50)}
    out = embed_volume(enc, vol2, cfg)
    assert out["meanstd"].shape == (64,) and torch.isfinite(out["meanstd"]).all()
    assert not torch.allclose(out["mean"], pooled["mean"])


def test_probe_features_are_the_sliding_window_study_embeddings(cohort, small_cfg):
    """``domainfm embed/probe`` on whole studies read what ``embed_studies`` (and the few-label
    benchmark) reads; a crop view goes through the encoder itself."""
    from foundation.embed import embed_dataset
    from modalities.medical.embed import SlidingWindowEncoder, embed_studies

    root, data = cohort
    cfg = small_cfg(sw_roi=[16, 16, 16])  # windows smaller than the 32^3 volumes: several per study
    adapter = MedicalAdapter(cfg)
    torch.manual_seed(0)
    enc = Encoder.build(adapter, TINY).eval()
    ds = MedicalDataset(adapter.config, data, train=False)
    model = adapter.feature_model(enc, ds)
    assert isinstance(model, SlidingWindowEncoder)
    # the loader carries one placeholder token per study, not the study tokenised whole
    assert len(model.loader_dataset) == len(ds) and model.loader_dataset[0].patches.shape == (1, 1)
    via_cli = embed_dataset(enc, ds, batch_size=4, device="cpu")
    # each row is the study's own sliding-window embedding, in dataset order, whatever the batching
    direct = [embed_volume(enc, ds.volume(i), ds.cfg, regions=True) for i in range(len(ds.items))]
    assert list(via_cli["paths"]) == [it["source"] for it in ds.items] and list(via_cli["labels"]) == list(ds.labels)
    for k in ("mean", "meanstd", "max", "maxmin"):
        assert np.allclose(via_cli[k], np.stack([d[k].numpy() for d in direct]), atol=1e-5), k
    # regions: 16^3 windows of 4^3 positions, half-overlapping, over a 8^3 grid -> 3 per axis
    assert [r.shape for r in via_cli["regions"]] == [(27, 64)] * len(ds.items)
    assert all(np.allclose(a, b["regions"].numpy(), atol=1e-5) for a, b in zip(via_cli["regions"], direct))
    # the regions cover the study: their largest max is the whole-study max
    assert np.allclose(via_cli["regions"][0].max(0)[:32], via_cli["max"][0], atol=1e-5)
    # embed_studies (the few-label benchmark's) is this path; a layer's features and no regions on request
    studies = embed_studies(enc, ds, layer=0)
    assert "regions" not in studies and list(studies["paths"]) == list(via_cli["paths"])
    layer0 = embed_volume(enc, ds.volume(0), ds.cfg, layer=0)["meanstd"].numpy()
    assert np.allclose(studies["meanstd"][0], layer0, atol=1e-5) and not np.allclose(layer0, via_cli["meanstd"][0])
    from foundation.evaluate import few_label_report

    rep = few_label_report(enc, ds, ks=[1], seeds=2, test_fraction=0.34)  # what `domainfm probe` runs
    assert {r["pooling"] for r in rep["raw"]["pretrained"][1]} <= {"meanstd", "max", "maxmin"}
    assert {r["pooling"] for r in rep["raw"]["pretrained_regions"][1]} == {"bag"} and "regions" in rep["rows"][0]
    crops = MedicalAdapter(small_cfg(eval_roi=[32, 32, 32]))
    assert crops.feature_model(enc, MedicalDataset(crops.config, data, train=False)) is enc
    assert adapter.feature_model(enc, MedicalDataset(adapter.config, data, train=True)) is enc


@pytest.mark.parametrize("patch,roi", [((8, 8, 8), (32, 32, 32)), ((16, 16, 4), (32, 32, 8))])
def test_unetr_decoder_shapes(patch, roi):
    dec = UNETRDecoder(1, 32, 4, patch, classes=3, features=4)
    grid = [r // p for r, p in zip(roi, patch)]
    layers = [torch.randn(2, 32, *grid) for _ in range(4)]
    out = dec(torch.randn(2, 1, *roi), layers, torch.randn(2, 32, *grid))
    assert out.shape == (2, 3, *roi)


def test_segmentation_learns_and_masks_go_back_to_source_space(cohort, small_cfg):
    root, data = cohort
    cfg = small_cfg()
    ds = MedicalDataset(cfg, {**data, "labels": None}, train=True, with_seg=True)
    torch.manual_seed(0)
    model = SegmentationModel(Encoder.build(MedicalAdapter(cfg), TINY), classes=4, features=4)
    losses = finetune_segmentation(model, ds, [0, 1, 2], steps=12, lr=3e-3, batch_volumes=1)
    assert np.mean(losses[-3:]) < 0.88 * np.mean(losses[:3])  # Dice+CE of an untrained net is ~2
    v = ds.volume(3)
    pred = predict_volume(model, v)
    assert pred.shape == v["image"].shape
    out = write_prediction(pred, v, ds, root / "pred" / "vol3.nii.gz")
    src = nib.load(ds.items[3]["image"])
    written = nib.load(str(out))
    assert written.shape == src.shape and np.allclose(written.affine, src.affine)
    # Dice per structure (body, organs, lesions) and its mean over the structures present
    per = dice_scores(model, ds, [3], 4, per_class=True)
    assert per.shape == (1, 3) and np.all((per[~np.isnan(per)] >= 0) & (per[~np.isnan(per)] <= 1))
    assert np.allclose(dice_scores(model, ds, [3], 4), np.nanmean(per, 1))


def test_probe_phase_trains_the_fresh_part_alone_first_then_everything(cohort, small_cfg):
    """LP-FT for segmentation: during the probe share only the decoder (or only the output head) moves,
    and nothing frozen costs a backward; afterwards everything trains again. Control: without a probe
    phase the same steps move the encoder."""
    _, data = cohort
    cfg = small_cfg()
    ds = MedicalDataset(cfg, {**data, "labels": None}, train=True, with_seg=True)

    def run(steps: int, share: float, probe: str = "decoder") -> tuple[SegmentationModel, dict]:
        torch.manual_seed(0)
        model = SegmentationModel(Encoder.build(MedicalAdapter(cfg), TINY), classes=4, features=4)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        finetune_segmentation(model, ds, [0, 1], steps=steps, lr=3e-3, batch_volumes=1, probe_first=share, probe=probe)
        return model, before

    def moved(model: SegmentationModel, before: dict, prefix: str) -> bool:
        weights = {k: v for k, v in model.state_dict().items() if k.startswith(prefix) and v.is_floating_point()}
        assert weights, prefix
        return any(not torch.equal(v, before[k]) for k, v in weights.items())

    model, before = run(steps=3, share=0.9)  # all three steps are the probe phase
    assert not moved(model, before, "encoder.") and moved(model, before, "decoder.")
    assert all(p.requires_grad for p in model.parameters())
    model, before = run(steps=3, share=0.9, probe="head")
    assert not any(moved(model, before, part) for part in ("encoder.", "decoder.stem.", "decoder.skips.", "decoder.ups."))
    assert moved(model, before, "decoder.head.")
    model, before = run(steps=4, share=0.5)  # two probe steps, two full
    assert moved(model, before, "encoder.")
    model, before = run(steps=3, share=0.0)
    assert moved(model, before, "encoder.")
    with pytest.raises(ValueError, match="probe_first"):
        finetune_segmentation(model, ds, [0], steps=2, probe_first=1.0)
    with pytest.raises(ValueError, match="probe"):
        finetune_segmentation(model, ds, [0], steps=2, probe="encoder")


def test_ground_truth_round_trips_through_inverse_preprocessing(tmp_path, small_cfg):
    """A mask in LPS orientation at 1x1x2.5 mm: preprocessed (RAS, 1.5 mm, cropped), inverted, equal to the source."""
    img, seg = make_volume(1, np.random.default_rng(0), (40, 40, 16))
    affine = np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 30], [0, 0, 2.5, -10], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(img, affine), str(tmp_path / "v.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), str(tmp_path / "v_seg.nii.gz"))
    (tmp_path / "m.csv").write_text("path,seg\nv.nii.gz,v_seg.nii.gz\n")
    ds = MedicalDataset(small_cfg(cache="disk", cache_dir=str(tmp_path / "cache")), {"manifest": str(tmp_path / "m.csv")}, train=True, with_seg=True)
    v = ds.volume(0)
    assert nib.aff2axcodes(v["image"].affine.numpy()) == ("R", "A", "S") and v["image"].shape[1:] != seg.shape
    out = nib.load(str(write_prediction(v["seg"].as_tensor(), v, ds, tmp_path / "back.nii.gz")))
    assert out.shape == seg.shape and np.allclose(out.affine, affine)
    back = out.get_fdata().astype(int)
    for c in (1, 2, 3):
        inter = ((back == c) & (seg == c)).sum()
        assert 2 * inter / ((back == c).sum() + (seg == c).sum()) > 0.75, c  # two nearest resamplings of small organs
    # negative control: writing without the inverse (the preprocessed grid as is) does not match the source
    assert v["seg"].shape[1:] != seg.shape or not np.array_equal(v["seg"].as_tensor()[0].numpy(), seg)


def test_synthetic_cohort_hides_class_from_intensity_statistics(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = [], []
    for i in range(80):
        img, seg = make_volume(i % 2, np.random.default_rng(i), (32, 32, 32))
        h = np.histogram(img, bins=16, range=(0, 250))[0] / img.size
        X.append(np.r_[img.mean(), img.std(), np.percentile(img, [5, 25, 50, 75, 95, 99]), h, (seg == 3).sum()])
        y.append(i % 2)
    acc = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)), np.array(X), y, cv=5).mean()
    assert acc < 0.7, acc
    data = write_cohort(tmp_path, 4, seed=0, spacing=(1.2, 1.2, 2.0), size=(24, 24, 16))
    img = nib.load(str(tmp_path / CLASSES[0] / "vol_0000.nii.gz"))
    assert img.header.get_zooms()[:3] == pytest.approx((1.2, 1.2, 2.0)) and img.shape == (24, 24, 16)
    seg = nib.load(str(tmp_path / "masks" / "vol_0000_seg.nii.gz")).get_fdata()
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    assert data["labels"] == "column:label"


def test_adapter_config_is_checked_and_travels_with_the_encoder(tmp_path):
    with pytest.raises(ValueError, match="multiple of patch"):
        MedicalAdapter({"patch": [16, 16, 16], "roi": [40, 40, 40]})
    with pytest.raises(ValueError, match="unknown setting"):
        MedicalAdapter({"spacng": [1, 1, 1]})
    adapter = MedicalAdapter({"patch": [8, 8, 4], "roi": [32, 32, 8], "sw_roi": [32, 32, 8], "intensity": "ct", "ct_window": [-200, 300]})
    enc = Encoder.build(adapter, TINY)
    enc.save_pretrained(tmp_path / "enc")
    again = Encoder.from_pretrained(tmp_path / "enc")
    assert again.adapter.config == adapter.config and isinstance(again.adapter, MedicalAdapter)


def test_segmentation_finetuning_refuses_a_dataset_without_masks(cohort, small_cfg):
    """A dataset read without masks (with_seg=False) has no labels: no silent all-background training."""
    _, data = cohort
    cfg = small_cfg()
    ds = MedicalDataset(cfg, {**data, "labels": None}, train=True)
    model = SegmentationModel(Encoder.build(MedicalAdapter(cfg), TINY), classes=4, features=4)
    with pytest.raises(ValueError, match="with_seg=True"):
        finetune_segmentation(model, ds, [0], steps=1)
