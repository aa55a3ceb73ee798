"""align-graph-text, a smoke test: molecules (SMILES in the paired manifest, read by the graph adapter) and
their descriptions; `domainfm align` runs, every logged loss is finite and the loss falls."""
import csv
import math

import torch

from foundation.cli import main
from foundation.pairs import write_paired_manifest

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def molecules() -> list[dict]:
    rows = [{"graph": "C" * n, "text": f"a chain of {WORDS[n]} carbons"} for n in range(2, 10)]
    rows += [{"graph": "C1" + "C" * (n - 1) + "1", "text": f"a ring of {WORDS[n]} carbons"} for n in range(3, 9)]
    rows += [{"graph": "C" * n + "O", "text": f"an alcohol of {WORDS[n]} carbons"} for n in range(1, 7)]
    return rows


def test_align_graph_text_runs_and_its_loss_is_finite_and_falls(tmp_path):
    torch.set_num_threads(1)
    manifest = write_paired_manifest(tmp_path / "molecules.csv", molecules(), ["graph", "text"])
    run = tmp_path / "run"
    assert main(["align", "align-graph-text", f"data.manifest={manifest}", f"run.dir={run}", "train.steps=30", "train.batch_size=10",
                 "train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1", "towers.graph.model.width=32",
                 "towers.graph.model.depth=1", "--quiet"]) == 0
    with open(run / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3, losses  # from about log(10), chance for 10 distinct texts
    assert (run / "towers" / "graph" / "encoder" / "config.json").exists()
