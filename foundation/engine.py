"""The training loop, on Accelerate, readable in one sitting (nanoGPT-style).

One optimiser step = ``accumulation`` micro-batches. Everything that decides what happens next
(model, optimiser, scheduler, EMA teacher, every RNG, the data position) is checkpointed atomically,
so a resumed run continues exactly where the interrupted one stopped.
"""
from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object
from tqdm.auto import tqdm

from foundation import checkpoint, rundir
from foundation.data import TrainSampler, train_loader
from foundation.errors import DomainfmError, RunDirError
from foundation.inputs import finish_inputs, show_data_summary
from foundation.model import Encoder
from foundation.monitor import collapse_signals
from foundation.objectives.contrast import Contrast
from foundation.objectives.jepa import JEPA, ema_update, momentum_at
from foundation.objectives.mae import MAE
from foundation.tokens import collate
from foundation.trunk import compile_trunks, set_activation_checkpointing
from modalities.base import adapter_from_config

log = logging.getLogger("domainfm")


class TrainingDiverged(DomainfmError, RuntimeError):  # DomainfmError: the CLI prints it as one line
    """A non-finite loss or gradient (on any rank: every rank raises the same message); the last good checkpoint is kept."""


def build_objective(recipe: dict, encoder: Encoder) -> torch.nn.Module:
    masking = {k: recipe["masking"][k] for k in ("kind", "ratio", "axis", "span", "blocks")}
    if recipe["objective"] == "mae":
        return MAE(encoder, masking, **recipe["mae"])
    if recipe["objective"] == "contrast":
        return Contrast(encoder, masking, **recipe["contrast"])
    j = recipe["jepa"]
    blocks = {"targets": j["targets"], "target_scale": j["target_scale"], "context_scale": j["context_scale"]}
    return JEPA(encoder, blocks, j["predictor_width"], j["predictor_depth"], j["predictor_heads"],
                j.get("target_layers", 1), j.get("target_norm", "layer"))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and learned tokens (anything with fewer than 2 dims)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "bias_tables" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def replica_checksums(accelerator: Accelerator, model: torch.nn.Module, teacher: torch.nn.Module | None) -> list[list[float]]:
    """Per-rank checksums of the student and teacher weights: replicas must agree bit for bit."""
    def total(m):
        return float(sum(p.detach().double().abs().sum() + p.detach().double().sum() * 1e-3 for p in m.parameters())) if m is not None else 0.0
    mine = torch.tensor([[total(model), total(teacher)]], dtype=torch.float64, device=accelerator.device)
    return accelerator.gather(mine).tolist()


