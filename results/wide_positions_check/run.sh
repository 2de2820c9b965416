#!/usr/bin/env bash
# Wide Gaussians on a grid twice as coarse (QuantizerConfig.wide_sigma = 2 px), fine-tuned through
# the rule, against the same settings without it: the four images of
# results/position_precision_probe (kodim04, 08, 13, 23) and four more (kodim01, 03, 15, 20) at
# N = 800, 3,000 and 5,000, the first four at 9,000 too, and four more (kodim05, 07, 19, 24) at
# N = 800 and 3,000, where OURS uses them; the codec's CPU defaults, with wide positions at every
# N or at none. Resumes from out_wide*/records.json (seeded from records_wide*.json when
# missing). Then:
#   .venv/bin/python results/wide_positions_check/summary.py
set -euo pipefail
cd "$(dirname "$0")/../.."
here=results/wide_positions_check
kodak=${KODAK:-../shared/data/kodak}
mkdir -p "$here/images" "$here/images9000" "$here/images_low"
for i in 04 08 13 23 01 03 15 20; do ln -sf "$(realpath "$kodak/kodim$i.png")" "$here/images/"; done
for i in 04 23 08 13; do ln -sf "$(realpath "$kodak/kodim$i.png")" "$here/images9000/"; done
for i in 05 07 19 24; do ln -sf "$(realpath "$kodak/kodim$i.png")" "$here/images_low/"; done
for sigma in 0 2; do
  mkdir -p "$here/out_wide$sigma"
  [ -e "$here/out_wide$sigma/records.json" ] ||
    cp "$here/records_wide$sigma.json" "$here/out_wide$sigma/records.json"
  for run in "images 800,3000,5000" "images9000 9000" "images_low 800,3000"; do
    set -- $run
    .venv/bin/python experiments/compress.py --dataset="$here/$1" --num_gaussians="$2" \
      --out_dir="$here/out_wide$sigma" --wide_sigma=$sigma --wide_min_pixels=0 --classic=false \
      --decode_repeats=1
  done
  cp "$here/out_wide$sigma/records.json" "$here/records_wide$sigma.json"
done
