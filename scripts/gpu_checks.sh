#!/usr/bin/env bash
# Everything the issues measure on a GPU, in numbered steps. Run from the repo root on a machine
# with JAX's CUDA build:
#   PYTHONPATH=. bash scripts/gpu_checks.sh "$OUT"          # all steps, roughly 25-40 minutes
# The device tool's calls last at most 10 minutes, so there run a few steps per call:
#   STEPS="1 2" PYTHONPATH=. bash scripts/gpu_checks.sh "$OUT"
#   STEPS=3 STEP_SECONDS=270 PYTHONPATH=. bash scripts/gpu_checks.sh "$OUT"
#   STEPS=4 STEP_SECONDS=540 KODAK=results/kodak PYTHONPATH=. bash scripts/gpu_checks.sh "$OUT"
# Where a session has 15 minutes of device time in all (machine start included), use
# scripts/gpu_lease.sh instead: one call, each phase under its own limit. STEP_SECONDS stops each
# long command here in time for its logs to be copied out. Step 4 keeps its records in
# $COMPRESS_DIR (default results/gpu_compress), which a warm machine keeps between calls: repeat
# the call until compress.log ends with the BD-rates.
# The device tool does not carry ../shared: copy ../shared/data/kodak to results/kodak (ignored,
# 15 MB) and name it in the call's `carry`. The device's image lacks constriction, dm-pix and
# pypng: run scripts/device_wheels.sh here first and carry `.whl` too (scripts/device_env.sh
# installs them). Figures of the first GPU run: results/gpu_h200_2026-12-04/NOTES.md.
set -uo pipefail
out=${1:-results/gpu}
steps=" ${STEPS:-1 2 3 4} "
step_seconds=${STEP_SECONDS:-0}
mkdir -p "$out"
source scripts/device_env.sh
"$py" -c 'import jax; print(jax.devices())' | tee "$out/devices.log"

wanted() { [[ "$steps" == *" $1 "* ]]; }
# 1. The Pallas kernels compiled for real, against the oracle (issue #4): on a GPU the kernel
#    tests compile them instead of interpreting them.
if wanted 1; then
  JAX_PLATFORMS=cuda "$py" -m pytest -q -x tests/test_pallas.py tests/test_render.py 2>&1 \
      | tail -n 30 | tee "$out/tests.log"
fi

# 2. Render / fwd+bwd / fit-step / batch-of-8 timings, compile time, binning share, peak memory.
if wanted 2; then
  "$py" experiments/bench.py --configs=768x512:10000,768x512:70000 --backends=reference,pallas \
      --batch=8 --out="$out/bench.json" 2>&1 | tee "$out/bench.log"
fi

# 3. 50,000 paper steps at 70,000 Gaussians on one Kodak image, Pallas vs reference PSNR (#4).
#    DESIGN.md's reference figures are for kodim01: IMAGE=results/kodak/kodim01.png.
if wanted 3; then
  image=${IMAGE:-gi_jax/data/kodim23.png}
  for backend in pallas reference; do
    limited "$step_seconds" "$py" experiments/fit.py --image="$image" --num_gaussians=70000 \
        --steps=50000 --init=random --backend=$backend --out_dir="$out/fit_$backend" 2>&1 \
        | tail -n 8 | tee "$out/fit_$backend.log"
  done
fi

# 4. The codec on Kodak (#6): our settings (10,000 + 5,000 steps, images batched), RD against
#    JPEG/WebP/JPEG 2000/AVIF and the paper's points, encode seconds per image, one-file decode
#    and batched images/s (the device part from symbols, and the whole decode from bytes with
#    entropy decoding in one process per core), each rate point's files repeated to
#    DECODE_BATCH (256) per batch. Without KODAK the bundled sample is used. COMPRESS_FLAGS adds
#    compress.py flags, e.g.
#    "--codebook_sizes=16,32" with its own COMPRESS_DIR.
if wanted 4; then
  kodak=${KODAK:-}
  compress_dir=${COMPRESS_DIR:-results/gpu_compress}
  limited "$step_seconds" "$py" experiments/compress.py ${kodak:+--dataset="$kodak"} \
      --max_images=${MAX_IMAGES:-8} --out_dir="$compress_dir" \
      --decode_batch_size=${DECODE_BATCH:-256} ${COMPRESS_FLAGS:-} 2>&1 \
      | tail -n 25 \
      | tee "$out/compress.log"
  mkdir -p "$out/compress"
  cp "$compress_dir"/*.json "$compress_dir"/*.png "$out/compress/" 2>/dev/null
fi
