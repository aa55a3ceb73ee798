#!/usr/bin/env bash
# Set up, then run a test tier (2 cores, no GPU):
#   bash scripts/test.sh           the default tier, -m "not slow" (within 15 minutes)
#   bash scripts/test.sh slow      the slow tier, -m slow (reduced benchmarks, multi-process runs)
#   bash scripts/test.sh all       both
# Further arguments go to pytest (e.g. bash scripts/test.sh default tests/foundation -x).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=default
case "${1:-}" in
  default|slow|all) tier=$1; shift ;;
esac
case "$tier" in
  default) marker=(-m "not slow") ;;
  slow) marker=(-m slow) ;;
  all) marker=() ;;
esac
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
set +e
.venv/bin/python -m pytest -q "${marker[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
