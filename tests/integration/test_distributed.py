"""Two CPU processes on gloo: DDP training with an EMA teacher, dataset sharding, FSDP2 EMA, gathered embeddings."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modalities.grid.synthetic import write_texture_dataset

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.mark.slow  # two processes: the slow tier
def test_two_process_jepa_keeps_ema_identical_and_shards_uneven_data(tmp_path):
    write_texture_dataset(tmp_path / "data", 45, seed=2, size=16)  # 45 is not divisible by 2 x 4
    torchrun(["-m", "foundation.cli", "pretrain", "grid-jepa", f"data.root={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}",
              "model.width=32", "model.depth=2", "model.heads=2", "jepa.predictor_width=16", "jepa.predictor_depth=1",
              "jepa.predictor_heads=2", "train.batch_size=4", "train.accumulation=2", "train.steps=6", "train.log_every=1",
              "train.warmup_steps=1", "--quiet"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world"] == 2
    assert summary["ema_updates"] == summary["steps"] == 6  # once per optimiser step, not per micro-batch (12)
    assert summary["dropped_per_epoch"] == 45 - 40 <= 2 * 4 - 1
    (s0, t0), (s1, t1) = summary["replica_checksums"]
    assert s0 == s1 and t0 == t1  # student and EMA teacher identical on both ranks
    assert (tmp_path / "run" / "encoder" / "model.safetensors").exists()


@pytest.mark.slow  # two processes: the slow tier
def test_fsdp2_sharded_teacher_is_updated_shard_by_shard(tmp_path):
    out = torchrun([str(HERE / "fsdp_ema_worker.py"), str(tmp_path)])
    for rank in (0, 1):
        result = json.loads((tmp_path / f"fsdp_ema.rank{rank}.json").read_text())
        assert result["sharded"], out.stdout
        assert result["max_error"] < 1e-6
        assert result["negative_control_error"] > 1e-3  # updating the full tensor on one rank only is caught


@pytest.mark.slow  # two processes: the slow tier
def test_two_process_embedding_equals_one_process_with_ragged_features(tmp_path):
    """Each rank embeds a slice; the gathered result (pooled and per-sample features) is what one
    process gets, in dataset order, on both ranks."""
    from foundation.embed import embed_dataset
    from tests.integration.embed_worker import setup

    write_texture_dataset(tmp_path / "data", 45, seed=3, size=16)
    torchrun([str(HERE / "embed_worker.py"), str(tmp_path / "data"), str(tmp_path)])
    model, ds = setup(str(tmp_path / "data"))
    one = embed_dataset(model, ds, batch_size=4, device="cpu")
    for rank in (0, 1):
        got = np.load(tmp_path / f"embed.rank{rank}.npz")
        assert list(got["ids"]) == list(one["ids"]) and len(got["ids"]) == 45
        np.testing.assert_allclose(got["mean"], one["mean"], atol=1e-5)
        assert list(got["n_tokens"]) == [len(t) for t in one["tokens"]]
        np.testing.assert_allclose(got["tokens"], np.concatenate(one["tokens"]), atol=1e-5)


def test_a_torchrun_worker_exits_with_its_code_and_output_but_without_finalisation():
    """exit_process: under torchrun (WORLD_SIZE > 1) the process leaves before interpreter finalisation, where
    gloo's threads can abort it, yet keeps its exit code and flushed output; a single process exits normally."""
    code = ("import atexit; from foundation.distributed import exit_process; atexit.register(lambda: print('finalised')); "
            "print('result written', end=''); exit_process(3)")
    for world, finalised in (("2", False), ("1", True)):
        env = {**os.environ, "WORLD_SIZE": world, "PYTHONPATH": str(HERE.parents[1])}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 3, out.stderr
        assert out.stdout.startswith("result written")
        assert ("finalised" in out.stdout) == finalised
