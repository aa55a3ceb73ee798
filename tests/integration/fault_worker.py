"""torchrun worker for the fault tests: a tiny grid-mae run on gloo with one injected fault on one rank.

usage: fault_worker.py DATA RUN_DIR FAULT [key=value ...]
FAULT is ``none``, ``kill_step:N`` (SIGKILL during the N-th training forward), ``kill_ckpt:N`` (SIGKILL
while the N-th checkpoint is half written: weights on disk, RNG states not), ``raise_step:N`` (an exception
during the N-th forward) or ``hang_step:N`` (the rank stops answering during the N-th forward); the fault
hits rank 1 only. ``no_rng_restore`` as an extra argument resumes without restoring RNG states (the negative
control of exact resume).
"""
import os
import signal
import sys
import time

from foundation import checkpoint
from foundation.cli import exit_process, release_process_group
from foundation.engine import pretrain
from foundation.objectives.mae import MAE
from tests.integration.test_faults import tiny_recipe


def inject(fault: str) -> None:
    kind, _, n = fault.partition(":")
    if kind == "none" or int(os.environ.get("RANK", "0")) != 1:
        return
    n, calls = int(n), [0]
    if kind == "kill_ckpt":
        original = checkpoint.write_rank_rng

        def dying(tmp, rank, gen):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(tmp, rank, gen)

        checkpoint.write_rank_rng = dying
        return
    forward = MAE.forward

    def faulty(self, batch, generator=None):
        calls[0] += 1
        if calls[0] == n:
            if kind == "kill_step":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "raise_step":
                with open(os.environ["FAULT_STAMP"], "w") as f:
                    f.write(str(time.time()))
                raise RuntimeError(f"injected failure in forward call {n} on rank 1")
            if kind == "hang_step":
                with open(os.environ["FAULT_STAMP"], "w") as f:
                    f.write(str(time.time()))
                time.sleep(3600)
        return forward(self, batch, generator)

    MAE.forward = faulty


if __name__ == "__main__":
    data, run, fault, *rest = sys.argv[1:]
    inject(fault)
    restore = "no_rng_restore" not in rest
    pretrain(tiny_recipe(data, run, [r for r in rest if "=" in r]), progress=False, restore_rng=restore)
    release_process_group()
    exit_process(0)
