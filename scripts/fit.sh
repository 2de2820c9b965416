#!/usr/bin/env bash
# The main job: set up, then fit the bundled sample image with defaults (the best recipe; the
# paper's counts and steps on a GPU, quick ones on a CPU). Extra arguments go to
# experiments/fit.py (--recipe=paper for the paper's protocol).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python experiments/fit.py "$@"
