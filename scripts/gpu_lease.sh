#!/usr/bin/env bash
# What matters most on a GPU, in one device call for a session with 15 minutes of device time
# (machine start included; the H200's took about 30 s): about 9½ minutes of work, each phase
# stopped at its own limit so the logs always come back. Here, first: bash
# scripts/device_wheels.sh, and copy eight Kodak images (compress.py batches them):
#   mkdir -p results/kodak && cp ../shared/data/kodak/kodim0[1-8].png results/kodak/
# then one `run` with timeout_s 600 and carry [".whl", "results/kodak"]:
#   bash scripts/gpu_lease.sh "$OUT"
# Phases, in this order (limits in seconds, overridable: SMOKE_S CODEC_S BENCH_S TESTS_S):
#   smoke  the compiled kernels against the reference at 768×512 (scripts/gpu_smoke.py); if they
#          fail, the codec falls back to the reference backend;
#   codec  compress.py on the eight images with the default steps (10,000 + 5,000), batched
#          (seven landscape images in one batch, kodim04 alone), at COUNTS (default 9000,800:
#          5,000 was measured on 2026-12-04): encode seconds per image, PSNR, bpp, decode rates
#          (one file; batched device part; whole decode from bytes);
#   bench  experiments/bench.py at 768×512 with 70,000 Gaussians, both backends, batch 8;
#   tests  tests/test_pallas.py and test_render.py, which compile the kernels on a GPU.
# $OUT gets one log per phase and gpu_lease.tgz (bench.json, records.json, rd.png). Figures of
# earlier runs: results/gpu_h200_2026-12-04/NOTES.md.
#
# PLAN=rd instead runs issue 6's Kodak RD at the GPU steps: all images in $KODAK (copy all 24)
# at COUNTS (default 800,3000,5000,9000, the CPU run's), batched, the classic codecs' records
# taken from the CPU run (results/kodak_ft_default/records.json: Pillow's output does not depend
# on the machine); RD plot and BD-rates in one summary. It may not fit one call: split the counts
# over two, the second resuming the first's records and files (they come back in the .tgz):
#   call 1: PLAN=rd COUNTS=800,3000 bash scripts/gpu_lease.sh "$OUT"
#   here:   tar xzf <files_at>/gpu_lease.tgz   (restores results/gpu_lease/rd)
#   call 2: PLAN=rd BACKEND=<call 1's> COUNTS=800,3000,5000,9000 bash scripts/gpu_lease.sh "$OUT"
#           with "results/gpu_lease" added to carry. BACKEND skips the smoke check.
# Phase limit CODEC_S (default 540 s); records are saved one by one, so a cut run resumes.
# FLAGS adds compress.py flags to either plan: e.g. FLAGS=--wide_sigma=0 with RUN_DIR set apart
# (and COUNTS=800,3000) measures the defaults' pair without wide positions at the GPU steps, whose
# threshold (100 pixels per Gaussian) was measured at the CPU steps.
set -uo pipefail
out=${1:?usage: gpu_lease.sh OUT_DIR}
mkdir -p "$out"
source scripts/device_env.sh
kodak=${KODAK:-results/kodak}
run=${RUN_DIR:-results/gpu_lease}
mkdir -p "$run"
{ nvidia-smi; "$py" -c 'import jax; print(jax.__version__, jax.devices())'; } > "$out/machine.log" 2>&1

backend=${BACKEND:-}
if [[ -z $backend ]]; then
  backend=auto
  limited "${SMOKE_S:-40}" "$py" scripts/gpu_smoke.py 5000 70000 2>&1 | tee "$out/smoke.log" \
      || backend=reference
fi
echo "codec backend: $backend" | tee -a "$out/smoke.log"

if [[ ${PLAN:-checks} == rd ]]; then
  limited "${CODEC_S:-540}" "$py" experiments/compress.py --dataset="$kodak" \
      --num_gaussians="${COUNTS:-800,3000,5000,9000}" --progress --backend="$backend" \
      --classic_from=results/kodak_ft_default/records.json --out_dir="$run/rd" \
      --decode_batch_size=256 ${FLAGS:-} > "$out/codec.log" 2>&1
  archive=("$run/rd")  # with its files, for a second call to resume
  logs=()
else
  limited "${CODEC_S:-330}" "$py" experiments/compress.py --dataset="$kodak" --max_images=8 \
      --num_gaussians="${COUNTS:-9000,800}" --noclassic --progress --backend="$backend" \
      --out_dir="$run/codec" --decode_batch_size=256 ${FLAGS:-} > "$out/codec.log" 2>&1

  limited "${BENCH_S:-110}" "$py" experiments/bench.py --configs=768x512:70000 \
      --backends=pallas,reference --batch=8 --out="$run/bench.json" > "$out/bench.log" 2>&1

  limited "${TESTS_S:-60}" "$py" -m pytest -q -x -p no:cacheprovider -n 4 --durations=5 \
      tests/test_pallas.py tests/test_render.py > "$out/tests.log" 2>&1
  archive=(--exclude='*.gimg' "$run")
  logs=("$out/bench.log" "$out/tests.log")
fi

tar czf "$out/gpu_lease.tgz" "${archive[@]}" 2>/dev/null
ls -l "$out"
grep -v '^fit\|^finetune\|^  File\|^    ' "$out/codec.log" | tail -n 30
(( ${#logs[@]} )) && tail -n 4 "${logs[@]}"
exit 0
