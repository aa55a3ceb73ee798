"""``domainfm``: pretrain, export, embed, probe and demo from the command line.

Every command that takes a recipe accepts ``key=value`` overrides (``train.steps=100``); run
``domainfm pretrain RECIPE --print-config`` to see what a recipe resolves to.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from foundation.distributed import exit_process, release_process_group
from foundation.errors import DomainfmError

EPILOG = """examples:
  domainfm demo                                   # pretrain, probe, export, reload and embed on generated data
  domainfm pretrain speech-mae data.root=recordings/ run.dir=runs/speech
  domainfm pretrain grid-mae --print-config       # show the resolved recipe
  domainfm export runs/speech exported/speech     # the encoder alone, with its preprocessing
  domainfm embed exported/speech recordings/ --out emb.npz
  domainfm probe exported/speech recordings/ data.labels='pattern:^(\\d)_'
"""

FINETUNE_EPILOG = """methods (finetune.method=):
  linear     frozen encoder, linear head on mean+std pooled tokens
  knn        frozen encoder, cosine kNN vote over the training embeddings (finetune.knn_k=5)
  attentive  frozen encoder, a learned query attending over the tokens, then linear
  layers     frozen encoder, learned weighted sum of every layer (s3prl-style), then linear
  full       (default) all weights train, layer-wise LR decay (finetune.layer_decay=0.75)
  lora       LoRA adapters on the trunk's blocks only (finetune.lora_rank=8, finetune.lora_alpha=16),
             merged into the saved encoder, which keeps its parameter names
tasks (finetune.task=): classification (default), multilabel (labels joined by finetune.label_sep=';'),
  regression (numeric labels), segmentation (one class per voxel / pixel / point: label files named by
  data.masks=column:<name> | regex:<find>=><replace> on each sample's path, or data.masks=file for
  the labels a point file carries (LAS classification, a label column; the point-cloud default);
  medical defaults to the manifest's seg column; methods linear, full, lora; head: the modality's
  decoder, UNETR for medical, a per-pixel decoder for earth, PointSegHead for point clouds; metrics
  Dice per class, mean foreground Dice and mIoU)
budget: finetune.steps=300 finetune.batch_size=32 finetune.lr=0 (0 = the method's default); fixed by
  default. finetune.val_fraction=0.2 holds out whole groups (data.groups=pattern:<regex> | column:<name>
  | folder) for validation; finetune.patience=N then stops early on it. finetune.class_weight=true
  weighs classes by inverse frequency.

examples:
  domainfm finetune exported/speech recordings/ data.labels='pattern:^(\\d)_' run.dir=runs/ft
  domainfm finetune runs/speech recordings/ data.labels=folder finetune.method=lora finetune.steps=500
  domainfm finetune exported/earth chips.csv data.labels=column:crop finetune.method=linear \\
      data.groups=column:field finetune.val_fraction=0.2 finetune.patience=3
  domainfm finetune exported/medical scans/ data.labels=column:age finetune.task=regression
  domainfm finetune exported/medical cohort/manifest.csv finetune.task=segmentation data.masks=column:seg \\
      finetune.method=full run.dir=runs/seg
  domainfm finetune exported/earth s2/ finetune.task=segmentation finetune.method=linear \\
      data.masks='regex:_S2\\.tif$=>_mask.tif'     # a mask beside each chip
"""

PREDICT_EPILOG = """examples:
  domainfm predict runs/ft/finetuned new_recordings/ --out predictions.csv
  domainfm predict runs/ft/finetuned new.csv --out predictions.csv     # a manifest with a path column
  domainfm predict runs/seg/finetuned scans/ --out masks/    # dense: masks/<scan>_pred.nii.gz + masks/predictions.csv
dense tasks (segmentation) write each sample's labels in its source geometry: NIfTI in the source
image's space and affine (medical), one GeoTIFF per scene on its grid, transform and CRS (earth,
nodata where no chip was predicted), <file>_labels.npy with one label value per point in the input
file's point order (point clouds); --out is a folder (or a .csv whose stem names the folder) and the
CSV indexes them: id, path, prediction (the written file), fraction_<class>.
"""

EVALUATE_EPILOG = """tasks (--task): probe (linear, C and pooling by inner CV), knn, finetune (finetune.method=...),
  quality (label-free: RankMe, uniformity, alignment; no labels needed);
  for a run of `domainfm align` on a paired manifest: zero-shot (zero_shot.prompt=, zero_shot.classes=), retrieval;
  finetune with finetune.task=segmentation draws k labelled samples (volumes, chips, clouds) per seed and
  reports mean foreground Dice, mIoU and each structure's Dice
