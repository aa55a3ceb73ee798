"""No network and no pickles: the test run's socket guard catches subprocesses too, and no reader
unpickles user or cached data."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CONNECT = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)"  # TEST-NET-1: never routable


def test_guard_refuses_a_connection_from_a_subprocess(tmp_path):
    log = tmp_path / "attempts.log"
    env = {**os.environ, "DOMAINFM_NETGUARD_LOG": str(log)}  # a log of its own: this attempt is expected
    out = subprocess.run([sys.executable, "-c", CONNECT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "network connection to ('192.0.2.1', 80) refused" in out.stderr
    assert "192.0.2.1" in log.read_text()
    # negative control: without the guard's folder on PYTHONPATH the same subprocess is not stopped by it
    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    bare["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", CONNECT], env=bare, capture_output=True, text=True, timeout=60)
    assert "domainfm test guard" not in out.stderr


def test_guard_allows_loopback_and_refuses_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINFM_NETGUARD_LOG", str(tmp_path / "attempts.log"))
    with pytest.raises(ConnectionRefusedError, match="domainfm test guard"):
        socket.create_connection(("192.0.2.1", 80), timeout=2)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=2):
        pass
    server.close()


UNSAFE = re.compile(r"pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)|weights_only=False|allow_pickle=True|dill\.load")


def test_no_pickle_loading_in_library_code():
    """``torch.load`` only with ``weights_only=True``; no ``pickle.load``; no pickled numpy arrays."""
    hits = []
    for folder in ("foundation", "modalities"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if UNSAFE.search(line) and not line.lstrip().startswith("#"):
                    hits.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert not hits, "unsafe deserialisation:\n" + "\n".join(hits)


def test_the_pickle_check_can_fail():
    """Negative control of the grep: it flags the patterns it exists for."""
    for bad in ("x = torch.load(p)", "torch.load(p, weights_only=False)", "pickle.load(fh)", "np.load(p, allow_pickle=True)"):
        assert UNSAFE.search(bad), bad
    assert not UNSAFE.search("torch.load(p, weights_only=True, map_location='cpu')")
