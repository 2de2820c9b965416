#!/usr/bin/env bash
# The test suite (CPU; GPU kernels run in Pallas interpret mode). Sets itself up first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
