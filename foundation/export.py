"""Export: a run's encoder, with its preprocessing, as files another team can run without domainfm.

An export directory holds ``config.json`` (architecture, the adapter's preprocessing, the input spec, the
recommended pooling), ``model.safetensors``, ``model.onnx`` (opset 18), ``model.pt2`` (``torch.export``),
``golden/`` (inputs and the outputs they must give) and a model card. The ONNX and torch.export programs take
the adapter's patch tensors (files to patches is the adapter's job, see the README's "what runs where") and
return ``(pooled, tokens)``; both are checked against the PyTorch encoder on real samples before the export
is published, and the export fails when a tolerance is exceeded.

    python -m foundation.export verify EXPORT_DIR [--data DIR]   # any runtime, in a fresh process
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from foundation import checkpoint
from foundation.errors import DomainfmError
from foundation.model import Encoder, load_strict, pool, read_config, read_weights, write_weights
from foundation.tokens import PatchBatch, collate
from modalities.base import adapter_from_config

log = logging.getLogger(__name__)

OPSET = 18  # opset 23 turns SDPA into an Attention op that onnxruntime refuses with our [B,1,1,N] mask
# max |runtime - PyTorch| allowed, relative to max(1, max |PyTorch output|): float32 kernels differ by ~1e-6
TOLERANCE = {"pt2": 1e-5, "onnx": 1e-4, "automodel": 1e-6}
GOLDEN_SAMPLES = 3

# The pooling `embed` and `load_encoder` use unless told otherwise, and where each choice comes from.
RECOMMENDED_POOLING = {
    "speech": ("mid_meanstd", "issue 37: speech-mae probed with 10 labels per digit on unseen speakers, 0.521 vs 0.378 for mean"),
    "pointcloud": ("meanstd", "issue 37: point-cloud encoder probe, 0.689 vs 0.555 for mean"),
    "earth": ("mid_meanstd", "issue 37: earth-mae on unseen EuroSAT chips, 0.760 vs 0.607 for mean"),
    "medical": ("meanstd", "modalities/medical/README.md, pooling comparison: mean+std 0.85 / 0.73 (all labels / 10 per class), max 0.82 / 0.77"),
    "graph": ("meanstd", "no measured comparison (graph benchmarks choose pooling by inner CV); mean+std is what graph heads use"),
    "grid": ("mean", "synthetic demo modality; no benchmark"),
}


def recommended_pooling(modality: str) -> str:
    return RECOMMENDED_POOLING.get(modality, ("mean", ""))[0]


class ExportCheckError(DomainfmError):
    """An exported runtime disagrees with the PyTorch encoder beyond its tolerance."""


# -- the encoder as a function of plain tensors --------------------------------------------------------
class PortableEncoder(nn.Module):
    """``(patches, coords, padding, meta, attn_bias) -> (pooled, tokens)``: what ONNX and torch.export hold.

    ``meta`` is the adapter's per-sample metadata (band wavelengths, voxel spacing...) as a dict of tensors,
    ``attn_bias`` the graph structure codes; both are absent for modalities that have none.
    """

    def __init__(self, encoder: Encoder, pooling: str) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling

    def forward(self, patches: Tensor, coords: Tensor, padding: Tensor, meta: dict[str, Tensor] | None = None,
                attn_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch = PatchBatch(patches, coords, padding, patches, padding, meta or {}, [], attn_bias=attn_bias)
        enc = self.encoder(batch, return_layers=True)
        return pool(enc, self.pooling), enc.tokens


def portable_inputs(batch: PatchBatch) -> tuple[tuple, dict]:
    """(args, kwargs) of :class:`PortableEncoder` for a batch, meta keys sorted (ONNX input order)."""
    kwargs: dict = {}
    if batch.meta:
        kwargs["meta"] = {k: batch.meta[k] for k in sorted(batch.meta)}
    if batch.attn_bias is not None:
        kwargs["attn_bias"] = batch.attn_bias
    return (batch.patches.float(), batch.coords.float(), batch.padding.bool()), kwargs


def flat_inputs(args: tuple, kwargs: dict) -> dict[str, Tensor]:
    """Named tensors in ONNX input order: patches, coords, padding, meta.<key>..., attn_bias."""
    out = dict(zip(("patches", "coords", "padding"), args))
    out.update({f"meta.{k}": v for k, v in kwargs.get("meta", {}).items()})
    if "attn_bias" in kwargs:
        out["attn_bias"] = kwargs["attn_bias"]
    return out


def unflatten_inputs(flat: dict[str, Tensor]) -> tuple[tuple, dict]:
    args = (flat["patches"], flat["coords"], flat["padding"])
    kwargs: dict = {}
    meta = {k[len("meta."):]: v for k, v in sorted(flat.items()) if k.startswith("meta.")}
    if meta:
        kwargs["meta"] = meta
    if "attn_bias" in flat:
        kwargs["attn_bias"] = flat["attn_bias"]
    return args, kwargs


def _dynamic_shapes(kwargs: dict) -> dict:
    b, n = torch.export.Dim("batch", min=1), torch.export.Dim("tokens", min=2)
    shapes = {"patches": {0: b, 1: n}, "coords": {0: b, 1: n}, "padding": {0: b, 1: n}}
    if "meta" in kwargs:
        shapes["meta"] = {k: {0: b} for k in kwargs["meta"]}
    if "attn_bias" in kwargs:
        shapes["attn_bias"] = {0: b, 1: n, 2: n}
    return shapes


def _shorter(batch: PatchBatch, n: int) -> PatchBatch:
    """The first two samples cut to ``n`` tokens: tracing on another batch and token count than the check
    proves the programs really take any batch size and length."""
    b = min(2, batch.size)
    bias = batch.attn_bias[:b, :n, :n].clone() if batch.attn_bias is not None else None  # clones: a view of the full
    return PatchBatch(batch.patches[:b, :n].clone(), batch.coords[:b, :n].clone(), batch.padding[:b, :n].clone(),  # batch would
                      batch.targets[:b, :n].clone(), batch.target_valid[:b, :n].clone(),  # make torch.export guard on its size
                      {k: v[:b].clone() for k, v in batch.meta.items()}, batch.ids[:b], attn_bias=bias)


def max_diff(got: tuple, ref: tuple) -> float:
    """max |got - ref| over outputs, relative to max(1, max |ref|)."""
    scale = max(1.0, max(float(r.abs().max()) for r in ref))
    return max(float((torch.as_tensor(np.asarray(g)).float() - r.float()).abs().max()) for g, r in zip(got, ref)) / scale


def run_onnx(path: Path, flat: dict[str, Tensor]) -> tuple:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return tuple(sess.run(None, {name: flat[name].numpy() for name in names}))


def run_pt2(path: Path, flat: dict[str, Tensor]) -> tuple:
    args, kwargs = unflatten_inputs(flat)
    with torch.no_grad():
        return tuple(torch.export.load(str(path)).module()(*args, **kwargs))


def write_programs(encoder: Encoder, batch: PatchBatch, out: Path, pooling: str) -> dict:
    """Write model.onnx, model.pt2 and golden/ for ``batch`` (real samples) into ``out``; returns the
    measured differences. Raises :class:`ExportCheckError` when a runtime exceeds its tolerance."""
    model = PortableEncoder(encoder.eval(), pooling).eval().requires_grad_(False)
    trace_args, trace_kwargs = portable_inputs(_shorter(batch, max(2, batch.patches.shape[1] - 1)))
    args, kwargs = portable_inputs(batch)
    with torch.no_grad():
        ref = model(*args, **kwargs)
    shapes = _dynamic_shapes(trace_kwargs)
    with torch.no_grad():
        program = torch.export.export(model, trace_args, trace_kwargs, dynamic_shapes=shapes)
    torch.export.save(program, str(out / "model.pt2"))
    flat = flat_inputs(args, kwargs)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, trace_args, f=str(out / "model.onnx"), kwargs=trace_kwargs, dynamo=True, opset_version=OPSET,
                          input_names=list(flat_inputs(trace_args, trace_kwargs)), output_names=["pooled", "tokens"],
                          dynamic_shapes=shapes, external_data=False, verbose=False)
    diffs = {"pt2": max_diff(run_pt2(out / "model.pt2", flat), ref), "onnx": max_diff(run_onnx(out / "model.onnx", flat), ref)}
    for runtime, diff in diffs.items():
        if diff > TOLERANCE[runtime]:
            raise ExportCheckError(f"{out}: {runtime} differs from the PyTorch encoder by {diff:.2e} on real samples "
                                   f"(tolerance {TOLERANCE[runtime]:.0e}); the export was not written")
    (out / "golden").mkdir()
    write_weights(out / "golden" / "inputs.safetensors", {k: v.contiguous() for k, v in flat.items()})
    write_weights(out / "golden" / "outputs.safetensors", {"pooled": ref[0].contiguous(), "tokens": ref[1].contiguous()})
    (out / "golden" / "README.md").write_text(
        f"{batch.size} real samples as patch tensors (inputs.safetensors: patches, coords, padding[, meta.*][, attn_bias]) and the "
        f"PyTorch encoder's outputs (outputs.safetensors: pooled = {pooling}, tokens). A runtime reproduces them within "
        f"{TOLERANCE['onnx']:.0e} (ONNX) or {TOLERANCE['pt2']:.0e} (torch.export) of max(1, max |output|).\n")
    return {"tolerance": dict(TOLERANCE), "max_diff": diffs, "golden_samples": batch.size, "opset": OPSET}


# -- from a run directory ----------------------------------------------------------------------------
def encoder_from_run(run_dir: str | Path) -> Encoder:
    """The run's final encoder, or the latest checkpoint's (the EMA teacher for JEPA)."""
    run_dir = Path(run_dir)
    if (run_dir / "encoder" / "config.json").exists():
        return Encoder.from_pretrained(run_dir / "encoder")
    if (run_dir / "config.json").exists():
        return Encoder.from_pretrained(run_dir)
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise DomainfmError(f"{run_dir} holds neither an exported encoder nor a checkpoint (pretrain into it with "
                            f"`domainfm pretrain RECIPE run.dir={run_dir}`)")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    state = json.loads((ckpt / "state.json").read_text())
    encoder = Encoder.build(adapter_from_config(recipe["modality"], state["adapter"]), recipe["model"])
    if (ckpt / "teacher.safetensors").exists():
        load_strict(encoder, ckpt / "teacher.safetensors")
    else:
        weights = {k[len("encoder."):]: v for k, v in read_weights(ckpt / "model.safetensors").items() if k.startswith("encoder.")}
        encoder.load_state_dict(weights, strict=True)
    return encoder.eval()


def run_info(run_dir: Path) -> dict:
    """What the card says about training: objective, steps, data as counts and formats (never paths)."""
    info: dict = {}
    for name in ("encoder/config.json", "config.json"):
        if (run_dir / name).exists():
            cfg = json.loads((run_dir / name).read_text())
            info.update({k: cfg[k] for k in ("objective", "steps", "training_data", "evaluation", "license") if k in cfg})
            break
    if (run_dir / "recipe.yaml").exists():
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
        info.setdefault("objective", recipe.get("objective"))
        info.setdefault("steps", recipe.get("train", {}).get("steps"))
        info["data"] = recipe.get("data", {})
    for name in ("summary.json", "evaluation.json", "report.json"):
        if (run_dir / name).exists() and name != "summary.json":
            info.setdefault("evaluation", json.loads((run_dir / name).read_text()))
    return info


def check_samples(encoder: Encoder, data: dict | None, n: int = GOLDEN_SAMPLES) -> tuple[PatchBatch, str]:
    """Real samples to check the programs on: ``data`` (the run's training data by default), else the
    adapter's synthetic generator (said in the card)."""
    adapter = encoder.adapter
    spec = {k: v for k, v in (data or {}).items() if k in ("root", "manifest", "labels", "on_error") and v}
    if spec.get("root") or spec.get("manifest"):
        try:
            ds = adapter.dataset({**spec, "labels": None}, train=False)
            if len(ds):
                return collate([ds[i] for i in range(min(n, len(ds)))]), "training data"
        except Exception as err:  # noqa: BLE001 - moved or unreadable data: fall back, and say so
            log.warning("export: cannot read %s for the export check (%s); using generated samples", spec, err)
    tmp = Path(tempfile.mkdtemp(prefix="domainfm-golden-"))
    gen = adapter.synthetic(tmp, max(n, 4), seed=0)
    ds = type(adapter)(adapter.preprocessing()).dataset({**gen, "labels": None}, train=False)
    return collate([ds[i] for i in range(min(n, len(ds)))]), "generated by the adapter's synthetic generator"


def export_encoder(encoder: Encoder, out_dir: str | Path, batch: PatchBatch, info: dict | None = None,
                   modules: dict[str, nn.Module] | None = None, pooling: str | None = None, check_source: str = "") -> Path:
    """Check and write an export: programs and golden vectors first (in a temp folder), then everything in
    one atomic rename. ``modules`` (``head``, ``towers.<name>``, ``projection.<name>``) travel beside the encoder."""
    from foundation.card import model_card
    from foundation.input_spec import input_spec

    info = dict(info or {})
    pooling = pooling or recommended_pooling(encoder.adapter.name)
    with tempfile.TemporaryDirectory(prefix="domainfm-export-") as tmp:
        checks = write_programs(encoder, batch, Path(tmp), pooling)
        checks["golden_source"] = check_source
        extra = {"pooling": pooling, "pooling_source": RECOMMENDED_POOLING.get(encoder.adapter.name, ("", ""))[1],
                 "input_spec": input_spec(encoder.adapter), "export_checks": checks, "versions": versions(encoder.adapter.name),
                 **{k: info[k] for k in ("objective", "steps", "license", "evaluation") if info.get(k) is not None}}
        if info.get("data") is not None:
            extra["training_data"] = data_summary(info["data"], encoder.adapter)
        elif info.get("training_data") is not None:
            extra["training_data"] = info["training_data"]
        extra.setdefault("license", "unspecified (set it with `domainfm export RUN_DIR OUT_DIR --license NAME`)")
        config = {**encoder.export_config(), **extra}
        return encoder.save_pretrained(out_dir, extra=extra, modules=modules, card=model_card(config),
                                       files={name: Path(tmp) / name for name in ("model.onnx", "model.pt2", "golden")})


def export_run(run_dir: str | Path, out_dir: str | Path, data: str | None = None, license: str | None = None,
               pooling: str | None = None) -> Path:
    """Export a run's encoder, checked (ONNX, torch.export, golden vectors, card). A fine-tuning run (or its
    ``finetuned/`` folder) exports the same way, with its head beside the encoder (``head.safetensors``, loaded
    strictly) and ``finetuned.json``, so ``domainfm predict`` runs on the export as on the run."""
    run_dir = Path(run_dir)
    finetuned = next((d for d in (run_dir / "finetuned", run_dir) if (d / "finetuned.json").exists()), None)
    modules = None
    if finetuned is not None:
        from foundation.finetune import load_finetuned

        ft = load_finetuned(finetuned)
        encoder, modules = ft.model.encoder, {"head": ft.model.head}
    else:
        encoder = encoder_from_run(run_dir)
    info = run_info(run_dir)
    if license:
        info["license"] = license
    spec = {"root": data} if data else info.get("data")
    batch, source = check_samples(encoder, spec)
    out = export_encoder(encoder, out_dir, batch, info, modules=modules, pooling=pooling, check_source=source)
    if finetuned is not None:
        (Path(out) / "finetuned.json").write_text((finetuned / "finetuned.json").read_text())
    return out


def data_summary(data: dict, adapter) -> dict:
    """Counts and formats of the training data, never file names (they can carry patient identifiers)."""
    root = data.get("root") or data.get("manifest")
    out: dict = {"source": "manifest" if data.get("manifest") else "folder"}
    if root and Path(root).exists():
        files = [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).is_dir() else [Path(root)]
        formats: dict[str, int] = {}
        for p in files:
            suffix = "".join(p.suffixes[-2:]) if p.name.endswith(".gz") else p.suffix
            formats[suffix or "(none)"] = formats.get(suffix or "(none)", 0) + 1
        out.update(files=len(files), formats=dict(sorted(formats.items(), key=lambda kv: -kv[1])[:8]))
    else:
        out["files"] = "unknown (the training data was not readable at export time)"
    return out


def versions(modality: str) -> dict:
    """domainfm, torch and the adapter's libraries, as installed at export time."""
    from importlib.metadata import PackageNotFoundError, version

    libs = {"speech": ["soundfile", "torchaudio"], "medical": ["monai", "nibabel", "pydicom"], "earth": ["rasterio"],
            "pointcloud": ["laspy"], "graph": ["torch-geometric", "rdkit"], "grid": []}.get(modality, [])
    out = {}
    for name in ["domainfm", "torch", "onnx", "onnxruntime", *libs]:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# -- verification, in any process ----------------------------------------------------------------------
def verify(model_dir: str | Path, runtimes: tuple[str, ...] = ("onnx", "pt2", "automodel"), data: str | None = None) -> dict:
    """Check an export against itself: the PyTorch encoder built from config.json + model.safetensors must
    reproduce golden/outputs, and each runtime must reproduce the PyTorch encoder on golden/inputs. With
    ``data`` (the files the golden samples came from), the stored preprocessing must also turn those files into
    golden/inputs. Returns the measured differences; raises :class:`ExportCheckError` past a tolerance."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    encoder = Encoder.from_pretrained(model_dir)
    flat = read_weights(model_dir / "golden" / "inputs.safetensors")
    golden = read_weights(model_dir / "golden" / "outputs.safetensors")
    model = PortableEncoder(encoder, config.get("pooling", "mean")).eval()
    args, kwargs = unflatten_inputs(flat)
    with torch.no_grad():
        ref = model(*args, **kwargs)
    diffs = {"pytorch_vs_golden": max_diff(ref, (golden["pooled"], golden["tokens"]))}
    limits = {"pytorch_vs_golden": TOLERANCE["pt2"]}
    if data is not None:
        ds = encoder.adapter.dataset({"root": data, "labels": None}, train=False)
        batch = collate([ds[i] for i in range(int(flat["patches"].shape[0]))])
        again = flat_inputs(*portable_inputs(batch))
        diffs["preprocessing_vs_golden"] = max(float((again[k].float() - flat[k].float()).abs().max()) for k in flat)
        limits["preprocessing_vs_golden"] = 1e-5
    for runtime in runtimes:
        if runtime == "onnx":
            got = run_onnx(model_dir / "model.onnx", flat)
        elif runtime == "pt2":
            got = run_pt2(model_dir / "model.pt2", flat)
        elif runtime == "automodel":
            from foundation.hf import automodel_outputs

            got = automodel_outputs(model_dir, args, kwargs)
        else:
            raise ValueError(f"unknown runtime {runtime!r}; choose from onnx, pt2, automodel")
        diffs[runtime] = max_diff(got, ref)
        limits[runtime] = TOLERANCE[runtime]
    bad = {k: v for k, v in diffs.items() if v > limits[k]}
    if bad:
        raise ExportCheckError(f"{model_dir}: " + ", ".join(f"{k} differs by {v:.2e} (tolerance {limits[k]:.0e})" for k, v in bad.items()))
    return diffs


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m foundation.export", description="Verify an export's runtimes against its PyTorch encoder.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify")
    v.add_argument("model_dir")
    v.add_argument("--runtimes", default="onnx,pt2,automodel")
    v.add_argument("--data", default=None, help="the files the golden samples came from: also check the preprocessing")
    args = p.parse_args(argv)
    try:
        diffs = verify(args.model_dir, tuple(r for r in args.runtimes.split(",") if r), args.data)
    except DomainfmError as err:
        print(f"domainfm: {err}", file=sys.stderr)
        return 1
    print(json.dumps(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
