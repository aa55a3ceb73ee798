"""Recipes: named YAML configs (torchtune-style) overlaid on the core defaults, plus ``key=value``
overrides that are checked against what exists, so a typo fails loudly instead of doing nothing."""
from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "modality": "grid",
    "objective": "mae",
    "adapter": {},
    "data": {"root": None, "manifest": None, "labels": None, "synthetic_n": 600, "num_workers": 0, "pin_memory": False,
             "persistent_workers": False, "on_error": "raise"},
    "model": {"width": 192, "depth": 6, "heads": 3, "mlp_ratio": 4.0, "qkv_bias": True},
    "masking": {"kind": "random", "ratio": 0.75, "axis": 0, "span": 4, "blocks": 4},
    "mae": {"decoder_width": 128, "decoder_depth": 2, "decoder_heads": 4, "mask_tokens_in_encoder": False, "remask": False,
            "latent": "tokens", "visible_weight": 0.0},
    "jepa": {"predictor_width": 128, "predictor_depth": 3, "predictor_heads": 4, "ema_start": 0.996, "ema_end": 1.0,
             "targets": 4, "target_scale": [0.15, 0.2], "context_scale": [0.85, 1.0], "target_layers": 1, "target_norm": "layer"},
    "contrast": {"proj_dim": 128, "temperature": 0.1},
    "train": {"steps": 600, "batch_size": 32, "lr": 1.5e-3, "min_lr": 1e-5, "warmup_steps": 50, "weight_decay": 0.05,
              "betas": [0.9, 0.95], "accumulation": 1, "precision": "no", "clip": 1.0, "checkpoint_every": 200,
              "log_every": 10, "monitor_every": 100, "keep_checkpoints": 2, "timeout_s": 300},
    "run": {"dir": "runs/default", "seed": 0},
    "probe": {"k": [1, 5, 10], "seeds": 5, "batch_size": 64},
}

# Settings whose values are a closed set or a range; checked after overrides are applied.
CHOICES = {
    "objective": ("mae", "jepa", "contrast"),
    "mae.latent": ("tokens", "pooled"),
    "jepa.target_norm": ("layer", "instance"),
    "train.precision": ("no", "bf16", "fp16"),
    "data.on_error": ("raise", "skip"),
}
POSITIVE = ("model.width", "model.depth", "model.heads", "train.steps", "train.batch_size", "train.accumulation",
            "train.checkpoint_every", "train.log_every", "mae.decoder_width", "mae.decoder_depth", "jepa.predictor_width",
            "jepa.predictor_depth", "probe.seeds", "train.lr")
NULLABLE = {"data.root", "data.manifest", "data.labels"}


class RecipeError(ValueError):
    """A recipe or override that cannot be used; the message says which key and why."""


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("recipes").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        ref = resources.files("recipes") / f"{name_or_path}.yaml"
        if not ref.is_file():
            close = difflib.get_close_matches(name_or_path, recipe_names(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Known recipes: {', '.join(recipe_names())}."
            raise RecipeError(f"no recipe named {name_or_path!r} and no YAML file at that path.{hint}")
        text = ref.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {name_or_path!r} is not a mapping of sections")
    return data


def _merge(base: dict, over: dict, where: str, open_keys: bool) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        path = f"{where}.{key}" if where else key
        if key not in out and not open_keys:
            raise RecipeError(_unknown(path, base))
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, path, open_keys=path == "adapter")
        else:
            out[key] = value
    return out


def _unknown(path: str, options: dict) -> str:
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, list(options), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Known here: {', '.join(sorted(options))}."
    return f"unknown recipe key {path!r}.{hint}"


def _lookup(recipe: dict, dotted: str) -> tuple[dict, str]:
    parts = dotted.split(".")
    node = recipe
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise RecipeError(_unknown(".".join(parts[: i + 1]), node))
        node = node[part]
    return node, parts[-1]


def _coerce(dotted: str, old: Any, raw: str) -> Any:
    value = yaml.safe_load(raw) if raw != "" else None
    if isinstance(value, str):  # YAML 1.1 reads 2e-3 as a string; users mean a number
        try:
            value = float(value) if any(ch in value.lower() for ch in ".e") else int(value)
        except ValueError:
            pass
    if value is None:
        if dotted in NULLABLE or old is None:
            return None
        raise RecipeError(f"{dotted} cannot be empty")
    if old is None or dotted.startswith("adapter."):
        return value
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"{dotted} expects true or false, got {raw!r}")
    elif isinstance(old, int) and not isinstance(old, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{dotted} expects a whole number, got {raw!r}")
    elif isinstance(old, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{dotted} expects a number, got {raw!r}")
        value = float(value)
    elif isinstance(old, list):
        if not isinstance(value, list):
            raise RecipeError(f"{dotted} expects a list such as [1, 5, 10], got {raw!r}")
    elif isinstance(old, str) and not isinstance(value, str):
        value = raw  # YAML reads no/yes/on/off as booleans; a text setting means the text
    return value


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not key=value (e.g. train.steps=100)")
        dotted, raw = item.split("=", 1)
        node, key = _lookup(recipe, dotted.strip())
        if key not in node and not dotted.startswith("adapter."):
            raise RecipeError(_unknown(dotted, node))
        node[key] = _coerce(dotted, node.get(key), raw.strip())
    return recipe


def validate(recipe: dict) -> dict:
    for dotted, allowed in CHOICES.items():
        node, key = _lookup(recipe, dotted)
        if node[key] not in allowed:
            raise RecipeError(f"{dotted}={node[key]!r} is not one of {', '.join(map(str, allowed))}")
    for dotted in POSITIVE:
        node, key = _lookup(recipe, dotted)
        if not (isinstance(node[key], (int, float)) and node[key] > 0):
            raise RecipeError(f"{dotted} must be a positive number, got {node[key]!r}")
    ratio = recipe["masking"]["ratio"]
    if not 0 <= ratio < 1:
        raise RecipeError(f"masking.ratio must be in [0, 1), got {ratio}")
    if recipe["model"]["width"] % recipe["model"]["heads"]:
        raise RecipeError(f"model.width {recipe['model']['width']} must be divisible by model.heads {recipe['model']['heads']}")
    from modalities.base import ADAPTERS, adapter_class

    if recipe["modality"] not in ADAPTERS:
        raise RecipeError(f"modality {recipe['modality']!r} is not one of {', '.join(sorted(ADAPTERS))}")
    cls = adapter_class(recipe["modality"])
    kinds = ("random", "block", "tube", "span", *cls.mask_kinds)
    if recipe["masking"]["kind"] not in kinds:
        raise RecipeError(f"masking.kind={recipe['masking']['kind']!r} is not one of {', '.join(kinds)}")
    known = cls.defaults
    bad = sorted(set(recipe["adapter"]) - set(known))
    if bad:
        raise RecipeError(f"unknown adapter key(s) {bad} for modality {recipe['modality']!r}; known: {', '.join(sorted(known))}")
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults <- recipe file <- overrides, then validated."""
    recipe = _merge(DEFAULTS, _read_yaml(name_or_path), "", open_keys=False)
    recipe = apply_overrides(recipe, list(overrides))
    recipe["name"] = Path(name_or_path).stem
    return validate(recipe)
