"""`domainfm align`: an alignment recipe -> towers + paired data + loss, trained by THE engine's loop.

``align_task(recipe, resumed)`` builds the :class:`foundation.engine.TrainingTask`; its ``finish`` writes
each tower with its projection to ``run_dir/towers/<name>/`` and, given ``align.eval_manifest``, the
evaluation (retrieval both ways, zero-shot, emergent retrieval between non-anchor towers) to
``run_dir/align_eval.json``. ``load_towers(dir)`` reads the exported towers back.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from foundation.errors import DomainfmError
from foundation.model import Encoder, readable_under_umask
from foundation.objectives.align import AlignModel
from foundation.pairs import PairedDataset, PairScheduleSampler, collate_pairs
from foundation.towers import EncoderTower, TextTower, Tower, build_tiny_text_tower
from modalities.base import adapter_from_config

log = logging.getLogger("domainfm")


def _encoder_dir(path: str | Path) -> Path:
    """An export directory, or a run directory whose ``encoder/`` is used."""
    p = Path(path)
    if (p / "config.json").exists():
        return p
    if (p / "encoder" / "config.json").exists():
        return p / "encoder"
    raise DomainfmError(f"tower init {p}: not an exported encoder or a run directory with encoder/ (export one with domainfm export)")


def _fresh_encoder_parts(spec: dict) -> tuple[str, dict, dict]:
    """(modality, adapter config, model config) of a fresh encoder: its recipe's, overlaid with the tower's."""
    from foundation.recipes import DEFAULTS, load_recipe

    base = load_recipe(spec["recipe"]) if spec["recipe"] else {"modality": spec["modality"], "adapter": {}, "model": DEFAULTS["model"]}
    return spec["modality"] or base["modality"], {**base["adapter"], **spec["adapter"]}, {**base["model"], **spec["model"]}


def fingerprint(name: str, spec: dict, extra: dict) -> str:
    """What determines a frozen tower's features: its init weights (path + size + mtime) or fresh config."""
    src = {"name": name, "spec": spec, **extra}
    if spec.get("init"):
        w = _encoder_dir(spec["init"]) / "model.safetensors" if spec["kind"] == "encoder" else Path(spec["init"])
        st = w.stat()
        src["weights"] = [str(w.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_towers(recipe: dict, run_dir: Path, texts: list[str], adapters: dict) -> dict[str, Tower]:
    dim = int(recipe["align"]["dim"])
    towers = {}
    for name, spec in recipe["towers"].items():
        if spec["kind"] == "text":
            init = spec["init"]
            if init in (None, "tiny"):  # tests and CPU recipes: a tiny random BERT with a WordPiece vocabulary of the texts
                init = run_dir / "text_tower"
                if not (init / "config.json").exists():
                    build_tiny_text_tower(init, texts, seed=int(recipe["run"]["seed"]))
            towers[name] = TextTower(name, init, dim, spec["mode"], spec["lr"], spec["max_length"], spec["head"])
        else:
            if spec["init"]:
                enc = Encoder.from_pretrained(_encoder_dir(spec["init"]))
            else:
                enc = Encoder.build(adapters[name], _fresh_encoder_parts(spec)[2])
            towers[name] = EncoderTower(name, enc, dim, spec["mode"], spec["lr"], spec["pooling"], spec["head"])
    return towers


def tower_adapters(recipe: dict, resumed: dict | None) -> dict:
    """Each encoder tower's adapter: an export's stored preprocessing, a resumed run's fitted one, or fresh."""
    out = {}
    for name, spec in recipe["towers"].items():
        if spec["kind"] != "encoder":
            continue
        if spec["init"]:
            cfg = json.loads((_encoder_dir(spec["init"]) / "config.json").read_text())
            out[name] = adapter_from_config(cfg["modality"], cfg["adapter"])
        else:
            modality, adapter_cfg, _ = _fresh_encoder_parts(spec)
            out[name] = adapter_from_config(modality, resumed["adapters"][name] if resumed else adapter_cfg)
    return out


def paired_dataset(recipe: dict, manifest, adapters: dict, train: bool, work_dir: Path) -> PairedDataset:
    if recipe["data"].get("on_error", "raise") != "raise":
        raise DomainfmError("data.on_error=skip is not supported (a skipped row would leave processes with unequal "
                            "batches for the gathered loss); fix or remove the manifest row the error names")
    specs = {n: ({"kind": "text"} if s["kind"] == "text" else {"kind": "encoder", "adapter": adapters[n], "frozen": s["mode"] == "frozen"})
             for n, s in recipe["towers"].items()}
    return PairedDataset(manifest, specs, recipe["align"]["pairs"], recipe["align"]["positives"], train, recipe["data"], work_dir)


def param_groups(model: AlignModel, weight_decay: float, lr: float) -> list[dict]:
    """Per tower: its own learning rate (``towers.<name>.lr``), no weight decay on norms, biases and
    the temperatures/biases of the loss (all fewer than 2 dims)."""
    groups = []
    for name, tower in model.towers.items():
        tlr = float(tower.lr) if tower.lr else lr
        ps = [p for p in tower.parameters() if p.requires_grad]
        groups += [{"params": [p for p in ps if p.ndim >= 2], "weight_decay": weight_decay, "lr": tlr},
                   {"params": [p for p in ps if p.ndim < 2], "weight_decay": 0.0, "lr": tlr}]
    groups.append({"params": list(model.loss.parameters()), "weight_decay": 0.0, "lr": lr})
    return [g for g in groups if g["params"]]


# -- caching frozen features across runs --------------------------------------------------------------
FEATURE_KEYS = ("kind", "modality", "init", "recipe", "adapter", "model", "pooling", "max_length")


def _cache_file(recipe: dict, name: str, tower: Tower) -> Path | None:
    d = recipe["align"]["cache_dir"]
    if not d or tower.mode != "frozen":
        return None
    # only what determines the backbone's features: a new head, learning rate or loss reuses the cache
    spec = {k: v for k, v in recipe["towers"][name].items() if k in FEATURE_KEYS}
    extra = {"adapter": tower.encoder.adapter.preprocessing()} if isinstance(tower, EncoderTower) else {}
    if not spec["init"]:
        extra["seed"] = int(recipe["run"]["seed"])  # a fresh frozen tower is its random initialisation
    return Path(d) / f"{name}-{fingerprint(name, spec, extra)}.safetensors"


def load_caches(recipe: dict, towers: dict[str, Tower]) -> None:
    for name, tower in towers.items():
        f = _cache_file(recipe, name, tower)
        if f is not None and f.exists():
            tower.cache.update(load_file(str(f)))


@torch.no_grad()
def precompute_frozen(towers: dict[str, Tower], data: PairedDataset, batch_size: int = 64) -> None:
    """Features of every row of each frozen encoder tower, computed once into its cache (those a cache file
    already held are kept); the training items then carry no input for that tower (``data.precomputed``),
    so alignment steps on a frozen tower cost its head only, whatever the number of steps or epochs."""
    from foundation.tokens import collate

    for name, tower in towers.items():
        if tower.mode != "frozen" or not isinstance(tower, EncoderTower) or name not in data.index:
            continue
        tower.train()  # the backbone stays in eval mode (frozen), as during training
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        tower.encoder.to(device)
        rows = [r for r in data.index[name] if data.item_id(name, r) not in tower.cache]
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            tower.features(collate([data.read(name, r, None) for r in chunk]).to(device), [data.item_id(name, r) for r in chunk])
        data.precomputed.add(name)
        if tower.head_kind == "standardized":  # statistics of this run's training rows (a resumed run loads its own)
            tower.head[0].fit(torch.stack([tower.cache[data.item_id(name, r)] for r in data.index[name]]))


def save_caches(recipe: dict, towers: dict[str, Tower]) -> None:
    for name, tower in towers.items():
        f = _cache_file(recipe, name, tower)
        if f is not None and tower.cache:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in tower.cache.items()}, str(tmp))
            tmp.replace(f)


