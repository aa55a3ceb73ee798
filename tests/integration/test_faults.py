"""Faults a training run must survive or refuse, each with a negative control that breaks the mechanism.

The README's "Faults we test" table lists these tests. In-process ones are default tier; those that start
two gloo processes several times are ``slow``.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundation import checkpoint
from foundation.engine import TrainingDiverged, pretrain
from foundation.errors import RunDirError
from foundation.recipes import load_recipe
from modalities.grid.synthetic import write_texture_dataset

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def tiny_recipe(data, run, extra=()):
    """grid-mae at its smallest: 6 steps, checkpoints every 2, one trunk block of width 32."""
    return load_recipe("grid-mae", [
        f"data.root={data}", f"run.dir={run}", "model.width=32", "model.depth=1", "model.heads=2", "mae.decoder_width=16",
        "mae.decoder_depth=1", "mae.decoder_heads=2", "train.batch_size=4", "train.steps=6", "train.warmup_steps=1",
        "train.checkpoint_every=2", "train.log_every=1", "train.monitor_every=100", *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_data")
    write_texture_dataset(root, 24, seed=4, size=16)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to."""
    torch.set_num_threads(2)  # as conftest's per-test fixture sets it: another thread count sums in another order
    run = pretrain(tiny_recipe(data, tmp_path_factory.mktemp("ref") / "run"), progress=False)
    return weights(run)


def weights(run: Path) -> dict:
    return load_file(str(checkpoint.committed(run)[-1] / "model.safetensors"))


