"""Alignment under DDP on 2 gloo processes equals one process on the same global batch (loss and every
tower's gradient, InfoNCE and SigLIP); a plain all-gather (no gradient, like ``accelerator.gather``) does not."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundation.towers import build_tiny_text_tower
from tests.integration.align_worker import KINDS, TEXTS, reference
from tests.integration.test_distributed import torchrun

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow  # two processes: the slow tier


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("align_ddp")
    build_tiny_text_tower(out / "text", TEXTS * 4)
    torchrun([str(HERE / "align_worker.py"), str(out)])
    return out


def max_error(ref: dict, got: dict) -> float:
    assert set(ref) == set(got) - {"__loss__"}
    # relative to each gradient's scale, with a floor for gradients that are zero in exact arithmetic (a key bias)
    return max(float((ref[k] - got[k]).abs().max() / (ref[k].abs().max() + 1e-6)) for k in ref)


@pytest.mark.parametrize("kind", KINDS)
def test_gathered_loss_and_gradients_equal_one_process(two_process_run, kind):
    ref_loss, ref_grads = reference(two_process_run / "text", kind)
    towers_seen = {k.split(".")[1] for k in ref_grads if k.startswith("towers.")}
    assert towers_seen == {"image", "text"} and any(g.abs().sum() > 0 for g in ref_grads.values())
    for rank in (0, 1):
        got = load_file(str(two_process_run / f"{kind}.grad.rank{rank}.safetensors"))
        assert abs(float(got["__loss__"]) - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
        assert max_error(ref_grads, got) < 1e-3  # float32 sums over the two processes in another order
    # negative control: gathering without gradient gives the same loss but wrong gradients
    ctrl = load_file(str(two_process_run / f"{kind}.none.rank0.safetensors"))
    assert abs(float(ctrl["__loss__"]) - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    assert max_error(ref_grads, ctrl) > 0.1, max_error(ref_grads, ctrl)