@dataclass
class TrainingTask:
    """What one kind of training (pretraining, alignment, fine-tuning) hands to :func:`train`.

    The loop owns everything generic: the Accelerator, seeding, optimiser (AdamW, no decay on norms and
    biases), warm-up + cosine schedule, accumulation, clipping, mixed precision, the NaN/inf guard,
    atomic checkpoints and exact resume (weights, optimiser, scheduler, teacher, every RNG, data
    position), metrics.csv, TensorBoard, the progress bar and summary.json. A task says only what is
    specific to it:

    - ``name``: the progress bar's label (e.g. ``"mae grid"``).
    - ``model``: an ``nn.Module`` whose ``forward(batch, mask_gen)`` (plus ``teacher=teacher`` when the
      task has one) returns ``(loss, extras)``; ``mask_gen`` is the per-rank ``torch.Generator`` the
      loop checkpoints, so draw every random mask from it. ``model`` is wrapped by Accelerate (DDP/FSDP);
      callbacks receive the unwrapped module.
    - ``dataset`` / ``collate``: a map-style dataset and the collate function that turns a list of its
      items into a batch with ``.to(device)`` and ``.size`` (default: PatchBatch collation). Batches are
      drawn by :class:`foundation.data.TrainSampler` (sharded over ranks, last partial batch dropped).
    - ``lengths``: optional per-sample lengths, so similar lengths are batched together (less padding).
    - ``teacher`` / ``update_teacher``: an optional EMA teacher, kept out of DDP and moved to the device
      by the loop; ``update_teacher(teacher, model, step, steps) -> momentum`` is called exactly once per
      real optimiser step (never per micro-batch) and its return value is logged.
    - ``held_out`` / ``monitor``: an optional fixed batch and ``monitor(model, teacher, held_out) ->
      {name: float}`` logged to TensorBoard every ``train.monitor_every`` steps (default: collapse
      signals of the teacher, or of ``model.encoder``).
    - ``sampler``: optional ``sampler(world, rank, seed, batch_size)`` returning a batch sampler (lists
      of dataset keys, with ``set_position``, ``batches_per_epoch``, ``dropped_per_epoch``) in place of
      :class:`foundation.data.TrainSampler`: alignment draws ONE pair type per step on a shared schedule.
    - ``param_groups``: optional ``param_groups(model, weight_decay, lr)`` giving the optimiser's groups, for
      groups with their own learning rates (alignment: one per tower; fine-tuning: layer-wise decay); the
      schedule scales every group alike. Default: :func:`param_groups`.
    - ``state``: JSON-able facts stored in every checkpoint's ``state.json`` (pretraining stores the
      adapter's fitted preprocessing, so a resumed run reads data exactly as the first one did).
    - ``should_stop``: optional ``() -> bool``, asked on the main process right after ``monitor`` (which
      can score a validation set); True ends training there, all ranks together, and ``finish`` runs
      (fine-tuning's early stopping, only when a validation set is given).
    - ``finish(run_dir, model, teacher) -> dict | None``: called on the main process once the last step
      is done, to write the final artefacts (pretraining: ``encoder/``); what it returns is added to
      ``summary.json``, which the loop writes last (its presence marks a finished run).

    Build the task inside the ``build`` callable passed to :func:`train`: the loop calls it after seeding
    (so every rank builds identical initial weights) with the resumed checkpoint's ``state.json`` (or
    None on a fresh run), so preprocessing fitted on the first run is restored rather than refitted.
    """

    name: str
    model: torch.nn.Module
    dataset: Any
    finish: Callable[[Path, torch.nn.Module, torch.nn.Module | None], dict | None]
    collate: Callable = collate
    lengths: Sequence[int] | None = None
    teacher: torch.nn.Module | None = None
    update_teacher: Callable[[torch.nn.Module, torch.nn.Module, int, int], float] | None = None
    held_out: Any = None
    monitor: Callable[[torch.nn.Module, torch.nn.Module | None, Any], dict] | None = None
    state: dict = field(default_factory=dict)
    sampler: Callable[[int, int, int, int], Any] | None = None
    param_groups: Callable[[torch.nn.Module, float, float], list[dict]] | None = None
    should_stop: Callable[[], bool] | None = None


def compile_summary(tr: dict) -> dict:
    """With ``train.compile``: how often dynamo compiled (one per distinct block shape, plus one per
    recompile when token counts change) and how many graphs it made, so a run shows whether shapes
    settled. Counted since :func:`train` compiled the model (it clears dynamo's counters)."""
    if not tr.get("compile"):
        return {}
    from torch._dynamo.utils import counters

    return {"compile": {"compiles": int(counters["frames"].get("ok", 0)), "graphs": int(counters["stats"].get("unique_graphs", 0))}}


def default_monitor(model: torch.nn.Module, teacher: torch.nn.Module | None, held) -> dict[str, float]:
    """Collapse signals (embedding spread, RankMe) of the teacher, or of the student's encoder."""
    return collapse_signals(teacher if teacher is not None else model.encoder, held)


def pretraining_task(recipe: dict, resumed: dict | None) -> TrainingTask:
    """Self-supervised pretraining of the recipe's encoder (MAE, JEPA or contrast)."""
    adapter = adapter_from_config(recipe["modality"], resumed["adapter"] if resumed else recipe["adapter"])
    dataset = adapter.dataset(recipe["data"], train=True)
    if resumed is None:
        adapter.fit(dataset)  # deterministic, so every rank computes the same statistics
    encoder = Encoder.build(adapter, recipe["model"])
    model = build_objective(recipe, encoder)
    teacher = model.make_teacher() if isinstance(model, JEPA) else None
    jepa = recipe["jepa"]

    def update_teacher(teacher, student, step, steps) -> float:
        momentum = momentum_at(step, steps, jepa["ema_start"], jepa["ema_end"])
        ema_update(teacher, student.encoder, momentum)
        return momentum

    def finish(run_dir: Path, student, teacher) -> dict:
        final = teacher if teacher is not None else student.encoder
        final.save_pretrained(run_dir / "encoder", extra={"objective": recipe["objective"], "steps": int(recipe["train"]["steps"])})
        return {}

    return TrainingTask(
        name=f"{recipe['objective']} {recipe['modality']}", model=model, dataset=dataset, finish=finish,
        lengths=getattr(dataset, "lengths", None), teacher=teacher, update_teacher=update_teacher if teacher is not None else None,
        held_out=collate([dataset[i] for i in range(min(len(dataset), 64))]), monitor=default_monitor,
        state={"adapter": adapter.preprocessing()})