# -- export and evaluation ----------------------------------------------------------------------------
def merged_state(module: torch.nn.Module) -> dict:
    """State dict with LoRA adapters merged into their base weights and peft's wrappers removed, so
    the backbone saves under its plain parameter names (loadable strictly, without peft)."""
    from peft.tuners.lora import LoraLayer

    for m in module.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge()
    return {k.replace(".base_layer", ""): v for k, v in module.state_dict().items() if "lora_" not in k}


def export_towers(model: AlignModel, out_dir: Path, recipe: dict | None = None) -> Path:
    """``out_dir/<name>/``: the backbone (an encoder export, or a transformers model + tokenizer) with
    ``head.safetensors`` (its projection) and ``tower.json``; ``aligned.json`` lists the towers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, tower in model.towers.items():
        d = out_dir / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if isinstance(tower, EncoderTower):
            enc = Encoder(tower.encoder.adapter, **tower.encoder.config)
            enc.load_state_dict(merged_state(tower.encoder) if tower.mode == "lora" else tower.encoder.state_dict(), strict=True)
            enc.save_pretrained(d / "encoder", extra={"objective": "align"})
            info = {"kind": "encoder", "pooling": tower.pooling}
        else:
            state = merged_state(tower.model) if tower.mode == "lora" else tower.model.state_dict()
            from transformers import AutoModel

            fresh = AutoModel.from_pretrained(tower.directory, local_files_only=True)
            missing, unexpected = fresh.load_state_dict(state, strict=False)
            # the only tolerated difference is BERT's unused pooler (frozen, and absent when built without it)
            bad = [k for k in [*missing, *unexpected] if not k.startswith("pooler.")]
            if bad:
                raise DomainfmError(f"text tower {name!r}: trained weights do not match {tower.directory} ({sorted(bad)[:5]}); "
                                    "align again from the same text-tower directory")
            fresh.save_pretrained(str(d / "text"))
            tower.tokenizer.save_pretrained(str(d / "text"))
            info = {"kind": "text", "max_length": tower.max_length}
        save_file({k: v.detach().contiguous().cpu() for k, v in tower.head.state_dict().items()}, str(d / "head.safetensors"))
        head_kind = tower.head_kind
        (d / "tower.json").write_text(json.dumps({**info, "dim": tower.head_dim(), "head": head_kind}, indent=2))
    settings = {k: recipe[k] for k in ("align", "zero_shot")} if recipe else {}
    (out_dir / "aligned.json").write_text(json.dumps({"towers": list(model.towers), **settings}, indent=2, default=str))
    readable_under_umask(out_dir)  # safetensors writes 0600; teammates read exports as the user's other files
    return out_dir


def aligned_root(model_dir: str | Path) -> Path | None:
    """The folder holding ``aligned.json`` (an aligned export, or a run directory's ``towers/``), else None."""
    p = Path(model_dir)
    return next((d for d in (p, p / "towers") if (d / "aligned.json").is_file()), None)


def load_towers(export_dir: str | Path, names: list[str] | None = None) -> dict[str, Tower]:
    """The towers ``export_towers`` wrote (all, or ``names``), frozen, ready to embed into the shared space."""
    root = aligned_root(export_dir)
    if root is None:
        raise DomainfmError(f"{export_dir}: no aligned.json (not an aligned export; run domainfm align first)")
    export_dir = root
    listed = json.loads((export_dir / "aligned.json").read_text())["towers"]
    unknown = [n for n in names or [] if n not in listed]
    if unknown:
        raise DomainfmError(f"{export_dir}: no tower named {unknown[0]!r}; its towers are {', '.join(listed)} (--tower NAME)")
    towers = {}
    for name in [n for n in listed if names is None or n in names]:
        d = export_dir / name
        info = json.loads((d / "tower.json").read_text())
        if info["kind"] == "encoder":
            t = EncoderTower(name, Encoder.from_pretrained(d / "encoder"), info["dim"], "frozen", pooling=info["pooling"], head=info["head"])
        else:
            t = TextTower(name, d / "text", info["dim"], "frozen", max_length=info["max_length"], head=info["head"])
        t.head.load_state_dict(load_file(str(d / "head.safetensors")))
        towers[name] = t.eval()
    return towers


@torch.no_grad()
def embed_rows(tower: Tower, data: PairedDataset, name: str, rows: list[int], batch_size: int = 64) -> np.ndarray:
    """Shared-space embeddings [len(rows), dim] of one tower's column (deterministic views)."""
    from foundation.tokens import collate

    tower.eval()
    device = tower.head_device()
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        items = [data.read(name, r, None) for r in chunk]
        ids = [data.item_id(name, r) for r in chunk]
        inputs = items if isinstance(items[0], str) else collate(items).to(device)
        out.append(tower(inputs, ids).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, tower.head_dim()), np.float32)


