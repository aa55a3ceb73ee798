"""Exact resume: interrupted mid-epoch (workers, augmentation, accumulation, EMA on) then resumed
must end where an uninterrupted run ends; skipping the RNG restore must not (negative control)."""
import pytest
from safetensors.torch import load_file

from foundation import checkpoint
from foundation.engine import pretrain
from foundation.errors import RunDirError
from foundation.recipes import load_recipe
from modalities.grid.synthetic import write_texture_dataset


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    write_texture_dataset(root, 40, seed=1, size=16)
    return root


# only the objective's own section: a section the objective does not read is refused (recipes.refuse_unused_sections)
OBJECTIVE_KEYS = {"jepa": ["jepa.predictor_width=16", "jepa.predictor_depth=1", "jepa.predictor_heads=2"],
                  "mae": ["mae.decoder_width=16", "mae.decoder_depth=1", "mae.decoder_heads=2"]}


def recipe(data, run, objective="jepa"):
    return load_recipe(f"grid-{objective}", [
        f"data.root={data}", f"run.dir={run}", "data.num_workers=2", "model.width=32", "model.depth=2", "model.heads=2",
        *OBJECTIVE_KEYS[objective], "train.batch_size=4", "train.accumulation=2", "train.steps=8",
        "train.warmup_steps=2", "train.checkpoint_every=3", "train.log_every=1", "train.monitor_every=4",
    ])


def final_state(run):
    ckpt = checkpoint.latest(run)
    state = load_file(str(ckpt / "model.safetensors"))
    if (ckpt / "teacher.safetensors").exists():
        state.update({f"teacher.{k}": v for k, v in load_file(str(ckpt / "teacher.safetensors")).items()})
    return state


def max_gap(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("objective", ["jepa", "mae"])
def test_resume_mid_epoch_matches_uninterrupted_and_fails_without_rng_restore(small_data, tmp_path, objective):
    pretrain(recipe(small_data, tmp_path / "full", objective), progress=False)
    reference = final_state(tmp_path / "full")

    pretrain(recipe(small_data, tmp_path / "resumed", objective), progress=False, stop_after=3)  # 3 steps = 6 of 10 batches: mid-epoch
    assert checkpoint.latest(tmp_path / "resumed").name == "step-0000003"
    assert not (tmp_path / "resumed" / "encoder").exists()
    pretrain(recipe(small_data, tmp_path / "resumed", objective), progress=False)
    assert max_gap(reference, final_state(tmp_path / "resumed")) < 1e-5

    pretrain(recipe(small_data, tmp_path / "no_rng", objective), progress=False, stop_after=3)
    pretrain(recipe(small_data, tmp_path / "no_rng", objective), progress=False, restore_rng=False)
    assert max_gap(reference, final_state(tmp_path / "no_rng")) > 1e-4


def test_checkpoints_are_atomic_and_pruned(small_data, tmp_path):
    pretrain(recipe(small_data, tmp_path / "run", "mae"), progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["latest", "step-0000006", "step-0000008"]
    # a half-written checkpoint (a crash during save) is ignored
    (tmp_path / "run" / "checkpoints" / "step-0000009.tmp").mkdir()
    assert checkpoint.latest(tmp_path / "run").name == "step-0000008"
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 9
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    # rerunning the finished run is refused; asking to reuse it returns it untouched: no retraining, same encoder
    summary, weights = (tmp_path / "run" / "summary.json").read_text(), final_state(tmp_path / "run")
    with pytest.raises(RunDirError, match="is a finished run"):
        pretrain(recipe(small_data, tmp_path / "run", "mae"), progress=False)
    assert pretrain(recipe(small_data, tmp_path / "run", "mae"), progress=False, reuse_finished=True) == tmp_path / "run"
    assert (tmp_path / "run" / "summary.json").read_text() == summary and max_gap(final_state(tmp_path / "run"), weights) == 0
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 9


def test_non_finite_loss_stops_with_step_and_samples_named(small_data, tmp_path, monkeypatch):
    from foundation import engine
    from foundation.objectives.mae import MAE

    original = MAE.forward

    def poisoned(self, batch, generator=None):
        loss, info = original(self, batch, generator)
        return loss * float("nan") if self.poison_now else loss, info

    monkeypatch.setattr(MAE, "forward", poisoned)
    monkeypatch.setattr(MAE, "poison_now", False, raising=False)
    r = recipe(small_data, tmp_path / "nan", "mae")
    pretrain(r, progress=False, stop_after=3)
    MAE.poison_now = True
    with pytest.raises(engine.TrainingDiverged, match=r"diverged at step 3: non-finite loss on rank 0; last good checkpoint: .*step-0000003"):
        pretrain(r, progress=False)
    assert checkpoint.latest(tmp_path / "nan").name == "step-0000003"


def test_jepa_exports_the_ema_teacher_and_bf16_autocast_trains(small_data, tmp_path, monkeypatch):
    pretrain(recipe(small_data, tmp_path / "jepa", "jepa"), progress=False)
    teacher = load_file(str(checkpoint.latest(tmp_path / "jepa") / "teacher.safetensors"))
    exported = load_file(str(tmp_path / "jepa" / "encoder" / "model.safetensors"))
    student = {k[len("encoder."):]: v for k, v in load_file(str(checkpoint.latest(tmp_path / "jepa") / "model.safetensors")).items()
               if k.startswith("encoder.")}
    assert exported.keys() == teacher.keys() and all(float((exported[k] - teacher[k]).abs().max()) == 0 for k in teacher)
    assert max(float((student[k] - teacher[k]).abs().max()) for k in teacher) > 0  # the teacher, not the student

    import json
    import math

    import torch

    from foundation.objectives.mae import MAE

    original, seen = MAE.forward, set()

    def recording(self, batch, generator=None):
        seen.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return original(self, batch, generator)

    monkeypatch.setattr(MAE, "forward", recording)
    r = recipe(small_data, tmp_path / "bf16", "mae")
    r["train"]["precision"] = "bf16"
    pretrain(r, progress=False)
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert seen == {torch.bfloat16}  # every training forward ran under bf16 autocast
    assert summary["steps"] == 8 and math.isfinite(summary["final_loss"])
    assert summary["final_loss"] < summary["first_loss"] - 0.02, summary  # and it trained
