"""``domainfm``: pretrain, export, embed, probe and demo from the command line.

Every command that takes a recipe accepts ``key=value`` overrides (``train.steps=100``); run
``domainfm pretrain RECIPE --print-config`` to see what a recipe resolves to.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EPILOG = """examples:
  domainfm demo                                   # pretrain, probe, export, reload and embed on generated data
  domainfm pretrain speech-mae data.root=recordings/ run.dir=runs/speech
  domainfm pretrain grid-mae --print-config       # show the resolved recipe
  domainfm export runs/speech exported/speech     # the encoder alone, with its preprocessing
  domainfm embed exported/speech recordings/ --out emb.npz
  domainfm probe exported/speech recordings/ data.labels='pattern:^(\\d)_'
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


def cmd_export(args) -> int:
    from foundation.export import export_run

    out = export_run(args.run_dir, args.out_dir)
    print(f"exported encoder to {out}")
    return 0


def _exported_and_data(args):
    """The exported encoder and DATA read with the preprocessing stored in it."""
    from foundation.model import Encoder

    encoder = Encoder.from_pretrained(args.model_dir)
    spec = _data_spec(args.data, args.overrides)
    return encoder, encoder.adapter.dataset(spec["data"], train=False), spec


def cmd_embed(args) -> int:
    from foundation.embed import embed_dataset

    encoder, dataset, _ = _exported_and_data(args)
    out = embed_dataset(encoder, dataset, args.batch_size, progress=not args.quiet)
    choices = [k for k, v in out.items() if k not in ("ids", "paths", "labels") and not isinstance(v, list)]  # lists: per-sample bags (bag_probe's instances)
    if args.pooling not in choices:
        raise SystemExit(f"unknown pooling {args.pooling!r}; choose from {choices}")
    np.savez(args.out, embeddings=out[args.pooling].astype(np.float32), ids=out["ids"], paths=out["paths"], labels=out["labels"])
    print(f"wrote {len(out['ids'])} embeddings of width {out[args.pooling].shape[1]} to {args.out}")
    return 0


def cmd_probe(args) -> int:
    from foundation.evaluate import few_label_report, format_report

    encoder, dataset, spec = _exported_and_data(args)
    rep = few_label_report(encoder, dataset, spec["probe"]["k"], spec["probe"]["seeds"], spec["probe"]["test_fraction"])
    print(format_report(rep))
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
    here = embed_dataset(encoder, dataset)["mean"]
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

    s = sub.add_parser("export", help="export a run's encoder with its preprocessing", description="Write the encoder of RUN_DIR "
                       "(config.json with its preprocessing, model.safetensors, a model card) to OUT_DIR.")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("embed", help="embed a folder or manifest with an exported encoder", description="Embed every sample of DATA "
                       "(a folder or a CSV/JSONL manifest) in order; FILE.npz holds embeddings [N, D], ids [N], paths [N].")
    s.add_argument("model_dir")
    s.add_argument("data")
    s.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.labels=folder")
    s.add_argument("--out", required=True, help="output .npz file")
    s.add_argument("--pooling", default="mean", help="mean (default), meanstd, max, cls or mid_meanstd")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("probe", help="few-label probes: exported encoder vs random init", description="Linear probes with k labels "
                       "per class over paired seeds, against the same architecture randomly initialised. Labels come from data.labels.")
    s.add_argument("model_dir")
    s.add_argument("data")
    s.add_argument("overrides", nargs="*", help="e.g. data.labels=folder probe.k=[1,5,10] probe.seeds=5")
    s.set_defaults(fn=cmd_probe)

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after options: `pretrain R --print-config a=b`
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from foundation.recipes import RecipeError

    try:
        code = args.fn(args)
    except RecipeError as err:
        print(f"domainfm: recipe error: {err}", file=sys.stderr)
        return 2
    release_process_group()
    return code


def release_process_group() -> None:
    """Tear gloo/NCCL down while the interpreter is alive, after a command that ran under torchrun.

    A process group left for interpreter finalisation is destroyed while modules are being cleared, and gloo's
    worker threads then sometimes abort the process ("terminate called without an active exception"), turning a
    finished run into a failed torchrun. Only the success path does this: after an error a peer may still be
    blocked in a collective and a collective teardown would hang instead of letting torchrun report the error.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """Leave the process with `code`; a torchrun worker leaves without interpreter finalisation.

    `destroy_process_group` only drops c10d's own references: DDP's reducer and Accelerate's state still hold the
    gloo group, so its threads outlive `main` and are torn down during finalisation, where about one two-process run
    in forty (under CPU contention) aborted with SIGABRT after a complete, saved run. Everything a command writes is
    closed by the time it returns, so a worker flushes its streams and exits at once.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def entry() -> None:
    """The `domainfm` console script."""
    exit_process(main())


if __name__ == "__main__":
    entry()