def embed_aligned(model_dir: str | Path, tower: str | None = None, data: dict | None = None, texts: list[str] | None = None,
                  batch_size: int = 64) -> dict:
    """One tower of an aligned export into the shared space: its backbone, its projection, L2-normalised,
    exactly as the alignment evaluation embeds it (``embed_rows``: the deterministic view, one sample's
    embedding independent of its batch).

    ``texts`` go through the text tower (``tower`` names it when there are several). ``data`` (the
    ``data`` keys: ``root`` a folder, or ``manifest``) goes through an encoder tower (``tower``, or the
    only one); a paired manifest with a column named as the tower is read by that column, as ``align``
    reads it; any other manifest or folder is read by the tower's adapter as ``embed`` reads it.
    Returns ``embeddings`` [N, D] float32, ``ids``/``paths`` (files) or ``texts``, and ``tower``."""
    from foundation.data import eval_loader
    from foundation.recipes import DEFAULTS, TOWER_KEYS

    root = aligned_root(model_dir)
    if root is None:
        raise DomainfmError(f"{model_dir}: no aligned.json (not an aligned export; run domainfm align first)")
    kinds = {n: json.loads((root / n / "tower.json").read_text())["kind"] for n in json.loads((root / "aligned.json").read_text())["towers"]}
    want = "text" if texts is not None else "encoder"
    if tower is None:
        candidates = [n for n, k in kinds.items() if k == want]
        if len(candidates) != 1:
            raise DomainfmError(f"{root}: {len(candidates)} {want} towers ({', '.join(candidates) or 'none'}); name one with --tower NAME")
        tower = candidates[0]
    if tower in kinds and kinds[tower] != want:
        way = "give --text or --text-file" if kinds[tower] == "text" else "give DATA (a folder or manifest of its files)"
        raise DomainfmError(f"tower {tower!r} of {root} is its {kinds[tower]} tower: {way}")
    t = load_towers(root, [tower])[tower]
    if texts is not None:
        if not texts:
            raise DomainfmError("no text to embed (--text TEXT, or --text-file FILE with one text per line)")
        z = [t(texts[s:s + batch_size]).detach().cpu().numpy() for s in range(0, len(texts), batch_size)]
        return {"embeddings": np.concatenate(z).astype(np.float32), "texts": np.array(texts), "tower": tower}
    data = {**DEFAULTS["data"], **(data or {})}
    manifest = data.get("manifest")
    if manifest and tower in read_columns(manifest):  # a paired manifest: the tower's own column, as align reads it
        recipe = {"data": data, "align": {**DEFAULTS["align"], "pairs": None},
                  "towers": {tower: {**TOWER_KEYS, "kind": "encoder", "mode": "frozen"}}}
        ds = paired_dataset(recipe, manifest, {tower: t.encoder.adapter}, False, Path(tempfile.mkdtemp(prefix="domainfm-embed-")))
        rows = list(ds.index[tower])
        paths = [ds.paths[tower][r] for r in rows]
        return {"embeddings": embed_rows(t, ds, tower, rows, batch_size).astype(np.float32), "ids": np.array(paths),
                "paths": np.array(paths), "tower": tower}
    dataset = t.encoder.adapter.dataset({**data, "labels": None}, train=False)
    z, ids, paths = [], [], []
    with torch.no_grad():
        for batch in eval_loader(dataset, batch_size):
            z.append(t(batch.to(t.head_device())).cpu().numpy())
            ids += batch.ids
            paths += batch.paths
    emb = np.concatenate(z) if z else np.zeros((0, t.head_dim()), np.float32)
    return {"embeddings": emb.astype(np.float32), "ids": np.array(ids), "paths": np.array(paths), "tower": tower}