def pretrain(recipe: dict, progress: bool = True, stop_after: int | None = None, restore_rng: bool = True,
             reuse_finished: bool = False) -> Path:
    """Pretrain the recipe's encoder; resume from ``run.dir`` if it holds a checkpoint (see :func:`train`). A
    finished run also gets report.md with PNG plots (``domainfm report RUN_DIR`` rebuilds it)."""
    run_dir = train(recipe, lambda resumed: pretraining_task(recipe, resumed), progress=progress, stop_after=stop_after,
                    restore_rng=restore_rng, reuse_finished=reuse_finished)
    if (run_dir / "summary.json").exists() and AcceleratorState().is_main_process and not (run_dir / "report.md").exists():
        from foundation.report import pretrain_report

        try:  # a plotting problem must not fail a finished run: the logs are there to rebuild it from
            pretrain_report(run_dir)
        except Exception as err:  # noqa: BLE001
            log.warning("%s: report.md not written (%s); rebuild it with `domainfm report %s`", run_dir, err, run_dir)
    return run_dir


def train(recipe: dict, build: Callable[[dict | None], TrainingTask], progress: bool = True, stop_after: int | None = None,
          restore_rng: bool = True, reuse_finished: bool = False) -> Path:
    """Train the task that ``build`` returns under the recipe's ``train.*`` and ``run.*`` settings.

    ``run.dir`` is opened by :func:`foundation.rundir.open_run`: locked, resumed from its newest intact
    checkpoint (announced), or refused (finished, another model, another world or batch size).
    ``reuse_finished=True`` returns a finished run with the same model as it is, for demos and benchmarks
    that mean to reuse one. ``stop_after`` ends the run after that many optimiser steps (after
    checkpointing), as a crash would; ``restore_rng=False`` exists only as the negative control of the
    resume test. Returns the run directory.
    """
    tr, seed = recipe["train"], int(recipe["run"]["seed"])
    run_dir = Path(recipe["run"]["dir"])
    if AcceleratorState._shared_state:
        # a second run in one process (notebook, tests) with another precision: Accelerate keeps its
        # settings in a process-wide singleton, so clear them (the distributed setup is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
    # a short process-group timeout: a rank that hangs must not keep its peers waiting gloo/NCCL's 30 minutes
    # (only the first Accelerator of a process sets the process group up)
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=float(tr.get("timeout_s", 300))))
    accelerator = Accelerator(mixed_precision=tr["precision"], cpu=not torch.cuda.is_available(), kwargs_handlers=[timeout])
    if tr["precision"] == "fp16" and accelerator.scaler is None and accelerator.device.type == "cpu":
        # Accelerate silently runs fp16 in fp32 on a CPU; run what the recipe says: fp16 autocast with a grad scaler
        accelerator.native_amp, accelerator.scaler = True, torch.amp.GradScaler("cpu")
    lock = rundir.RunLock(run_dir)
    # every rank's bad-input policy appends to one ledger in the run directory, so the skipped.txt that the main
    # process writes lists a file that failed on any rank, once, and a resumed run never rereads it
    own_ledger = "DOMAINFM_INPUTS_LEDGER" not in os.environ
    if own_ledger:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ["DOMAINFM_INPUTS_LEDGER"] = str(run_dir.resolve() / "inputs-ledger.tsv")
    try:
        return _train(recipe, build, accelerator, lock, progress, stop_after, restore_rng, reuse_finished)
    finally:
        lock.release()
        if own_ledger:
            os.environ.pop("DOMAINFM_INPUTS_LEDGER", None)


