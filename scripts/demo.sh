#!/usr/bin/env bash
# Set up, then run the main job: pretrain, probe, export, reload and embed on generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/domainfm demo "$@"
