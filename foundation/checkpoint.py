"""Atomic, resumable checkpoints: write everything into ``step-N.tmp``, then rename.

A crash mid-write leaves the previous checkpoint untouched. Weights go to safetensors; optimiser
and RNG states are plain tensors and lists loaded with ``weights_only=True``. Each checkpoint's
``state.json`` carries a ``format`` version; one written by a newer format is refused with a message.
Resuming picks the newest checkpoint whose files all load (:func:`newest_intact`); a truncated or
corrupt newer one is reported by path and skipped. Before writing, free disk space is checked
against the size of the previous checkpoint; a failed write removes its ``.tmp`` and says which
intact checkpoint remains.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from foundation.errors import RunDirError

log = logging.getLogger("domainfm")

FORMAT = 1  # bump when the layout of a checkpoint changes; older formats need a reader here
SPACE_MARGIN = 1.2  # free space required, as a multiple of the expected checkpoint size


class CheckpointError(RunDirError):
    """A checkpoint that cannot be written or read; the message names it and the intact one left."""


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
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}, indent=2))


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


def expected_bytes(run_dir: Path, modules: list[torch.nn.Module | None]) -> int:
    """The size of the newest committed checkpoint, or (first save) 3x the parameters' bytes (weights + Adam moments)."""
    done = committed(run_dir)
    if done:
        return sum(f.stat().st_size for f in done[-1].iterdir() if f.is_file())
    return sum(3 * p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def check_space(run_dir: Path, need: int) -> None:
    free = shutil.disk_usage(run_dir).free
    if free < need * SPACE_MARGIN:
        intact = committed(run_dir)
        raise CheckpointError(f"not enough disk space for a checkpoint in {run_dir / 'checkpoints'}: {free / 2**20:.0f} MB free, "
                              f"about {need * SPACE_MARGIN / 2**20:.0f} MB needed; free some space (or lower train.keep_checkpoints) "
                              f"and rerun to resume from {intact[-1] if intact else 'the start'}")


def committed(run_dir: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first (``.tmp`` folders are unfinished writes)."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def read_state(ckpt: Path) -> dict:
    state = json.loads((ckpt / "state.json").read_text())
    version = state.get("format", 1)  # checkpoints written before versioning have format 1's layout
    if version > FORMAT:
        raise CheckpointError(f"{ckpt} has checkpoint format {version}, this domainfm reads format {FORMAT} at most; "
                              "upgrade domainfm or choose another run.dir")
    return state


def verify(ckpt: Path) -> None:
    """Load every file of a checkpoint (raises if one is missing, truncated or corrupt)."""
    state = read_state(ckpt)
    for name in ("model.safetensors", "teacher.safetensors"):
        if name == "model.safetensors" or (ckpt / name).exists():
            load_file(str(ckpt / name))
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    for rank in range(int(state.get("world", 1))):
        load_rank_rng(ckpt, rank)


def newest_intact(run_dir: Path, world: int | None = None) -> Path | None:
    """The newest checkpoint whose files all load; newer broken ones are reported by path and skipped."""
    for ckpt in reversed(committed(run_dir)):
        try:
            verify(ckpt)
            return ckpt
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the reader says, the folder cannot be resumed from
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", ckpt, type(err).__name__,
                        str(err).splitlines()[0][:200] if str(err) else "")
    return None


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
