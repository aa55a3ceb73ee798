"""Exact resume of `domainfm align`: a run stopped after a mid-epoch checkpoint and resumed ends where an
uninterrupted run ends (every logged loss, every weight, the learned temperature). Negative controls:
resuming without the optimiser's state, or with the loss temperature back at its initial value, does not."""
import csv
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundation import checkpoint
from foundation.align_task import align_task
from foundation.engine import train
from foundation.pairs import write_paired_manifest
from foundation.recipes import load_recipe
from tests.integration.test_align_cli import recipe as align_recipe
from tests.integration.test_align_cli import write_data


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_resume")
    return write_paired_manifest(root / "train.csv", write_data(root, 40, 0), ["image", "text", "label"]), root


def run(manifest, run_dir, **kw):
    """8 steps over 5 batches per epoch (40 rows / 8): the checkpoint at step 3 is mid-epoch and the
    resumed part crosses an epoch boundary."""
    path, root = manifest
    r = load_recipe(str(align_recipe(root, "train")), [
        f"data.manifest={path}", f"run.dir={run_dir}", "train.steps=8", "train.batch_size=8", "train.checkpoint_every=3",
        "train.log_every=1", "train.warmup_steps=2"])
    return train(r, lambda resumed: align_task(r, resumed), progress=False, **kw)


def losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def weights(run_dir):
    return load_file(str(checkpoint.latest(run_dir) / "model.safetensors"))


def gap(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def interrupted(manifest, run_dir):
    run(manifest, run_dir, stop_after=3)
    assert checkpoint.latest(run_dir).name == "step-0000003" and not (run_dir / "towers").exists()


def test_align_resume_equals_uninterrupted_and_fails_without_optimizer_or_temperature(manifest, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    run(manifest, tmp_path / "full")
    ref_w, ref_l = weights(tmp_path / "full"), losses(tmp_path / "full")
    assert sorted(ref_l) == list(range(1, 9))
    scale_key = next(k for k in ref_w if k.startswith("loss.logit_scale."))
    assert abs(float(ref_w[scale_key]) - math.log(1 / 0.07)) > 1e-4  # the temperature did learn: the check below can see it

    interrupted(manifest, tmp_path / "resumed")
    run(manifest, tmp_path / "resumed")
    got = losses(tmp_path / "resumed")
    assert sorted(got) == list(range(1, 9)) and max(abs(got[s] - ref_l[s]) for s in ref_l) < 2e-6, (got, ref_l)
    assert gap(ref_w, weights(tmp_path / "resumed")) < 1e-5
    assert (tmp_path / "resumed" / "towers" / "aligned.json").exists()

    # negative control 1: the temperature back at its initial value in the checkpoint (a resume that forgot it)
    interrupted(manifest, tmp_path / "no_temp")
    ckpt = checkpoint.latest(tmp_path / "no_temp") / "model.safetensors"
    state = load_file(str(ckpt))
    state[scale_key] = torch.tensor(math.log(1 / 0.07))
    save_file(state, str(ckpt))
    run(manifest, tmp_path / "no_temp")
    assert max(abs(losses(tmp_path / "no_temp")[s] - ref_l[s]) for s in range(4, 9)) > 1e-4
    assert gap(ref_w, weights(tmp_path / "no_temp")) > 1e-4

    # negative control 2: weights and schedule restored, the optimiser's moments not
    interrupted(manifest, tmp_path / "no_opt")
    original = checkpoint.load

    def without_optimizer(ckpt, model, optimizer, scheduler, teacher):
        state = original(ckpt, model, optimizer, scheduler, teacher)
        optimizer.state.clear()  # AdamW's moments and step counts forgotten; learning rates stay the scheduler's
        return state

    monkeypatch.setattr(checkpoint, "load", without_optimizer)
    run(manifest, tmp_path / "no_opt")
    assert gap(ref_w, weights(tmp_path / "no_opt")) > 1e-4
