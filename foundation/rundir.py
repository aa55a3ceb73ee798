"""Run directories: one process at a time, never silently reused, never rewritten with another recipe.

A run directory is created by the first launch, which writes ``recipe.yaml``; that file is never
overwritten. A later launch on the same directory either resumes it (announced at WARNING level, its
changed run-level settings appended to ``resumes.jsonl``), extends a finished run (``train.steps``
raised), or is refused with a :class:`RunDirError` saying why and what to do:

- another live process holds ``run.lock`` (a lock left by a dead process is taken over);
- the run finished and ``train.steps`` was not raised (``reuse_finished=True`` returns it instead, for
  demos and benchmarks that mean to reuse a finished run);
- the recipe differs in a model-defining key (anything outside :data:`RUN_LEVEL`: modality, objective,
  ``model.*``, ``adapter.*``, ``masking.*``, the objective sections...); the differences are listed;
- the world size or ``train.batch_size`` differs from the checkpoint's (the data position and the
  schedule would no longer mean what they meant).

Only the main process calls :func:`open_run`; the engine broadcasts its outcome to the other ranks.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from foundation import checkpoint
from foundation.errors import RunDirError

log = logging.getLogger("domainfm")

# Top-level recipe sections that may change between launches of one run (logged, not refused).
RUN_LEVEL = ("data", "run", "train", "probe", "name")
# ...except these, which the resumed data position and checkpoints depend on.
FIXED = ("train.batch_size",)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: dict, new: dict) -> dict[str, list]:
    """``{dotted key: [old, new]}`` for every key whose value differs (a missing key reads as None)."""
    a, b = flatten(old), flatten(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def is_model_key(dotted: str) -> bool:
    return dotted.split(".")[0] not in RUN_LEVEL


class RunLock:
    """``run.lock`` holding ``host pid``; created atomically (O_EXCL), removed on release."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run.lock"
        self.held = False

    def acquire(self) -> None:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text().split() if self.path.exists() else []
                if len(holder) == 2 and holder[0] == socket.gethostname() and holder[1].isdigit() and not _alive(int(holder[1])):
                    log.warning("%s: taking over a lock left by process %s, which no longer runs", self.path, holder[1])
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunDirError(f"{self.path.parent} is in use by process {' '.join(holder) or '?'} ({self.path}); wait for it to "
                                  f"finish, choose another run.dir, or delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise RunDirError(f"could not take the lock {self.path}; delete it if no process uses {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Opened:
    """What the main process decided about a run directory (broadcast to every rank)."""

    resume_from: str | None  # the checkpoint to resume from (None: a fresh run)
    reuse: bool = False  # a finished run returned as it is (reuse_finished=True)


def open_run(run_dir: Path, recipe: dict, world: int, lock: RunLock, reuse_finished: bool = False) -> Opened:
    """Lock ``run_dir`` and decide how this launch uses it; raises :class:`RunDirError` if it must not."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        return _decide(run_dir, recipe, world, reuse_finished)
    except BaseException:
        lock.release()
        raise


def _decide(run_dir: Path, recipe: dict, world: int, reuse_finished: bool) -> Opened:
    saved_path = run_dir / "recipe.yaml"
    ckpt = checkpoint.newest_intact(run_dir, world)
    if not saved_path.exists():
        if ckpt is not None:
            raise RunDirError(f"{run_dir} holds checkpoints but no recipe.yaml, so it cannot be checked against this recipe; "
                              "choose another run.dir")
        saved_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return Opened(None)
    saved = yaml.safe_load(saved_path.read_text())
    diff = differences(saved, recipe)
    # a key on one side only is a setting another domainfm version added or removed, not a change of this run's
    # model, except adapter keys, which recipes set sparsely (the adapter's defaults fill the rest)
    one_sided = {k for k in diff if k not in flatten(saved) or k not in flatten(recipe)}
    model_diff = {k: v for k, v in diff.items() if is_model_key(k) and (k not in one_sided or k.startswith("adapter."))}
    diff = {k: v for k, v in diff.items() if k not in one_sided or k in model_diff}
    if model_diff:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in model_diff.items())
        raise RunDirError(f"{run_dir} was trained with another model ({saved_path}): {listed}; use the run's recipe, "
                          "or choose another run.dir")
    for key in FIXED:
        if key in diff:
            raise RunDirError(f"{run_dir} was trained with {key}={diff[key][0]}, this launch asks for {diff[key][1]}: resuming "
                              f"would not continue the same run; keep {key}={diff[key][0]} or choose another run.dir")
    steps = int(recipe["train"]["steps"])
    summary = run_dir / "summary.json"
    # a run stopped early (fine-tuning's early stopping) finished at fewer steps than it asked for: the steps it asked for count
    done = (lambda s: max(s["steps"], s.get("train_steps", 0)))(json.loads(summary.read_text())) if summary.exists() else None
    if done is not None and steps <= done:
        if reuse_finished:
            log.warning("%s already finished its %d steps: reusing it as it is", run_dir, done)
            return Opened(str(ckpt) if ckpt else None, reuse=True)
        raise RunDirError(f"{run_dir} is a finished run ({done} steps, encoder in {run_dir / 'encoder'}); raise train.steps above "
                          f"{done} to extend it, or choose another run.dir")
    if ckpt is None:  # created, then stopped before its first checkpoint: start again
        log.warning("resuming %s: no checkpoint yet, starting from step 0", run_dir)
        _append_resume(run_dir, 0, world, diff)
        return Opened(None)
    state = checkpoint.read_state(ckpt)
    if state.get("world", world) != world:
        raise RunDirError(f"{ckpt} was written by {state['world']} processes, this launch has {world}: resume with "
                          f"{state['world']} (torchrun --nproc_per_node {state['world']}) or choose another run.dir")
    if state["step"] > steps:
        raise RunDirError(f"{ckpt} is at step {state['step']}, beyond train.steps={steps}; raise train.steps or choose another run.dir")
    what = f"extending the finished run from {done} to {steps} steps" if done is not None else f"step {state['step']} of {steps}"
    changed = f"; changed: {', '.join(f'{k}={b!r}' for k, (a, b) in diff.items())}" if diff else ""
    log.warning("resuming %s from %s (%s)%s", run_dir, ckpt.name, what, changed)
    _append_resume(run_dir, state["step"], world, diff)
    return Opened(str(ckpt))


def _append_resume(run_dir: Path, step: int, world: int, diff: dict) -> None:
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "from_step": step,
             "world": world, "changed": diff}
    with open(run_dir / "resumes.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
