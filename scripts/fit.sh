#!/usr/bin/env bash
# The main job: set up, then fit the bundled sample image with defaults (paper settings on a GPU,
# quick settings on a CPU). Extra arguments go to experiments/fit.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python experiments/fit.py "$@"
