#!/usr/bin/env bash
# OURS's fine-tuning default (2e-2, hold_cosine; commit a1c9786) at the full CPU Kodak protocol
# (1,000 + 2,000 steps, N = 800, 3,000, 5,000, 9,000), paired with results/kodak_ft2000, which ran
# the same protocol with the old rate (1e-2, paper schedule). The fits are the same computation
# (same seed, same code path), so each pair differs in its fine-tuning only; paired.py checks the
# fits' PSNR agree. Images not in results/ft_schedule_probe first, in kodak_ft2000's spread order.
# One compress.py call per image (scripts/kodak_by_image.sh); re-running this resumes.
# The comparison: .venv/bin/python results/kodak_ft2000/paired.py kodak_ft2000 kodak_ft_default
# Wide positions (the default since) are pinned off, as the run was made before them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ORDER="17 22 04 09 14 19 24 10 15 20 08 18 07 12 01 03 23 06 11 16 21 02 05 13"
bash scripts/kodak_by_image.sh results/kodak_ft_default "${IMAGES:-$ORDER}" \
    --num_gaussians=800,3000,5000,9000 --finetune_steps=2000 --wide_sigma=0
