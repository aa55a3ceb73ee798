"""Shared fixtures (the shared-data resolver itself is tests/shared_data.py)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# The network guard (tests/netguard): active in this process and, through PYTHONPATH's sitecustomize,
# in every Python subprocess a test starts (CLI runs, torchrun workers, notebooks' kernels).
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
sys.path.insert(0, str(NETGUARD_DIR))
from netguard import install as _install_netguard  # noqa: E402

os.environ["PYTHONPATH"] = os.pathsep.join([str(NETGUARD_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("DOMAINFM_NETGUARD_LOG", os.path.join(tempfile.mkdtemp(prefix="domainfm-netguard-"), "attempts.log"))
_install_netguard()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any process connected (or tried to) to a non-local address, even if the error was swallowed."""
    log = Path(os.environ["DOMAINFM_NETGUARD_LOG"])
    if log.exists() and log.read_text().strip():
        sys.stderr.write(f"\nnetwork guard: connection attempts to non-local addresses during the tests:\n{log.read_text()}")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def texture_data(tmp_path_factory) -> Path:
    from modalities.grid.adapter import GridAdapter

    root = tmp_path_factory.mktemp("textures")
    GridAdapter().synthetic(root, 600, seed=0)
    return root
