"""Process-group teardown for commands that ran under torchrun, beside the engine that started the group.

The engine (through Accelerate) brings the process group up; these two functions take it down in the only
order that lets a gloo run leave cleanly. The CLI calls them after a command; multi-process test workers call
them the same way.
"""
from __future__ import annotations

import logging
import os
import sys


def release_process_group() -> None:
    """Tear gloo/NCCL down while the interpreter is alive, after a command that ran under torchrun.

    A process group left for interpreter finalisation is destroyed while modules are being cleared, and gloo's
    worker threads then sometimes abort the process ("terminate called without an active exception"), turning a
    finished run into a failed torchrun. Only the success path does this: after an error a peer may still be
    blocked in a collective and a collective teardown would hang instead of letting torchrun report the error.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """Leave the process with `code`; a torchrun worker leaves without interpreter finalisation.

    `destroy_process_group` only drops c10d's own references: DDP's reducer and Accelerate's state still hold the
    gloo group, so its threads outlive `main` and are torn down during finalisation, where about one two-process run
    in forty (under CPU contention) aborted with SIGABRT after a complete, saved run. Everything a command writes is
    closed by the time it returns, so a worker flushes its streams and exits at once.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
