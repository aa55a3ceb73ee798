"""Atomic, resumable checkpoints: write everything into ``step-N.tmp``, then rename.

A crash mid-write leaves the previous checkpoint untouched. Weights go to safetensors; optimiser
and RNG states are plain tensors and lists loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _tensors(module: torch.nn.Module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def rng_state(mask_generator: torch.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "mask_generator": mask_generator.get_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict, mask_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    mask_generator.set_state(state["mask_generator"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def begin(run_dir: Path, step: int) -> Path:
    tmp = run_dir / "checkpoints" / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_shared(tmp: Path, model: torch.nn.Module, optimizer, scheduler, teacher: torch.nn.Module | None, state: dict) -> None:
    save_file(_tensors(model), str(tmp / "model.safetensors"))
    if teacher is not None:
        save_file(_tensors(teacher), str(tmp / "teacher.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))


def write_rank_rng(tmp: Path, rank: int, mask_generator: torch.Generator) -> None:
    torch.save(rng_state(mask_generator), tmp / f"rng-rank{rank}.pt")


def commit(run_dir: Path, tmp: Path, keep: int) -> Path:
    final = tmp.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = run_dir / "checkpoints" / "latest"
    pointer.with_suffix(".tmp").write_text(final.name)
    os.replace(pointer.with_suffix(".tmp"), pointer)
    done = sorted(p for p in final.parent.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.exists() and (root / pointer.read_text().strip() / "state.json").exists():
        return root / pointer.read_text().strip()
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def load(ckpt: Path, model: torch.nn.Module, optimizer, scheduler, teacher: torch.nn.Module | None) -> dict:
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    if teacher is not None:
        teacher.load_state_dict(load_file(str(ckpt / "teacher.safetensors")), strict=True)
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return json.loads((ckpt / "state.json").read_text())


def load_rank_rng(ckpt: Path, rank: int) -> dict:
    return torch.load(ckpt / f"rng-rank{rank}.pt", weights_only=True)
