#!/usr/bin/env bash
# Create .venv (once) and install domainfm with its test tools. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torchaudio 2.11 (PyPI) loads beside torch 2.14.x; install the pair first so nothing pulls another torch.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchaudio==2.11.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