def _open(run_dir: Path, recipe: dict, accelerator: Accelerator, lock: rundir.RunLock, reuse_finished: bool) -> rundir.Opened:
    """The main process opens the run directory; every rank gets its decision, or raises its refusal."""
    outcome: rundir.Opened | str | None = None
    if accelerator.is_main_process:
        try:
            outcome = rundir.open_run(run_dir, recipe, accelerator.num_processes, lock, reuse_finished)
        except RunDirError as err:
            outcome = str(err)
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list([outcome])[0]
    if isinstance(outcome, str):
        raise RunDirError(outcome)
    return outcome


def _train(recipe: dict, build, accelerator: Accelerator, lock: rundir.RunLock, progress: bool, stop_after: int | None,
           restore_rng: bool, reuse_finished: bool) -> Path:
    tr, seed = recipe["train"], int(recipe["run"]["seed"])
    run_dir = Path(recipe["run"]["dir"])
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    opened = _open(run_dir, recipe, accelerator, lock, reuse_finished)
    if opened.reuse:
        return run_dir
    resume_from = Path(opened.resume_from) if opened.resume_from else None
    state = checkpoint.read_state(resume_from) if resume_from else None
    seed_everything(seed)  # the same initial weights on every rank (the EMA teacher is copied from them)
    task = build(state)
    model, teacher = task.model, task.teacher
    if teacher is not None:
        teacher = teacher.to(device)

    seed_everything(seed + rank)  # from here on, per-rank randomness
    steps = int(tr["steps"])
    groups = task.param_groups(model, tr["weight_decay"], tr["lr"]) if task.param_groups else param_groups(model, tr["weight_decay"])
    if tr.get("activation_checkpointing"):
        set_activation_checkpointing(model)
    if tr.get("compile"):
        from torch._dynamo.utils import counters

        counters.clear()
        compile_trunks(model)
    # fused AdamW: one kernel per step on GPU, and 3x faster than the per-parameter loop on CPU
    optimizer = torch.optim.AdamW(groups, lr=tr["lr"], betas=tuple(tr["betas"]), fused=device.type in ("cuda", "cpu") or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tr["warmup_steps"], steps, tr["min_lr"] / tr["lr"]))
    mask_gen = torch.Generator(device=device).manual_seed(seed * 7919 + rank)
    step, epoch, next_batch, ema_updates = 0, 0, 0, 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer, scheduler, teacher)
        step, epoch, next_batch, ema_updates = state["step"], state["epoch"], state["next_batch"], state["ema_updates"]
        if restore_rng:
            checkpoint.restore_rng(checkpoint.load_rank_rng(resume_from, rank), mask_gen)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, step, epoch, next_batch)
    last_good = resume_from
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)

    dataset = task.dataset
    show_data_summary(recipe.get("modality", ""), dataset, main=accelerator.is_main_process, quiet=not progress)
    sampler = (task.sampler(world, rank, seed, tr["batch_size"]) if task.sampler else
               TrainSampler(len(dataset), tr["batch_size"], world, rank, seed, lengths=task.lengths))
    if accelerator.is_main_process and sampler.dropped_per_epoch:
        log.info("dropping %d of %d samples per epoch (world %d x batch %d)", sampler.dropped_per_epoch, len(dataset), world, tr["batch_size"])
    loader = train_loader(dataset, sampler, recipe["data"], task.collate)
    held = task.held_out.to(device) if task.held_out is not None else None
    monitor = task.monitor if held is not None else None

    def batches():
        nonlocal epoch, next_batch
        while True:
            sampler.set_position(epoch, next_batch)
            for batch in loader:
                next_batch += 1
                yield batch
            epoch, next_batch = epoch + 1, 0

    def collectively(problem: str | None) -> None:
        """Every rank raises the first rank's problem, so none is left waiting in a collective."""
        problems = gather_object([problem]) if world > 1 else [problem]
        first = next((p for p in problems if p), None)
        if first:
            raise checkpoint.CheckpointError(first)

    def save() -> Path:
        tmp, problem = run_dir / "checkpoints" / f"step-{step:07d}.tmp", None
        if accelerator.is_main_process:
            try:
                checkpoint.check_space(run_dir, checkpoint.expected_bytes(run_dir, [raw, teacher]))
                checkpoint.begin(run_dir, step)
            except (OSError, checkpoint.CheckpointError) as err:
                problem = str(err)
        collectively(problem)
        try:
            if accelerator.is_main_process:
                info = {"step": step, "epoch": epoch, "next_batch": next_batch, "ema_updates": ema_updates, **task.state,
                        "world": world, "batch_size": int(tr["batch_size"]), "skipped_steps": skipped}
                checkpoint.write_shared(tmp, raw, optimizer, scheduler, teacher, info)
            checkpoint.write_rank_rng(tmp, rank, mask_gen)
        except Exception as err:  # noqa: BLE001 - a full disk or file-size limit surfaces as OSError, SafetensorError or RuntimeError
            problem = (f"could not write checkpoint {tmp} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                       f"the last intact checkpoint is {last_good or 'none'}: free space and rerun to resume from it")
        if problem and accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        collectively(problem)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checkpoint.commit(run_dir, tmp, tr["keep_checkpoints"])
        return tmp.with_suffix("")

    writer = metrics = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step if resume_from is not None else None)
        new = not (run_dir / "metrics.csv").exists() or resume_from is None
        if not new:  # rows logged after the checkpoint we resume from are logged again: drop them
            rows = (run_dir / "metrics.csv").read_text().splitlines(keepends=True)
            (run_dir / "metrics.csv").write_text("".join(rows[:1] + [r for r in rows[1:] if int(r.split(",", 1)[0]) <= step]))
        metrics = open(run_dir / "metrics.csv", "w" if new else "a", newline="")
        csv_out = csv.writer(metrics)
        if new:
            csv_out.writerow(["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "peak_mem_mb", "ema_momentum"])

    bar = tqdm(total=steps, initial=step, disable=not (progress and accelerator.is_main_process), desc=task.name)
    data, acc = batches(), int(tr["accumulation"])
    window_loss, window_n, t0, seen = torch.zeros((), device=device), 0, time.perf_counter(), 0
    first_loss, stopped, mean_loss, rate = None, False, float("nan"), 0.0
    skipped, window_skipped = int(state.get("skipped_steps", 0)) if state else 0, 0
    scaled = accelerator.scaler is not None  # fp16: the grad scaler skips overflowing steps itself
    # The NaN/inf guard lives on the device and is read every log_every steps and before every checkpoint, so a
    # step never waits for the host. It remembers this rank's first bad step, its loss and gradient norm; the
    # check is collective, so every rank raises the same line naming the first bad step of any rank.
    bad = {"step": torch.full((), -1, dtype=torch.long, device=device), "loss": torch.zeros((), device=device),
           "grad": torch.zeros((), device=device)}
    window_ids: dict[int, list[str]] = {}

    def check_finite() -> None:
        """Raise TrainingDiverged, on every rank alike, if any rank saw a non-finite step since the last check."""
        mine = torch.stack([bad["step"].float(), bad["loss"].float(), bad["grad"].float()]).unsqueeze(0)
        every = accelerator.gather(mine) if world > 1 else mine  # [world, 3]; one host sync per check
        hit = every[:, 0] >= 0
        if hit.any():
            at = int(every[hit, 0].min())
            ranks = [r for r in range(world) if int(every[r, 0]) == at]
            losses, grads = [float(every[r, 1]) for r in ranks], [float(every[r, 2]) for r in ranks]
            if int(bad["step"]) >= 0:  # the samples differ per rank, so each rank logs its own
                log.error("rank %d: non-finite loss %s / gradient norm %s at step %d, samples %s", rank, float(bad["loss"]),
                          float(bad["grad"]), int(bad["step"]), window_ids.get(int(bad["step"]), [])[:8])
            if not all(math.isfinite(v) for v in losses):
                what = f"non-finite loss on rank {', '.join(str(r) for r, v in zip(ranks, losses) if not math.isfinite(v))}"
            else:
                what = f"non-finite gradient norm {grads[0]}"
            raise TrainingDiverged(f"training diverged at step {at}: {what}; last good checkpoint: {last_good}")
        window_ids.clear()

    model.train()
    while step < steps:
        step_loss = torch.zeros((), device=device)
        for micro in range(acc):
            batch = next(data).to(device, non_blocking=True)
            sync = micro == acc - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss, _ = model(batch, mask_gen, teacher=teacher) if teacher is not None else model(batch, mask_gen)
            accelerator.backward(loss / acc)
            step_loss = step_loss + loss.detach().float() / acc
            seen += batch.size * world
            window_ids.setdefault(step, []).extend(getattr(batch, "ids", [])[:8])
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tr["clip"]) if tr["clip"] else torch.tensor(0.0)
        grad_norm = torch.as_tensor(grad_norm, device=device).detach().float()
        # with a grad scaler an overflowing gradient is the scaler's to skip, not divergence
        grad_ok = torch.isfinite(grad_norm) | torch.tensor(scaled, device=device)
        first_bad = (bad["step"] < 0) & ~(torch.isfinite(step_loss) & grad_ok)
        bad["step"] = torch.where(first_bad, step, bad["step"])
        bad["loss"] = torch.where(first_bad, step_loss, bad["loss"])
        bad["grad"] = torch.where(first_bad, grad_norm, bad["grad"])
        scale_before = accelerator.scaler.get_scale() if scaled else None
        optimizer.step()
        # a skipped step lowers the scale (read from the scaler: a fused AdamW skips inside its own kernel, which
        # Accelerate's step_was_skipped does not see); fp16 only, so bf16/fp32 steps stay free of host syncs
        stepped = not scaled or accelerator.scaler.get_scale() >= scale_before
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        momentum = None
        if not stepped:
            skipped, window_skipped = skipped + 1, window_skipped + 1
        elif teacher is not None and task.update_teacher is not None:  # exactly once per real optimiser step
            momentum = task.update_teacher(teacher, raw, step, steps)
            ema_updates += 1
        step += 1
        first_loss = float(step_loss) if first_loss is None else first_loss
        window_loss, window_n = window_loss + step_loss, window_n + 1
        checkpoint_now = step % tr["checkpoint_every"] == 0 or step == steps or step == stop_after
        if step % tr["log_every"] == 0 or step == steps:
            check_finite()
            if window_skipped:
                log.warning("fp16: the grad scaler skipped %d of the last %d steps (gradient overflow; %d in all)", window_skipped, window_n, skipped)
                window_skipped = 0
            mean_loss = accelerator.reduce(window_loss / window_n, "mean").item()
            rate = seen / (time.perf_counter() - t0)
            if accelerator.is_main_process:
                lr = scheduler.get_last_lr()[0]
                mem = peak_memory_mb(device)
                csv_out.writerow([step, epoch, f"{mean_loss:.6f}", f"{lr:.3e}", f"{float(grad_norm):.4f}", f"{rate:.1f}", f"{mem:.0f}",
                                  "" if momentum is None else f"{momentum:.6f}"])
                metrics.flush()
                for k, v in {"loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm), "samples_per_s": rate, "peak_mem_mb": mem,
                             "skipped_steps": skipped}.items():
                    writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", sps=f"{rate:.0f}")
            window_loss, window_n = torch.zeros((), device=device), 0
        if monitor is not None and accelerator.is_main_process and (step % tr["monitor_every"] == 0 or step == steps):
            for k, v in monitor(raw, teacher, held).items():
                writer.add_scalar(f"monitor/{k}", v, step)
            model.train()
        if task.should_stop is not None and monitor is not None and (step % tr["monitor_every"] == 0 or step == steps):
            flag = torch.tensor(float(accelerator.is_main_process and task.should_stop()), device=device)
            stopped = accelerator.reduce(flag, "sum").item() > 0
        bar.update(1)
        if checkpoint_now or stopped:
            check_finite()  # never checkpoint weights from after a non-finite step
            last_good = save()
        if stopped or (stop_after is not None and step >= stop_after):
            break
    bar.close()
    checksums = replica_checksums(accelerator, raw, teacher)
    if accelerator.is_main_process:
        metrics.close()
        writer.close()
        if step == steps or stopped:
            extra = task.finish(run_dir, raw, teacher) or {}
            summary = {"steps": step, "train_steps": steps, "ema_updates": ema_updates, "skipped_steps": skipped, "first_loss": first_loss, "final_loss": mean_loss,
                       "samples_per_s": rate, "peak_mem_mb": peak_memory_mb(device), "world": world,
                       "dropped_per_epoch": sampler.dropped_per_epoch, "samples_per_epoch": sampler.batches_per_epoch * world * tr["batch_size"],
                       "wall_s": time.perf_counter() - t0, "replica_checksums": checksums, "stopped_early": stopped, **compile_summary(tr),
                       **extra}
            summary |= finish_inputs(dataset, run_dir)  # skipped.txt + bad-input counts
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return run_dir
