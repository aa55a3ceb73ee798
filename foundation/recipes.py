"""Recipes: named YAML configs (torchtune-style) overlaid on the core defaults, plus ``key=value``
overrides that are checked against what exists, so a typo fails loudly instead of doing nothing."""
from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from foundation.errors import DomainfmError

DEFAULTS: dict[str, Any] = {
    "modality": "grid",
    "objective": "mae",
    "adapter": {},
    "data": {"root": None, "manifest": None, "labels": None, "synthetic_n": 600, "num_workers": 0,
             # on by default: pinning only acts on a GPU, persistence only with workers (no re-forking each epoch)
             "pin_memory": True, "persistent_workers": True, "on_error": "raise"},
    "model": {"width": 192, "depth": 6, "heads": 3, "mlp_ratio": 4.0, "qkv_bias": True},
    "masking": {"kind": "random", "ratio": 0.75, "axis": 0, "span": 4, "blocks": 4},
    "mae": {"decoder_width": 128, "decoder_depth": 2, "decoder_heads": 4, "mask_tokens_in_encoder": False,
            "visible_weight": 0.0},
    "jepa": {"predictor_width": 128, "predictor_depth": 3, "predictor_heads": 4, "ema_start": 0.996, "ema_end": 1.0,
             "targets": 4, "target_scale": [0.15, 0.2], "context_scale": [0.85, 1.0], "target_layers": 1, "target_norm": "layer"},
    "contrast": {"proj_dim": 128, "temperature": 0.1},
    "train": {"steps": 600, "batch_size": 32, "lr": 1.5e-3, "min_lr": 1e-5, "warmup_steps": 50, "weight_decay": 0.05,
              "betas": [0.9, 0.95], "accumulation": 1, "precision": "no", "clip": 1.0, "checkpoint_every": 200,
              "log_every": 10, "monitor_every": 100, "keep_checkpoints": 2, "timeout_s": 300,
              # speed options (numerics unchanged): recompute block activations in backward (3-d volumes), torch.compile the blocks
              "activation_checkpointing": False, "compile": False},
    "run": {"dir": "runs/default", "seed": 0},
    "probe": {"k": [1, 5, 10], "seeds": 5, "batch_size": 64},
    # alignment (`domainfm align`): one entry per tower, named as its manifest column (see foundation/towers.py)
    "towers": {},
    "align": {"loss": "infonce", "dim": 128, "temperature": None, "positives": "auto", "pairs": None, "anchor": None,
              "cache_dir": None, "eval_manifest": None},
    "zero_shot": {"prompt": "{}", "classes": {}, "tower": None},
}
# what one tower entry may hold (towers.<name>.<key>); anything else is refused
TOWER_KEYS = {"kind": "encoder", "modality": None, "init": None, "recipe": None, "mode": "frozen", "lr": None, "pooling": "mean",
              "head": "linear", "max_length": 32, "adapter": {}, "model": {}}

# Settings whose values are a closed set or a range; checked after overrides are applied.
CHOICES = {
    "objective": ("mae", "jepa", "contrast", "align"),
    "align.loss": ("infonce", "siglip"),
    "jepa.target_norm": ("layer", "instance"),
    "train.precision": ("no", "bf16", "fp16"),
    "data.on_error": ("raise", "skip"),
}
POSITIVE = ("model.width", "model.depth", "model.heads", "train.steps", "train.batch_size", "train.accumulation",
            "train.checkpoint_every", "train.log_every", "mae.decoder_width", "mae.decoder_depth", "jepa.predictor_width",
            "jepa.predictor_depth", "probe.seeds", "train.lr")
NULLABLE = {"data.root", "data.manifest", "data.labels"}


class RecipeError(DomainfmError, ValueError):
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
            out[key] = _merge(out[key], value, path, open_keys=path in ("adapter", "towers", "zero_shot.classes") or _in_tower(path))
        else:
            out[key] = value
    return out


