#!/usr/bin/env bash
# Wide Gaussians on a grid twice as coarse (QuantizerConfig.wide_sigma = 2 px), fine-tuned through
# the rule, against the same settings without it: kodim04 and kodim08 (as
# results/position_precision_probe) at N = 800 and 3,000, the codec's CPU defaults. Then:
#   .venv/bin/python results/wide_positions_check/summary.py
set -euo pipefail
cd "$(dirname "$0")/../.."
here=results/wide_positions_check
mkdir -p "$here/images"
for i in 04 08; do ln -sf "$(realpath "${KODAK:-../shared/data/kodak}/kodim$i.png")" "$here/images/"; done
for sigma in 0 2; do
  .venv/bin/python experiments/compress.py --dataset="$here/images" --num_gaussians=800,3000 \
    --out_dir="$here/out_wide$sigma" --wide_sigma=$sigma --classic=false --decode_repeats=1
  cp "$here/out_wide$sigma/records.json" "$here/records_wide$sigma.json"
done
