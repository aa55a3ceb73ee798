"""torchrun worker: FSDP2 (fully_shard) student and teacher on gloo; EMA on local shards must equal
the EMA of the full tensors computed without sharding. Every rank writes its own result, so the test sees
that both ranks checked their shards."""
import copy
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from foundation.distributed import exit_process, release_process_group
from foundation.model import Encoder
from foundation.objectives.jepa import ema_update
from modalities.grid.adapter import GridAdapter


def full(module):
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in module.parameters()]


def check(rank: int) -> dict:
    torch.manual_seed(0)
    student = Encoder(GridAdapter({"patch": [4, 4]}), width=32, depth=2, heads=2)
    teacher = copy.deepcopy(student).requires_grad_(False)
    ref_student, ref_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    for m in (student, teacher):
        for block in m.trunk.blocks:
            fully_shard(block)
        fully_shard(m)
    sharded = all(hasattr(p, "to_local") for p in teacher.parameters())
    with torch.no_grad():  # the same "optimiser step" on the sharded and the reference student
        for p, q in zip(student.parameters(), ref_student.parameters()):
            delta = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
            p.add_(torch.distributed.tensor.distribute_tensor(delta, p.device_mesh, p.placements) if hasattr(p, "to_local") else delta)
            q.add_(delta)
    ema_update(teacher, student, 0.9)
    ema_update(ref_teacher, ref_student, 0.9)
    err = max(float((a - b).abs().max()) for a, b in zip(full(teacher), ref_teacher.parameters()))
    # negative control: a teacher update on rank 0 only leaves rank 1's shards stale
    bad = copy.deepcopy(ref_teacher)
    ema_update(bad, ref_student, 0.5)
    neg = max(float((a - b).abs().max()) for a, b in zip(bad.parameters(), ref_teacher.parameters()))
    return {"rank": rank, "sharded": sharded, "max_error": err, "negative_control_error": neg}


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = check(rank)  # the sharded modules die with check's frame, before the group is torn down
    gc.collect()
    Path(out_dir, f"fsdp_ema.rank{rank}.json").write_text(json.dumps(result))
    release_process_group()  # the CLI's teardown: barrier, so no rank tears gloo down while the other talks to it
    # Torch-side caches (FSDP2's device mesh among them) can keep the gloo group alive past
    # destroy_process_group; left to interpreter finalisation, gloo's threads once aborted rank 1 here after
    # all work was done (CI, stop 22; the same class of crash as pytorch#65237).
    # Everything this worker proves is on disk by now, so leave without finalisation.
    exit_process(0)


if __name__ == "__main__":
    main(sys.argv[1])