examples:
  domainfm evaluate exported/speech recordings/ data.labels='pattern:^(\\d)_' data.groups='pattern:_(\\w+)_'
  domainfm evaluate exported/earth chips/ data.labels=folder --baselines random,classical --out eval/result.json
  domainfm evaluate exported/grid data/ data.labels=folder --task finetune finetune.method=lora \\
      finetune.steps=200 probe.k=[5,10] probe.seeds=5 --baselines random,scratch
  domainfm evaluate exported/grid data/ --task quality --baselines random   # label-free, no labels needed
  domainfm evaluate exported/medical cohort/manifest.csv --task finetune finetune.task=segmentation \\
      finetune.method=linear probe.k=[2,4] probe.seeds=3 --baselines random
"""


def _data_spec(data: str, overrides: list[str]) -> dict:
    from foundation.recipes import DEFAULTS, apply_overrides

    spec = dict(DEFAULTS["data"])
    p = Path(data)
    spec["manifest" if p.is_file() and p.suffix in (".csv", ".jsonl", ".json", ".ndjson") else "root"] = str(p)
    return apply_overrides({"data": spec, "probe": dict(DEFAULTS["probe"]) | {"test_fraction": 0.3}}, overrides)


def cmd_pretrain(args) -> int:
    from foundation.recipes import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(recipe, sort_keys=False), end="")
        return 0
    from foundation.engine import pretrain

    run = pretrain(recipe, progress=not args.quiet)
    print(f"run directory: {run}  (encoder in {run / 'encoder'})")
    return 0


def cmd_align(args) -> int:
    """Bind two or more towers (encoders of any modality, text) into one space; THE engine trains it."""
    from foundation.recipes import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe["objective"] != "align":
        from foundation.recipes import RecipeError

        raise RecipeError(f"recipe {args.recipe!r} has objective {recipe['objective']!r}; domainfm align needs objective: align")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(recipe, sort_keys=False), end="")
        return 0
    from foundation.align_task import align_task
    from foundation.engine import train

    run = train(recipe, lambda resumed: align_task(recipe, resumed), progress=not args.quiet)
    summary_path = Path(run) / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        d = summary.get("data", {})
        print(f"paired data: {d.get('rows')} rows, pairs {d.get('pairs')}, {d.get('unpaired_rows')} unpaired; "
              f"loss {summary.get('first_loss', float('nan')):.4f} -> {summary.get('final_loss', float('nan')):.4f}")
    print(f"run directory: {run}  (towers in {Path(run) / 'towers'})")
    return 0


def cmd_export(args) -> int:
    from foundation.export import export_run

    out = export_run(args.run_dir, args.out_dir, data=args.data, license=args.license, pooling=args.pooling)
    checks = json.loads((out / "config.json").read_text())["export_checks"]
    print(f"exported encoder to {out} (model.safetensors, model.onnx, model.pt2, golden/; max difference from PyTorch: "
          + ", ".join(f"{k} {v:.1e}" for k, v in checks["max_diff"].items()) + ")")
    return 0


def _exported_and_data(args):
    """The exported encoder and DATA read with the preprocessing stored in it."""
    from foundation.model import Encoder

    encoder = Encoder.from_pretrained(args.model_dir)
    spec = _data_spec(args.data, args.overrides)
    return encoder, encoder.adapter.dataset(spec["data"], train=False), spec


def cmd_embed_aligned(args) -> int:
    """An aligned export: one tower's files, or texts, into the shared space (projection + L2 norm)."""
    from foundation.align_task import embed_aligned

    texts = None
    if args.text or args.text_file:
        if args.data is not None:
            raise DomainfmError("give DATA or --text/--text-file, not both (one tower per call; --tower NAME picks it)")
        texts = list(args.text or [])
        if args.text_file:
            f = Path(args.text_file)
            if not f.is_file():
                raise DomainfmError(f"--text-file {f}: no such file (one text per line)")
            texts += [line.strip() for line in f.read_text().splitlines() if line.strip()]
    elif args.data is None:
        raise DomainfmError(f"domainfm embed {args.model_dir}: give DATA (a folder or manifest) or --text/--text-file")
    data = _data_spec(args.data, args.overrides)["data"] if args.data is not None else None
    out = embed_aligned(args.model_dir, args.tower, data, texts, args.batch_size)
    np.savez(args.out, **out)
    what = f"{len(out['texts'])} texts" if "texts" in out else f"{len(out['ids'])} files"
    print(f"wrote {what} embedded by tower {out['tower']!r} into the shared space (width {out['embeddings'].shape[1]}) to {args.out}")
    return 0


