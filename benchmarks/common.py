"""Shared by benchmark scripts: one lock so timed benchmarks take turns, and results files that
record the git commit, machine and wall time next to the numbers."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# Written into every CPU timing results file: the development machine is shared (2 cores, several
# sessions), so absolute rates move with load; ratios measured side by side in one process, as the
# median of per-round ratios, are what the results claim.
LOAD_CAVEAT = ("measured on a shared, heavily loaded 2-core machine (several sessions at once): absolute rates vary with "
               "load; compare only the ratios, measured alternating in one process (median of per-round ratios)")


def lock_path(name: str = "domainfm-benchmarks") -> Path:
    """The machine-wide lock file every timed benchmark takes turns on."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}.lock"


@contextlib.contextmanager
def timing_lock(name: str = "domainfm-benchmarks"):
    """Timed benchmarks never run side by side: each waits for this machine-wide lock."""
    with open(lock_path(name), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def time_steps(fn, device, steps: int) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls, synchronising the GPU around the loop."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def write_results(name: str, payload: dict, started: float, out: Path | None = None) -> Path:
    """Write ``results/NAME.json`` (or ``out``) with the git commit, machine and wall time."""
    out = Path(out) if out is not None else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"commit": git_commit(), "machine": machine(), "wall_s": round(time.time() - started, 1), **payload}
    out.write_text(json.dumps(payload, indent=2))
    return out
