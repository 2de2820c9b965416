#!/usr/bin/env bash
# The clip-gradient comparison: the main job's quick CPU settings (10,000 Gaussians, 1,000 steps,
# gradient init, lr 0.03 cosine) on all 24 Kodak images, once with the paper's exact gradient
# through the final clip and once straight-through, into one folder (the settings hash in the file
# names keeps the two apart; results.json holds both). fit.py skips records it already has, so
# re-running resumes. Only results.json is kept; paired.py prints the per-image comparison.
# The exact run shared the cores with a test run for about 20 minutes: its fit_seconds are not
# comparable with the straight-through run's.
set -euo pipefail
cd "$(dirname "$0")/../.."
KODAK=${KODAK:-../shared/data/kodak}
for clip in exact straight_through; do
  .venv/bin/python experiments/fit.py --dataset="$KODAK" --out_dir=results/clip_gradient_kodak \
      --clip_gradient=$clip
done
