#!/usr/bin/env bash
# OURS's fine-tuning default (2e-2, hold_cosine; commit a1c9786) at the full CPU Kodak protocol
# (1,000 + 2,000 steps, N = 800, 3,000, 5,000, 9,000), paired with results/kodak_ft2000, which ran
# the same protocol with the old rate (1e-2, paper schedule). The fits are the same computation
# (same seed, same code path), so each pair differs in its fine-tuning only; paired.py checks the
# fits' PSNR agree. Images not in results/ft_schedule_probe first, in kodak_ft2000's spread order.
# compress.py skips the records it already has, so re-running this resumes; output goes to run.log.
# The comparison: .venv/bin/python results/kodak_ft2000/paired.py kodak_ft2000 kodak_ft_default
set -euo pipefail
cd "$(dirname "$0")/../.."
KODAK=${KODAK:-../shared/data/kodak}
OUT=results/kodak_ft_default
ORDER="17 22 04 09 14 19 24 10 15 20 08 18 07 12 01 03 23 06 11 16 21 02 05 13"
for i in ${IMAGES:-$ORDER}; do
  one="$OUT/one/kodim$i"
  mkdir -p "$one"
  ln -sf "$(realpath "$KODAK/kodim$i.png")" "$one/"
  echo "== kodim$i $(date -u +%FT%TZ)" >>"$OUT/run.log"
  .venv/bin/python experiments/compress.py --dataset="$one" --num_gaussians=800,3000,5000,9000 \
      --finetune_steps=2000 --out_dir="$OUT" >>"$OUT/run.log" 2>&1
done