def cmd_embed(args) -> int:
    import yaml

    from foundation.align_task import aligned_root
    from foundation.embed import LoadedEncoder

    if aligned_root(args.model_dir) is not None:
        return cmd_embed_aligned(args)
    if args.data is None or args.text or args.text_file or args.tower:
        raise DomainfmError(f"domainfm embed {args.model_dir} DATA: DATA is required; --text, --text-file and --tower are for "
                            "aligned exports (run.dir of domainfm align, or its towers/)")

    described = {k: yaml.safe_load(v) if v != "" else None for k, v in (o.split("=", 1) for o in args.overrides) if k.startswith(("input.", "adapter."))}
    loaded = LoadedEncoder(args.model_dir, pooling=args.pooling, overrides=described)
    spec = _data_spec(args.data, [o for o in args.overrides if not o.startswith(("input.", "adapter."))])
    out = loaded.embed_dataset(loaded.dataset(spec["data"]), args.batch_size, progress=not args.quiet)
    np.savez(args.out, embeddings=out.embeddings, ids=np.array(out.ids), paths=np.array(out.paths), pooling=np.array(out.pooling),
             weights_sha256=np.array(out.weights_sha256))
    print(f"wrote {len(out.ids)} embeddings of width {out.embeddings.shape[1]} ({out.pooling} pooling) to {args.out}")
    return 0


def cmd_probe(args) -> int:
    from foundation.evaluate import few_label_report, format_report

    encoder, dataset, spec = _exported_and_data(args)
    rep = few_label_report(encoder, dataset, spec["probe"]["k"], spec["probe"]["seeds"], spec["probe"]["test_fraction"])
    print(format_report(rep))
    return 0


def cmd_validate(args) -> int:
    """Read every file of DATA with the real readers; write validation.json/.md; non-zero on bad files."""
    from foundation.validate import validate_data, write_report

    report = validate_data(args.target, args.data, args.overrides, workers=args.workers, against=args.against,
                           progress=not args.quiet)
    folder = write_report(report, args.out)
    print(f"{report['modality']}: {report['files_found']} file(s), {report['files_failed']} failed, "
          f"{report['samples_read']} of {report['samples']} sample(s) read")
    if report.get("fatal"):
        print(f"fatal: {report['fatal']}")
    for f in report["failures"][:20]:
        print(f"  {f['path']}: {f['reason']}")
    if len(report["failures"]) > 20:
        print(f"  ... and {len(report['failures']) - 20} more")
    if report.get("leaked"):
        print(f"{len(report['leaked'])} file content(s) also in {report['against']} (leakage)")
    print(f"report: {folder / 'validation.md'}")
    return 1 if report["errors"] and not args.allow_errors else 0