def _in_tower(path: str) -> bool:
    """towers.<name> and its adapter/model sections are open: tower names and adapters vary."""
    parts = path.split(".")
    return parts[0] == "towers" and (len(parts) == 2 or parts[2:3] in (["adapter"], ["model"]))


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
    """``raw`` (the text after ``=``) read as YAML, then checked against the type of ``old``, the value it replaces."""
    value = yaml.safe_load(raw) if raw != "" else None
    if isinstance(value, str):  # YAML 1.1 reads 2e-3 as a string; users mean a number
        try:
            value = float(value) if any(ch in value.lower() for ch in ".e") else int(value)
        except ValueError:
            pass
    if value is None:
        if dotted in NULLABLE or old is None or dotted.startswith("adapter."):  # adapters use null for "derive from the data"
            return None
        raise RecipeError(f"{dotted} cannot be empty")
    if dotted.startswith("towers."):
        return value  # a tower's settings are checked by validate_towers
    if isinstance(old, str) and not isinstance(value, str):
        return raw  # YAML reads no/yes/on/off as booleans; a text setting means the text
    return check_value(dotted, old, value, raw)


def check_value(dotted: str, old: Any, value: Any, shown: str | None = None) -> Any:
    """``value`` for the setting ``dotted`` whose default (or current value) is ``old``: the same kind of
    value (a whole number, a number, true/false, a list, a text), or a :class:`RecipeError` naming the key.
    ``None`` on either side is not checked (a null default means "derived from the data")."""
    if old is None or value is None:
        return value
    shown = repr(value) if shown is None else repr(shown)
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"{dotted} expects true or false, got {shown}")
    elif isinstance(old, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{dotted} expects a whole number, got {shown}")
    elif isinstance(old, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{dotted} expects a number, got {shown}")
        value = float(value)
    elif isinstance(old, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            example = "[1, 5, 10]" if not old else "[" + ", ".join("null" if v is None else str(v) for v in old) + "]"
            raise RecipeError(f"{dotted} expects a list such as {example}, got {shown}")
    elif isinstance(old, str) and not isinstance(value, str):
        raise RecipeError(f"{dotted} expects a text value, got {shown}")
    return value


def check_settings(section: str, defaults: dict, config: dict) -> dict:
    """``config`` checked key by key against ``defaults`` (unknown keys and wrong kinds of value are refused,
    naming ``section.key``); what an adapter's ``__init__`` and :func:`validate` both call."""
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        close = [f"{section}.{m}" for k in unknown for m in difflib.get_close_matches(k, list(defaults), n=1)]
        hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(sorted(defaults))}."
        raise RecipeError(f"unknown setting(s) {', '.join(f'{section}.{k}' for k in unknown)}.{hint}")
    return {k: check_value(f"{section}.{k}", defaults[k], v) for k, v in config.items()}


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not key=value (e.g. train.steps=100)")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        node, key = _lookup(recipe, dotted)
        if key not in node and not dotted.startswith(("adapter.", "zero_shot.classes.")) and not _in_tower(dotted.rsplit(".", 1)[0]):
            raise RecipeError(_unknown(dotted, node))
        old = node.get(key)
        if dotted.startswith("adapter.") and old is None:  # typed like the adapter's default
            old = _adapter_defaults(recipe.get("modality")).get(key)
        node[key] = _coerce(dotted, old, raw.strip())
    return recipe


def validate_towers(recipe: dict) -> dict:
    """An alignment recipe: every tower entry filled with TOWER_KEYS' defaults and checked."""
    if len(recipe["towers"]) < 2:
        raise RecipeError("an alignment recipe needs at least two towers (towers.<name>.kind=encoder|text)")
    for name, spec in recipe["towers"].items():
        if not isinstance(spec, dict):
            raise RecipeError(f"towers.{name} must be a mapping (kind, init, mode, ...)")
        bad = sorted(set(spec) - set(TOWER_KEYS))
        if bad:
            raise RecipeError(f"unknown key(s) {bad} in towers.{name}; known: {', '.join(sorted(TOWER_KEYS))}")
        recipe["towers"][name] = spec = {**copy.deepcopy(TOWER_KEYS), **spec}
        if spec["kind"] not in ("encoder", "text"):
            raise RecipeError(f"towers.{name}.kind={spec['kind']!r} is not encoder or text")
        if spec["mode"] not in ("frozen", "train", "lora"):
            raise RecipeError(f"towers.{name}.mode={spec['mode']!r} is not frozen, train or lora")
        if spec["kind"] == "encoder" and not (spec["init"] or spec["modality"]):
            raise RecipeError(f"towers.{name}: set init=EXPORT_DIR or modality=<name> (a fresh encoder)")
    return recipe


def validate(recipe: dict) -> dict:
    for dotted, allowed in CHOICES.items():
        node, key = _lookup(recipe, dotted)
        if node[key] not in allowed:
            raise RecipeError(f"{dotted}={node[key]!r} is not one of {', '.join(map(str, allowed))}")
    if recipe["objective"] == "align":
        return validate_towers(recipe)  # towers carry their own modality, adapter and model settings
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
    recipe["adapter"] = check_settings("adapter", cls.defaults, recipe["adapter"])
    return recipe


# -- objective sections: each is used by its objective, or refused ---------------------------------
# Which objective-specific sections each objective reads (``engine.build_objective``). JEPA chooses its
# own context and target blocks (``jepa.targets``, ``jepa.target_scale``, ``jepa.context_scale``), so
# a ``masking:`` section would do nothing there.
SECTIONS_USED = {"mae": ("masking", "mae"), "jepa": ("jepa",), "contrast": ("masking", "contrast"), "align": ("align", "towers")}


def modality_defaults(modality: Any) -> dict:
    """The core defaults with ``masking`` from the modality's adapter (``Adapter.default_masking``), so a
    recipe that does not set masking gets its modality's masking, and each modality states it once."""
    from modalities.base import ADAPTERS, adapter_class

    defaults = copy.deepcopy(DEFAULTS)
    if isinstance(modality, str) and modality in ADAPTERS:
        defaults["masking"].update(adapter_class(modality).default_masking)
    return defaults


def refuse_unused_sections(recipe: dict, defaults: dict) -> None:
    """A section the recipe's objective does not read, set to anything but its default, is an error:
    it would silently do nothing."""
    used = SECTIONS_USED.get(recipe["objective"], ())
    for section in sorted({s for sections in SECTIONS_USED.values() for s in sections} - set(used)):
        changed = sorted(k for k, v in recipe[section].items() if v != defaults[section].get(k))
        if changed:
            keys = ", ".join(f"{section}.{k}" for k in changed)
            raise RecipeError(f"objective {recipe['objective']!r} does not use {keys}: remove it from the recipe "
                              f"or the overrides (a {recipe['objective']} recipe reads {', '.join(used)})")


def _adapter_defaults(modality: str | None) -> dict:
    from modalities.base import ADAPTERS, adapter_class

    return adapter_class(modality).defaults if modality in ADAPTERS else {}


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults (masking from the modality's adapter) <- recipe file <- overrides, then validated."""
    raw = _read_yaml(name_or_path)
    modality = raw.get("modality", DEFAULTS["modality"])
    for item in overrides:
        if item.split("=", 1)[0].strip() == "modality":
            modality = item.split("=", 1)[1].strip()
    defaults = modality_defaults(modality)
    recipe = _merge(defaults, raw, "", open_keys=False)
    recipe = apply_overrides(recipe, list(overrides))
    recipe["name"] = Path(name_or_path).stem
    recipe = validate(recipe)
    refuse_unused_sections(recipe, defaults)
    return recipe