def read_columns(manifest: str | Path) -> set[str]:
    """Column names of a CSV/JSONL manifest (its header, or its first JSON row's keys)."""
    p = Path(manifest)
    if not p.is_file():
        return set()
    with open(p) as f:
        first = f.readline()
    if p.suffix in (".jsonl", ".ndjson"):
        return set(json.loads(first)) if first.strip() else set()
    return {c.strip() for c in next(csv.reader([first]), [])}


def evaluate_aligned(recipe: dict, model: AlignModel, data: PairedDataset) -> dict:
    """Retrieval per pair type (instance-level, and by key where rows share texts/labels), emergent
    retrieval between non-anchor towers, and zero-shot classification from ``zero_shot`` prompts."""
    from foundation.align_eval import prompts, retrieval, zero_shot

    res: dict = {"data": data.summary()}
    names = list(model.towers)
    anchor = recipe["align"]["anchor"]
    kinds = list(data.pair_types)
    if anchor:  # emergent: two towers never paired directly, compared through the anchor's space
        kinds += ["|".join(p) for p in __import__("itertools").combinations([n for n in names if n != anchor], 2)]
    for pt in kinds:
        a, b = pt.split("|")
        rows = [i for i, r in enumerate(data.rows) if r[a] is not None and r[b] is not None]
        if not rows:
            continue
        za, zb = embed_rows(model.towers[a], data, a, rows), embed_rows(model.towers[b], data, b, rows)
        keys = None if data.keys is None else np.asarray([data.keys[i] for i in rows])
        res[pt] = {"rows": len(rows), "emergent": pt not in data.pair_types,
                   **retrieval(za, zb, keys, keys, names=(a, b), ids_a=[data.rows[i][a] for i in rows],
                               ids_b=[data.rows[i][b] for i in rows])}
    zs = recipe["zero_shot"]
    if zs["classes"]:
        tower = zs["tower"] or next(n for n in names if recipe["towers"][n]["kind"] != "text")
        text = next(n for n in names if recipe["towers"][n]["kind"] == "text")
        rows = [i for i, r in enumerate(data.rows) if r[tower] is not None and r["label"] is not None]
        values, texts = prompts(zs["prompt"], {str(k): v for k, v in zs["classes"].items()})
        zc = model.towers[text](texts).detach().cpu().numpy()
        z = embed_rows(model.towers[tower], data, tower, rows)
        res["zero_shot"] = {k: v for k, v in zero_shot(z, [data.rows[i]["label"] for i in rows], zc, values).items() if k != "predictions"}
    return res


