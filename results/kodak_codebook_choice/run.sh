#!/usr/bin/env bash
# The per-image codebook choice (CodecSettings(codebook_sizes=(16, 32))) at the current CPU
# defaults (1,000 + 2,000 steps, OURS's fine-tuning). Each record lists both candidates, fine-tuned
# from the one fit, so the choice pairs exactly with always 2 × 16 and always 2 × 32 (choice.py).
# Images not in the earlier shared-fit measurement of the choice (docs/codec_experiments.md),
# N = 800 and 3,000.
# One compress.py call per image (scripts/kodak_by_image.sh); re-running this resumes. Wide
# positions (the default since) are pinned off, as the run was made before them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ORDER="06 09 12 16 20 24"
bash scripts/kodak_by_image.sh results/kodak_codebook_choice "${IMAGES:-$ORDER}" \
    --num_gaussians=800,3000 --finetune_steps=2000 --codebook_sizes=16,32 --noclassic \
    --wide_sigma=0