def gap(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --- checkpoints -------------------------------------------------------------------------------------------

def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_resumed(data, reference, tmp_path, caplog, monkeypatch):
    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False, stop_after=4)
    newest = checkpoint.committed(run)[-1]
    assert newest.name == "step-0000004"
    blob = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(blob[: len(blob) // 2])  # a partial write
    with caplog.at_level(logging.WARNING, logger="domainfm"):
        pretrain(tiny_recipe(data, run), progress=False)
    assert f"checkpoint {newest} is unreadable" in caplog.text and "step-0000002" in caplog.text
    assert gap(reference, weights(run)) < 1e-6  # resumed exactly from step 2

    # negative control: without verification the truncated checkpoint is chosen and resuming fails
    run2 = tmp_path / "run2"
    pretrain(tiny_recipe(data, run2), progress=False, stop_after=4)
    (run2 / "checkpoints" / "step-0000004" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    monkeypatch.setattr(checkpoint, "verify", lambda ckpt: None)
    with pytest.raises(Exception):
        pretrain(tiny_recipe(data, run2), progress=False)


def test_unknown_checkpoint_format_is_refused(data, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    state = run / "checkpoints" / "step-0000002" / "state.json"
    assert json.loads(state.read_text())["format"] == checkpoint.FORMAT
    state.write_text(json.dumps({**json.loads(state.read_text()), "format": checkpoint.FORMAT + 1}))
    with pytest.raises(RunDirError, match=r"step-0000002 has checkpoint format 2.*upgrade domainfm"):
        pretrain(tiny_recipe(data, run), progress=False)


FULL_DISK = """
import resource, sys
from tests.integration.test_faults import tiny_recipe
from foundation.engine import pretrain
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
pretrain(tiny_recipe(sys.argv[1], sys.argv[2]), progress=False)
"""


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_the_run_resumable(data, reference, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    size = (run / "checkpoints" / "step-0000002" / "model.safetensors").stat().st_size
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def launch(limit: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", FULL_DISK.format(limit=limit), str(data), str(run)], capture_output=True,
                              text=True, env=env, timeout=600, cwd=ROOT)

    out = launch(size // 2)  # no file may grow beyond half a checkpoint's weights: the step-4 write fails
    assert out.returncode != 0
    assert "could not write checkpoint" in out.stderr and "step-0000004.tmp" in out.stderr, out.stderr[-2000:]
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-0000002"]  # no half-written folder left
    checkpoint.verify(run / "checkpoints" / "step-0000002")
    pretrain(tiny_recipe(data, run), progress=False)  # the disk has room again: resume from step 2
    assert gap(reference, weights(run)) < 1e-6

    # negative control: the same launch with room to write passes the step-4 checkpoint (so the limit caused the failure)
    run.rename(tmp_path / "done")
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    assert launch(resource.RLIM_INFINITY).returncode == 0 and (run / "summary.json").exists()


def test_not_enough_disk_space_stops_before_writing(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(checkpoint.CheckpointError, match=r"not enough disk space.*resume from .*step-0000002"):
        pretrain(tiny_recipe(data, run), progress=False)
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_metrics_have_no_duplicate_rows_after_a_crash_between_checkpoints(data, tmp_path, monkeypatch):
    from foundation.objectives.mae import MAE

    run, original, calls = tmp_path / "run", MAE.forward, [0]

    def crash_at_fifth(self, batch, generator=None):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt  # a crash during step 5: steps 1-4 are logged, the newest checkpoint is step 3's
        return original(self, batch, generator)

    monkeypatch.setattr(MAE, "forward", crash_at_fifth)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_recipe(data, run, ["train.checkpoint_every=3"]), progress=False)
    logged = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert logged == [1, 2, 3, 4] and checkpoint.committed(run)[-1].name == "step-0000003"  # step 4 lies past the checkpoint
    monkeypatch.setattr(MAE, "forward", original)
    pretrain(tiny_recipe(data, run, ["train.checkpoint_every=3"]), progress=False)
    logged = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert logged == [1, 2, 3, 4, 5, 6]


class InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a gradient overflow with a finite loss."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_fp16_overflow_is_skipped_and_counted_not_aborted(data, tmp_path, monkeypatch, caplog):
    from foundation.objectives.mae import MAE

    original, calls = MAE.forward, [0]

    def overflowing_third(self, batch, generator=None):
        loss, info = original(self, batch, generator)
        calls[0] += 1
        return (InfGrad.apply(loss) if calls[0] == 3 else loss), info

    monkeypatch.setattr(MAE, "forward", overflowing_third)
    with caplog.at_level(logging.WARNING, logger="domainfm"):
        pretrain(tiny_recipe(data, tmp_path / "fp16", ["train.precision=fp16"]), progress=False)
    summary = json.loads((tmp_path / "fp16" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_steps"] >= 1, summary
    assert "grad scaler skipped" in caplog.text

    # negative control: without a grad scaler (fp32) the same overflow stops the run, naming the step
    calls[0] = 0
    with pytest.raises(TrainingDiverged, match=r"diverged at step 2: non-finite gradient norm"):
        pretrain(tiny_recipe(data, tmp_path / "fp32"), progress=False)


# --- run directories -----------------------------------------------------------------------------------------

def test_finished_runs_are_refused_unless_extended(data, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False)
    with pytest.raises(RunDirError, match=r"is a finished run \(6 steps.*raise train.steps above 6"):
        pretrain(tiny_recipe(data, run), progress=False)
    pretrain(tiny_recipe(data, run, ["train.steps=8"]), progress=False)  # raising train.steps extends it
    assert json.loads((run / "summary.json").read_text())["steps"] == 8
    assert [json.loads(x)["changed"] for x in (run / "resumes.jsonl").read_text().splitlines()] == [{"train.steps": [6, 8]}]


def test_another_model_batch_size_or_world_size_is_refused_and_recipe_yaml_kept(data, tmp_path, caplog):
    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    saved = (run / "recipe.yaml").read_bytes()
    with pytest.raises(RunDirError, match=r"another model.*mae\.decoder_depth: 1 -> 2; model\.width: 32 -> 64"):
        pretrain(tiny_recipe(data, run, ["model.width=64", "mae.decoder_depth=2"]), progress=False)
    with pytest.raises(RunDirError, match=r"another model.*modality: 'grid' -> 'speech'"):
        pretrain(load_recipe("speech-mae", [f"run.dir={run}", f"data.root={data}"]), progress=False)
    with pytest.raises(RunDirError, match=r"train.batch_size=4, this launch asks for 8"):
        pretrain(tiny_recipe(data, run, ["train.batch_size=8"]), progress=False)
    assert (run / "recipe.yaml").read_bytes() == saved and not (run / "resumes.jsonl").exists()

    ckpt = run / "checkpoints" / "step-0000002"
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "world": 2}))
    (ckpt / "rng-rank1.pt").write_bytes((ckpt / "rng-rank0.pt").read_bytes())
    with pytest.raises(RunDirError, match=r"written by 2 processes, this launch has 1"):
        pretrain(tiny_recipe(data, run), progress=False)
    (ckpt / "state.json").write_text(json.dumps(state))

    # a changed run-level key resumes, announced, and is logged beside the untouched recipe.yaml
    with caplog.at_level(logging.WARNING, logger="domainfm"):
        pretrain(tiny_recipe(data, run, ["train.lr=0.001"]), progress=False)
    assert "resuming" in caplog.text and "step-0000002" in caplog.text and "train.lr=0.001" in caplog.text
    assert (run / "recipe.yaml").read_bytes() == saved
    entry = json.loads((run / "resumes.jsonl").read_text())
    assert entry["from_step"] == 2 and entry["changed"] == {"train.lr": [0.002, 0.001]}


def test_a_run_directory_in_use_is_refused_and_a_dead_holders_lock_taken_over(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run / "run.lock").write_text(f"{socket.gethostname()} {alive.pid}")
        with pytest.raises(RunDirError, match=rf"in use by process .* {alive.pid}"):
            pretrain(tiny_recipe(data, run), progress=False)
    finally:
        alive.kill()
        alive.wait()
    # negative control: the same lock, its process now gone, is taken over and the run proceeds
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    assert checkpoint.committed(run)[-1].name == "step-0000002" and not (run / "run.lock").exists()


# --- two processes ----------------------------------------------------------------------------------------

def torchrun(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    from tests.integration.test_distributed import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "fault_worker.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_sigkill_mid_step_and_mid_checkpoint_resumes_to_the_uninterrupted_weights(data, tmp_path):
    assert torchrun([str(data), str(tmp_path / "full"), "none"]).returncode == 0
    reference = weights(tmp_path / "full")
    # with 24 samples, 2 ranks x batch 4: 3 batches per epoch, so step 5 is mid-epoch
    for fault in ("kill_step:5", "kill_ckpt:2"):
        run = tmp_path / fault.replace(":", "_")
        assert torchrun([str(data), str(run), fault]).returncode != 0
        assert not (run / "summary.json").exists()
        out = torchrun([str(data), str(run), "none"])
        assert out.returncode == 0, out.stderr[-3000:]
        assert gap(reference, weights(run)) < 1e-6, fault
    # negative control: the same kill, resumed without restoring the RNG states, ends elsewhere
    run = tmp_path / "no_rng"
    assert torchrun([str(data), str(run), "kill_step:5"]).returncode != 0
    assert torchrun([str(data), str(run), "none", "no_rng_restore"]).returncode == 0
    assert gap(reference, weights(run)) > 1e-4


@pytest.mark.slow
def test_a_rank_raising_or_hanging_mid_step_stops_both_ranks_within_a_minute(data, tmp_path):
    for fault in ("raise_step:3", "hang_step:3"):
        stamp = tmp_path / f"{fault[:4]}.stamp"
        t0 = time.time()
        out = torchrun([str(data), str(tmp_path / fault[:4]), fault, "train.timeout_s=20"], env={"FAULT_STAMP": str(stamp)}, timeout=400)
        assert out.returncode != 0
        assert time.time() - float(stamp.read_text()) < 60, fault  # from the fault to both ranks gone
        if fault.startswith("raise"):
            assert "injected failure in forward call 3 on rank 1" in out.stderr
    # negative control: with gloo's default 30-minute timeout, the hung rank's peer is still waiting a minute later
    stamp = tmp_path / "default.stamp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "FAULT_STAMP": str(stamp)}
    from tests.integration.test_distributed import free_port

    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                             "--master_port", str(free_port()), str(HERE / "fault_worker.py"), str(data), str(tmp_path / "default"),
                             "hang_step:3", "train.timeout_s=1800"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while not stamp.exists() and proc.poll() is None:
            time.sleep(1)
        time.sleep(60)
        assert proc.poll() is None  # still hanging
    finally:
        # torchrun starts each worker in its own session, so killing torchrun's group would leave the hung workers
        # (and their 30-minute wait) behind: kill every descendant first
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, 9)
        proc.wait()


def test_settings_added_or_removed_by_another_version_do_not_block_a_resume_but_adapter_keys_do(data, tmp_path):
    import yaml

    run = tmp_path / "run"
    pretrain(tiny_recipe(data, run), progress=False, stop_after=2)
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    saved["mae"]["retired_switch"] = True  # a key an older domainfm wrote
    del saved["jepa"]["target_norm"]  # a key this version added
    (run / "recipe.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    # negative control: a one-sided adapter key is a real change of the model's input
    with pytest.raises(RunDirError, match=r"another model.*adapter\.flip: None -> False"):
        pretrain(tiny_recipe(data, run, ["adapter.flip=false"]), progress=False)
    pretrain(tiny_recipe(data, run), progress=False)
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