ALIGN_TASKS = ("zero-shot", "retrieval")


def run_align_evaluate(model_dir: str | Path, data: str | Path, task: str, overrides: list[str], out: str | Path) -> Path:
    """``domainfm evaluate ALIGNED_DIR MANIFEST --task zero-shot|retrieval``: the aligned towers on a paired
    manifest; ``result.json`` holds ``accuracy`` (zero-shot) or ``recall@k`` per direction (retrieval).
    ``zero_shot.prompt=...``/``zero_shot.classes=...`` and ``align.anchor=...`` override the run's settings."""
    from foundation.recipes import DEFAULTS, TOWER_KEYS, apply_overrides

    towers = load_towers(model_dir)
    root = Path(model_dir) / "towers" if (Path(model_dir) / "towers" / "aligned.json").exists() else Path(model_dir)
    saved = json.loads((root / "aligned.json").read_text())
    recipe = {"align": {**DEFAULTS["align"], **saved.get("align", {})}, "zero_shot": {**DEFAULTS["zero_shot"], **saved.get("zero_shot", {})},
              "data": dict(DEFAULTS["data"]), "towers": {n: {**TOWER_KEYS, "kind": "text" if isinstance(t, TextTower) else "encoder",
                                                             "mode": "frozen"} for n, t in towers.items()}}
    recipe = apply_overrides(recipe, list(overrides))
    if task == "zero-shot" and not recipe["zero_shot"]["classes"]:
        raise DomainfmError("--task zero-shot needs zero_shot.classes (label value -> class text), e.g. zero_shot.classes='{0: zero, 1: one}'")
    recipe["align"]["pairs"] = None  # evaluate every pair the manifest holds
    adapters = {n: t.encoder.adapter for n, t in towers.items() if isinstance(t, EncoderTower)}
    data_set = paired_dataset(recipe, data, adapters, False, Path(out).parent / "pairs")
    holder = AlignModel(towers, data_set.pair_types or ["|".join(list(towers)[:2])])
    result = evaluate_aligned(recipe, holder, data_set)
    if task == "zero-shot":
        result = {"task_name": task, **result["zero_shot"], "data": result["data"]}
    else:
        result = {"task_name": task, **{k: v for k, v in result.items() if k != "zero_shot"}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    return out


# -- the task -----------------------------------------------------------------------------------------
def align_task(recipe: dict, resumed: dict | None):
    from foundation.engine import TrainingTask

    run_dir = Path(recipe["run"]["dir"])
    if not recipe["data"]["manifest"]:
        raise DomainfmError("align needs data.manifest=FILE (CSV/JSONL, one column per tower, named as the tower)")
    adapters = tower_adapters(recipe, resumed)
    data = paired_dataset(recipe, recipe["data"]["manifest"], adapters, True, run_dir / "pairs")
    if resumed is None:
        for name, ad in adapters.items():
            if not recipe["towers"][name]["init"]:
                ad.fit(data.datasets[name])  # fresh encoders: normalisation fitted on this tower's training files
    texts = sorted({r[n] for r in data.rows for n, s in recipe["towers"].items() if s["kind"] == "text" and r[n]})
    texts += [recipe["zero_shot"]["prompt"].format(v) for v in recipe["zero_shot"]["classes"].values()]
    model = AlignModel(build_towers(recipe, run_dir, texts, adapters), data.pair_types, recipe["align"]["loss"],
                       recipe["align"]["temperature"])
    load_caches(recipe, model.towers)
    precompute_frozen(model.towers, data)
    log.info("paired data: %s", data.summary())

    def finish(run_dir: Path, model: AlignModel, teacher) -> dict:
        export_towers(model, run_dir / "towers", recipe)
        summary = {"data": data.summary()}
        if recipe["align"]["eval_manifest"]:
            eval_data = paired_dataset(recipe, recipe["align"]["eval_manifest"], adapters, False, run_dir / "pairs_eval")
            result = evaluate_aligned(recipe, model, eval_data)
            (run_dir / "align_eval.json").write_text(json.dumps(result, indent=2))
            summary["eval"] = {k: v for k, v in result.items() if k != "data"}
        save_caches(recipe, model.towers)
        return summary

    def sampler(world: int, rank: int, seed: int, batch_size: int) -> PairScheduleSampler:
        return PairScheduleSampler(data.rows_of, batch_size, world, rank, seed)

    pair_names = ", ".join(data.pair_types)
    return TrainingTask(name=f"align {pair_names}", model=model, dataset=data, finish=finish, collate=collate_pairs,
                        state={"adapters": {n: a.preprocessing() for n, a in adapters.items()}},
                        sampler=sampler, param_groups=param_groups, monitor=lambda m, t, h: {})
