"""train.compile=true trains like eager (slow tier: compiling takes minutes on a small CPU)."""
import csv
import json

import pytest

from foundation.engine import pretrain
from foundation.recipes import load_recipe
from modalities.grid.synthetic import write_texture_dataset


@pytest.mark.slow
def test_compiled_training_equals_eager_within_tolerance_and_counts_recompiles(tmp_path):
    import torch

    write_texture_dataset(tmp_path / "data", 24, seed=1, size=16)
    losses, summaries = {}, {}
    for compiled in (False, True):
        torch._dynamo.reset()
        run = tmp_path / f"run-{compiled}"
        pretrain(load_recipe("grid-mae", [
            f"data.root={tmp_path / 'data'}", f"run.dir={run}", "model.width=32", "model.depth=2", "model.heads=2",
            "mae.decoder_width=16", "mae.decoder_depth=1", "mae.decoder_heads=2", "train.batch_size=4", "train.steps=6",
            "train.warmup_steps=2", "train.log_every=1", "train.checkpoint_every=100", f"train.compile={str(compiled).lower()}"]),
            progress=False)
        losses[compiled] = [float(r["loss"]) for r in csv.DictReader((run / "metrics.csv").open())]
        summaries[compiled] = json.loads((run / "summary.json").read_text())
    assert len(losses[True]) == 6
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-3, atol=1e-4)
    assert "compile" in summaries[True] and "compile" not in summaries[False]
    assert summaries[True]["compile"]["graphs"] > 0 and summaries[True]["compile"]["compiles"] >= 1