def cmd_finetune(args) -> int:
    from foundation.finetune import run_finetune

    out, _ = run_finetune(args.model_dir, args.data, args.overrides, progress=not args.quiet)
    ev = json.loads((out / "evaluation.json").read_text())
    shown = {k: round(v, 4) for k, v in ev["metrics"].items() if isinstance(v, float)}
    print(f"fine-tuned model in {out}  (report: {out / 'report.md'}); on the {ev['split']} samples: {shown}")
    return 0


def cmd_predict(args) -> int:
    from foundation.finetune import run_predict

    out = run_predict(args.finetuned_dir, args.data, args.out, args.overrides, args.batch_size)
    print(f"wrote predictions to {out}")
    return 0


def cmd_report(args) -> int:
    from foundation.report import report

    print(f"wrote {report(args.run_dir, html=args.html)}")
    return 0


def cmd_evaluate(args) -> int:
    from foundation.evaluate import run_evaluate

    baselines = [b for b in (args.baselines or "").split(",") if b]
    out = run_evaluate(args.model_dir, args.data, args.task, args.overrides, baselines, args.out)
    result = json.loads(out.read_text())
    if args.task in ("zero-shot", "retrieval"):  # aligned towers: the headline numbers
        print("  ".join(f"{k} {v:.3f}" for k, v in (result.items() if args.task == "zero-shot" else
                        ((k, v) for pt in result.values() if isinstance(pt, dict) for k, v in pt.items()))
                        if isinstance(v, float) and ("accuracy" in k or "recall@" in k)))
        print(f"wrote {out}")
        return 0
    if "signals" in result:
        for a, sig in result["signals"].items():
            print(f"{a}: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sig.items()))
        print(f"wrote {out} and {out.parent / 'report.md'}")
        return 0
    key = result["metric"]
    for r in result["rows"]:
        print(f"k={r['k']:>3}  " + "  ".join(f"{a} {r[a][key]['mean']:.3f}±{r[a][key]['std']:.3f}" for a in result["arms"]))
    print(f"wrote {out} and {out.parent / 'report.md'}")
    return 0


def cmd_recipes(args) -> int:
    from foundation.recipes import recipe_names

    print("\n".join(recipe_names()))
    return 0


def cmd_demo(args) -> int:
    """Generated data -> pretrain -> few-label probe vs random init -> export -> fresh-process embed."""
    from foundation.engine import pretrain
    from foundation.evaluate import few_label_report, format_report
    from foundation.export import export_run
    from foundation.embed import embed_dataset
    from foundation.model import Encoder
    from foundation.recipes import load_recipe
    from modalities.base import adapter_from_config

    t0 = time.perf_counter()
    work = Path(args.dir).resolve()
    recipe_name = args.recipe or f"{args.modality}-{args.objective}"
    base = load_recipe(recipe_name, args.overrides)
    data_dir = work / "data"
    if not data_dir.exists():
        print(f"[1/5] generating {base['data']['synthetic_n']} labelled {args.modality} samples in {data_dir}")
        spec = adapter_from_config(base["modality"], base["adapter"]).synthetic(data_dir, base["data"]["synthetic_n"], seed=0)
    else:
        spec = json.loads((work / "data_spec.json").read_text())
    (work / "data_spec.json").write_text(json.dumps(spec))
    overrides = [f"data.{k}={v}" for k, v in spec.items()] + [f"run.dir={work / 'run'}"] + list(args.overrides)
    recipe = load_recipe(recipe_name, overrides)
    print(f"[2/5] pretraining {recipe_name} for {recipe['train']['steps']} steps")
    pretrain(recipe, progress=True, reuse_finished=True)  # rerunning the demo in its folder reuses a finished run of this recipe
    print("[3/5] exporting the encoder")
    out = export_run(work / "run", work / "exported")
    encoder = Encoder.from_pretrained(out)
    dataset = encoder.adapter.dataset(recipe["data"], train=False)
    print("[4/5] probing with few labels: pretrained vs the same architecture randomly initialised")
    rep = few_label_report(encoder, dataset, recipe["probe"]["k"], recipe["probe"]["seeds"])
    print("[5/5] reloading the export in a fresh process and embedding")
    npz = work / "embeddings.npz"
    data_arg = spec.get("root") or spec.get("manifest")
    extra = [f"data.{k}={v}" for k, v in spec.items() if k not in ("root", "manifest")]
    subprocess.run([sys.executable, "-m", "foundation.cli", "embed", str(out), data_arg, "--out", str(npz), "--quiet", *extra], check=True)
    fresh = np.load(npz)
    here = embed_dataset(encoder, dataset)[str(fresh["pooling"])]  # the pooling the export records for its modality
    gap = float(np.abs(fresh["embeddings"] - here).max())
    summary = json.loads((work / "run" / "summary.json").read_text())
    print("\n" + "=" * 72)
    print(f"domainfm demo: {recipe_name} on generated {args.modality} data ({len(dataset)} samples)")
    print(f"pretraining: loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} in {summary['steps']} steps, "
          f"{summary['samples_per_s']:.0f} samples/s, peak memory {summary['peak_mem_mb']:.0f} MB")
    print(format_report(rep))
    print(f"export: {out}  | fresh-process embeddings match in-process ones: max |diff| = {gap:.2e}")
    print(f"total time {time.perf_counter() - t0:.0f} s; everything is in {work}")
    print("=" * 72)
    return 0 if gap < 1e-4 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="domainfm", description="Build a foundation model for your own domain: pretrain an encoder on "
                                "unlabelled files, probe it with few labels, export it with its preprocessing.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("pretrain", help="pretrain an encoder from a recipe", description="Pretrain an encoder. RECIPE is a name "
                       "(see `domainfm recipes`) or a YAML path; add key=value overrides, e.g. data.root=DIR run.dir=DIR train.steps=500. "
                       "A run directory that holds a checkpoint is resumed exactly.")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("align", help="align towers (encoders, text) into one embedding space", description="Align two or more "
                       "towers from a recipe (e.g. align-speech-text); data.manifest=FILE has one column per tower, named as the tower; "
                       "towers.<name>.init=EXPORT_DIR starts a tower from an export. A run directory with a checkpoint is resumed.")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_align)

    s = sub.add_parser("export", help="export a run's encoder with its preprocessing", description="Write the encoder of RUN_DIR "
                       "(config.json with its preprocessing and input spec, model.safetensors, model.onnx, model.pt2, golden/ "
                       "and a model card) to OUT_DIR. ONNX and torch.export are checked against PyTorch on real samples first.")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.add_argument("--data", default=None, help="files to check the exported programs on (default: the run's training data)")
    s.add_argument("--license", default=None, help="licence written in the model card and config.json")
    s.add_argument("--pooling", default=None, help="pooling recorded as the default (default: the modality's recommended one)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("embed", help="embed a folder or manifest with an exported encoder", description="Embed every sample of DATA "
                       "(a folder or a CSV/JSONL manifest) in order; FILE.npz holds embeddings [N, D], ids [N], paths [N]. "
                       "With an aligned run/export (domainfm align's run.dir): one tower's files, or --text/--text-file "
                       "through the text tower, into the shared space (projection + L2 norm).")
    s.add_argument("model_dir")
    s.add_argument("data", nargs="?", default=None)
    s.add_argument("overrides", nargs="*", help="data.* overrides and input descriptions that never change the model, e.g. "
                   "input.bands=[B02,B03,B04,B08] input.columns=[x,y,z,intensity] input.units=dB input.max_seconds=600")
    s.add_argument("--out", required=True, help="output .npz file (embeddings, ids, paths, pooling, weights_sha256)")
    s.add_argument("--pooling", default=None, help="mean, meanstd, max, cls, mid_meanstd or layers_meanstd "
                   "(default: the pooling the export records for its modality)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--tower", default=None, help="aligned export: the tower to embed with (default: its only encoder tower, "
                   "or its only text tower for --text); a paired manifest is read by the column named as the tower")
    s.add_argument("--text", action="append", default=None, help="aligned export: a text to embed (repeatable)")
    s.add_argument("--text-file", default=None, help="aligned export: a file of texts to embed, one per line")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("probe", help="few-label probes: exported encoder vs random init", description="Linear probes with k labels "
                       "per class over paired seeds, against the same architecture randomly initialised. Labels come from data.labels.")
    s.add_argument("model_dir")
    s.add_argument("data")
    s.add_argument("overrides", nargs="*", help="e.g. data.labels=folder probe.k=[1,5,10] probe.seeds=5")
    s.set_defaults(fn=cmd_probe)

    s = sub.add_parser("validate", help="read every file with the real readers; report bad files and statistics",
                       description="Read every file of DATA (a folder or manifest) with the readers and preprocessing of "
                       "RECIPE_OR_MODEL_DIR (a recipe, an export or a run directory), in parallel workers. Writes validation.json "
                       "and validation.md; exits 1 if any file fails, unless --allow-errors.")
    s.add_argument("target", metavar="RECIPE_OR_MODEL_DIR")
    s.add_argument("data", metavar="DATA")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.labels=folder adapter.columns=kitti")
    s.add_argument("--out", default=None, help="folder for validation.json/.md (default: the run directory, else DATA's parent)")
    s.add_argument("--allow-errors", action="store_true", help="exit 0 even when files fail")
    s.add_argument("--against", default=None, metavar="OTHER_DATA", help="report files whose content also appears in OTHER_DATA")
    s.add_argument("--workers", type=int, default=None, help="reader processes (default: up to 4)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("finetune", help="fine-tune an encoder on labelled files", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a head (and, by method, the encoder) on DATA's labels; write run.dir/finetuned/ "
                       "(encoder/ and head.safetensors, finetuned.json with the task and label names, report.md with learning "
                       "curves and a confusion matrix, evaluation.json). MODEL_DIR is an exported encoder or a pretraining run "
                       "directory.", epilog=FINETUNE_EPILOG)
    s.add_argument("model_dir")
    s.add_argument("data", help="a folder of the modality's files or a CSV/JSONL manifest")
    s.add_argument("overrides", nargs="*", help="key=value: data.labels, data.groups, finetune.*, run.dir, run.seed")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("predict", help="predict with a fine-tuned model", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read every sample of DATA with the preprocessing stored in FINETUNED_DIR and write one CSV "
                       "row per sample: id, path, prediction, then score_<class> (classification: probabilities; multilabel: "
                       "per-label probabilities, the prediction joins those above 0.5 with ';'); for regression the prediction "
                       "is the value.", epilog=PREDICT_EPILOG)
    s.add_argument("finetuned_dir", help="run.dir/finetuned of `domainfm finetune`")
    s.add_argument("data")
    s.add_argument("overrides", nargs="*", help="data.* overrides (input description only)")
    s.add_argument("--out", required=True, help="output CSV (dense tasks: a folder for the label maps, or a CSV)")
    s.add_argument("--batch-size", type=int, default=64)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("report", help="regenerate a run's report.md with PNG plots", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Rebuild report.md and its PNG plots from a run's logs: a pretraining run (loss, learning "
                       "rate, gradient norm, throughput, collapse signals), a fine-tuning run (learning curves, confusion "
                       "matrix) or an evaluation directory (per-class accuracy with intervals).",
                       epilog="examples:\n  domainfm report runs/speech\n  domainfm report runs/ft --html\n")
    s.add_argument("run_dir")
    s.add_argument("--html", action="store_true", help="also write report.html")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("evaluate", help="few-label evaluation with paired intervals", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="The few-label protocol: a test split shared by every arm (whole groups with data.groups), "
                       "k labels per class drawn from the rest (probe.k=[1,5,10]) over probe.seeds paired seeds; per arm the "
                       "mean ± std of accuracy, balanced accuracy, macro-F1, AUROC (or MAE/RMSE/R² for regression), per-class "
                       "accuracy with 95%% intervals, and each baseline's paired difference to the model with its 95%% interval. "
                       "Writes --out (JSON) and report.md with PNGs beside it.", epilog=EVALUATE_EPILOG)
    s.add_argument("model_dir", help="an exported encoder or a pretraining run directory")
    s.add_argument("data")
    s.add_argument("overrides", nargs="*", help="data.labels, data.groups, probe.k, probe.seeds, probe.test_fraction, finetune.*")
    s.add_argument("--task", default="probe", help="probe (default; linear probe on frozen features), knn, finetune, "
                   "quality (label-free: RankMe, uniformity, alignment of two augmented views); zero-shot, retrieval for aligned towers")
    s.add_argument("--baselines", default="", help="comma-separated, opt-in: random (same method, random init), scratch "
                   "(full training from random init, same budget), classical (linear probe on simple statistics)")
    s.add_argument("--out", default="evaluation/result.json", help="result JSON (report.md and PNGs go beside it)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("recipes", help="list the named recipes")
    s.set_defaults(fn=cmd_recipes)

    s = sub.add_parser("demo", help="the whole workflow on generated data, with a short report", description="Generate a labelled "
                       "dataset, pretrain, probe against random init, export, reload in a fresh process and embed.")
    s.add_argument("--modality", default="grid", help="grid (default), speech, medical, earth, pointcloud or graph")
    s.add_argument("--objective", default="mae", choices=["mae", "jepa"])
    s.add_argument("--recipe", default=None, help="recipe to use instead of <modality>-<objective>")
    s.add_argument("--dir", default="runs/demo", help="working directory")
    s.add_argument("overrides", nargs="*", help="recipe overrides")
    s.set_defaults(fn=cmd_demo)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it (usage errors exit 2); tests parse the documented commands with it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after options: `pretrain R --print-config a=b`
    if any(e in ("-v", "--verbose") for e in extra):  # `domainfm pretrain R -v` as well as `domainfm -v pretrain R`
        args.verbose, extra = True, [e for e in extra if e not in ("-v", "--verbose")]
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; a problem the user can fix is printed as one line on stderr and gives exit code 1.

    argparse's usage errors keep exit code 2. ``-v`` also prints the traceback of a user-facing error;
    anything else is a bug and always keeps its traceback.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.fn(args)
    except (DomainfmError, FileNotFoundError) as err:
        if args.verbose:
            traceback.print_exc()
        print(f"domainfm {args.command}: {user_message(err, args)}", file=sys.stderr)
        return 1
    release_process_group()
    return code


def user_message(err: BaseException, args: argparse.Namespace | None = None) -> str:
    """The one line for a user-facing error: what, which file or key, and the way out.

    A modality reader's error (its class lives in ``modalities/<m>/io.py``, and that modality's dataset honours
    ``data.on_error``) gets the ``data.on_error=skip`` way out unless the user already chose it; every other
    error carries its own way out in its message.
    """
    if isinstance(err, FileNotFoundError) and err.filename is not None:  # the OS's own: "[Errno 2] ..."
        msg = f"{err.filename}: {err.strerror or 'not found'}"
    else:
        lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
        msg = lines[0]
        if msg.startswith("Caught ") and "DataLoader worker" in msg:  # re-raised from a worker: the original is last
            msg = lines[-1].split(": ", 1)[-1] if lines[-1].split(": ", 1)[0].endswith(type(err).__name__) else lines[-1]
    module = type(err).__module__
    unreadable = module.startswith("modalities.") and module.endswith(".io")
    chose_skip = any(o.replace(" ", "") == "data.on_error=skip" for o in getattr(args, "overrides", None) or [])
    if unreadable and "on_error" not in msg and not chose_skip:
        msg += " (fix or remove the file, or add data.on_error=skip to skip unreadable files)"
    return msg


def entry() -> None:
    """The `domainfm` console script."""
    exit_process(main())


if __name__ == "__main__":
    entry()
