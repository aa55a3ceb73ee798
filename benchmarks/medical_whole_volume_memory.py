"""Peak memory of embedding whole shared NIfTI volumes by sliding window (``foundation.load_encoder(...).embed``).

An encoder of the medical-mae recipe's size (random init: memory does not depend on the weights' values) is
exported, then each volume is embedded in a fresh process; reported per volume: the process's peak resident
memory after loading the encoder and after embedding, and the wall time.

    python benchmarks/medical_whole_volume_memory.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_results  # noqa: E402

PROBE = """
import json, resource, sys, time
import foundation
enc = foundation.load_encoder(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
out = enc.embed([sys.argv[2]], batch_size=1)
print(json.dumps({"loaded_mb": before / 1024, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.time() - t, "dim": int(out.embeddings.shape[1])}))
"""


def main() -> None:
    import torch
    import yaml

    from foundation.model import Encoder
    from modalities.base import adapter_from_config

    t0 = time.time()
    recipe = yaml.safe_load((REPO / "recipes" / "medical-mae.yaml").read_text())
    volumes = sorted((REPO.parent / "shared" / "data" / "medical" / "nifti").glob("*.nii.gz"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = adapter_from_config("medical", {**recipe.get("adapter", {}), "cache": "none"})
        torch.manual_seed(0)
        model = {k: v for k, v in recipe["model"].items() if k in ("width", "depth", "heads")}
        out = Encoder(adapter, **model).save_pretrained(Path(tmp) / "export")
        for vol in volumes:
            res = subprocess.run([sys.executable, "-c", PROBE, str(out), str(vol)], capture_output=True, text=True,
                                 env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=1800)
            if res.returncode != 0:
                raise SystemExit(res.stderr)
            rows[vol.name] = json.loads(res.stdout.strip().splitlines()[-1])
            print(vol.name, rows[vol.name], flush=True)
    result = {"model": model, "adapter": {k: adapter.config[k] for k in ("spacing", "sw_roi", "sw_overlap", "patch")}, "volumes": rows}
    print(write_results("medical_whole_volume_memory", result, t0))


if __name__ == "__main__":
    main()
