"""Export: the encoder alone, with its preprocessing, from a run directory."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors.torch import load_file

from foundation import checkpoint
from foundation.model import Encoder
from modalities.base import adapter_from_config


def encoder_from_run(run_dir: str | Path) -> Encoder:
    """The run's final encoder, or the latest checkpoint's (the EMA teacher for JEPA)."""
    run_dir = Path(run_dir)
    if (run_dir / "encoder" / "config.json").exists():
        return Encoder.from_pretrained(run_dir / "encoder")
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds neither an exported encoder nor a checkpoint (give the run.dir of a `domainfm pretrain` run)")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    state = json.loads((ckpt / "state.json").read_text())
    encoder = Encoder.build(adapter_from_config(recipe["modality"], state["adapter"]), recipe["model"])
    if (ckpt / "teacher.safetensors").exists():
        encoder.load_state_dict(load_file(str(ckpt / "teacher.safetensors")), strict=True)
    else:
        weights = {k[len("encoder."):]: v for k, v in load_file(str(ckpt / "model.safetensors")).items() if k.startswith("encoder.")}
        encoder.load_state_dict(weights, strict=True)
    return encoder.eval()


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    return encoder_from_run(run_dir).save_pretrained(out_dir)
