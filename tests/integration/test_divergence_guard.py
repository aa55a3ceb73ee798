"""The NaN/inf guard reads the device every log_every steps (no host sync per micro-step), yet still
names the first bad step and its samples, and no checkpoint is written after it."""
import logging
import re

import pytest
import torch

from foundation import checkpoint
from foundation.engine import TrainingDiverged, pretrain
from foundation.objectives.mae import MAE
from foundation.recipes import load_recipe
from modalities.grid.synthetic import write_texture_dataset


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard_data")
    write_texture_dataset(root, 24, seed=1, size=16)
    return root


def recipe(data, run, *extra):
    return load_recipe("grid-mae", [
        f"data.root={data}", f"run.dir={run}", "model.width=32", "model.depth=2", "model.heads=2", "mae.decoder_width=16",
        "mae.decoder_depth=1", "mae.decoder_heads=2", "train.batch_size=4", "train.steps=12", "train.warmup_steps=2",
        "train.checkpoint_every=3", "train.log_every=4", "train.monitor_every=100", *extra])


@pytest.fixture
def poison_at(monkeypatch):
    """Make MAE's loss NaN from the (at+1)-th call on."""
    calls = {"n": 0}
    original = MAE.forward

    def poisoned(self, batch, generator=None):
        loss, info = original(self, batch, generator)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > calls.get("at", 10**9) else loss), info

    monkeypatch.setattr(MAE, "forward", poisoned)
    return calls


def test_nan_loss_between_checks_is_reported_at_its_own_step(small_data, tmp_path, poison_at, caplog):
    poison_at.update(at=4)  # steps 0-3 fine, step 4 (the 5th) is the first NaN
    with caplog.at_level(logging.ERROR, logger="domainfm"), \
            pytest.raises(TrainingDiverged, match=r"diverged at step 4: non-finite loss on rank 0; last good checkpoint: .*step-0000003"):
        pretrain(recipe(small_data, tmp_path / "run"), progress=False)
    assert re.search(r"non-finite loss nan .* at step 4, samples \['.+'\]", caplog.text)  # the rank names its samples
    # detected at the check after step 6 (the checkpoint at 6 is never written): nothing newer than step 3
    assert checkpoint.latest(tmp_path / "run").name == "step-0000003"


def test_nan_gradient_with_finite_loss_is_caught_too(small_data, tmp_path, monkeypatch):
    """Negative control of the loss check: a finite loss whose gradient is NaN is still caught (by the
    gradient norm), so the guard does not merely look at the loss."""
    original = MAE.forward
    calls = {"n": 0}

    def nan_grad(self, batch, generator=None):
        loss, info = original(self, batch, generator)
        calls["n"] += 1
        if calls["n"] == 2:  # from step 1 on, the head's bias gradient is NaN; the loss stays finite
            self.head.bias.register_hook(lambda g: g * float("nan"))
        return loss, info

    monkeypatch.setattr(MAE, "forward", nan_grad)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 1: non-finite gradient norm nan"):
        pretrain(recipe(small_data, tmp_path / "run", "train.clip=1.0"), progress=False)
    assert checkpoint.latest(tmp_path / "run") is None


def test_finite_run_finishes_with_float_losses(small_data, tmp_path):
    import json

    pretrain(recipe(small_data, tmp_path / "ok", "train.steps=4"), progress=False)
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert isinstance(summary["first_loss"], float) and summary["final_loss"] < summary["first_loss"] * 10
