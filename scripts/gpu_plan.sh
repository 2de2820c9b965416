#!/usr/bin/env bash
# The GPU plan: what a session lent a GPU measures first, in one device call of at most 8 minutes
# (the lease is 15 minutes, machine start included). Here, first:
#   bash scripts/device_wheels.sh                      # wheels the device image lacks, into .whl
#   mkdir -p results/kodak && cp ../shared/data/kodak/*.png results/kodak/
# then one `run` with timeout_s 540 and carry [".whl", "results/kodak"]:
#   bash scripts/gpu_plan.sh "$OUT"
# Each phase runs under its own time limit (seconds, overridable by its variable) and writes its
# own log, so whatever is cut short still comes back; headline figures come first:
#   smoke (SMOKE_S 45)  the compiled kernels against the reference at 768×512 with 10,000 and
#                       70,000 Gaussians (scripts/gpu_smoke.py; image and gradients), and the
#                       tile lists' kernel against the packed lists (same pairs, same bits)
#   bench (BENCH_S 100) 768×512 with 70,000 then 10,000 Gaussians, Pallas: render FPS with fresh
#                       and with reused binning, forward+backward, fit step binning every step and
#                       reusing it, batch of 8, peak memory, compile time
#   fit   (FIT_S 150)   one 50,000-step fit of kodim01 with 70,000 Gaussians (paper settings):
#                       wall time, PSNR, peak memory (results.json)
#   ab    (AB_S 110)    the fit step at 70,000 under each XLA loop variant (default; command
#                       buffers capturing while loops and conditionals) × unroll 1 and 8
#   tests (TESTS_S 60)  the kernel, render, binning and channel-count render tests, compiled for
#                       the GPU
#   sweep (SWEEP_S 150) the Pallas kernels' launch shapes (G and warps of forward and backward,
#                       stages) at 768×512 with 70,000 Gaussians: renders and forward+backward
#                       per shape (not in the default phases: PHASES=sweep, a second call)
#   kodak (KODAK_S 480) the paper's Table 1 at 70,000 on every image in $KODAK, one image at a
#                       time, so a call cut short loses only the fit in flight (resumable: run
#                       PHASES=kodak again in later calls until done)
#   kodak_best (KODAK_BEST_S 480) the same with the best recipe, for the 70,000-Gaussian record
#                       (45.40 dB to beat; resumable like kodak)
#   table1 (TABLE1_S 480) Table 1 against SIREN, WIRE, Instant-NGP and 3D-GS on 4 Kodak crops
#                       (256×256, each 50,000 steps; resumable: PHASES=table1, again
#                       until done; about 400 s per image is a guess)
# PHASES picks and orders phases (default "smoke bench fit ab tests"). Back in $OUT: one log per
# phase, machine.log, and gpu_plan.tgz (the JSON records: bench, ab, sweep, fit, kodak, kodak_best).
# A later call starts on a bare machine: to resume a phase there, unpack the last gpu_plan.tgz at
# the repository root here (it holds results/gpu_plan) and add "results/gpu_plan" to carry.
set -uo pipefail
out=${1:?usage: gpu_plan.sh OUT_DIR}
mkdir -p "$out"
source scripts/device_env.sh
kodak=${KODAK:-results/kodak}
run=${RUN_DIR:-results/gpu_plan}
mkdir -p "$run"
{ nvidia-smi; "$py" -c 'import jax; print(jax.__version__, jax.devices())'; } > "$out/machine.log" 2>&1

for phase in ${PHASES:-smoke bench fit ab tests}; do
  start=$SECONDS
  case $phase in
    smoke)
      limited "${SMOKE_S:-45}" "$py" scripts/gpu_smoke.py 10000 70000 ;;
    bench)
      limited "${BENCH_S:-100}" "$py" experiments/bench.py --configs=768x512:70000,768x512:10000 \
          --backends=pallas --batch=8 --out="$run/bench.json" ;;
    fit)
      limited "${FIT_S:-150}" "$py" experiments/fit.py --image="$kodak/kodim01.png" \
          --num_gaussians=70000 --steps=50000 --recipe=paper --backend=pallas \
          --out_dir="$run/fit" ;;
    ab)
      limited "${AB_S:-110}" "$py" experiments/bench.py --configs=768x512:70000 \
          --backends=pallas --xla_variants=default,graphs --unroll=1,8 --repeats=20 \
          --out="$run/ab.json" ;;
    tests)
      # tests/conftest.py picks the CPU unless told otherwise.
      limited "${TESTS_S:-60}" env JAX_PLATFORMS=cuda "$py" -m pytest -q -x -p no:cacheprovider \
          --durations=5 tests/pallas tests/test_render.py tests/test_binning.py \
          tests/test_channels.py::test_render_and_gradients_match_the_dense_oracle ;;
    sweep)
      limited "${SWEEP_S:-150}" "$py" experiments/bench.py --configs=768x512:70000 \
          --kernel_settings=32x4/16x8,16x4/16x8,64x8/16x8,32x8/16x8,32x4/32x8,32x4/16x4,32x4/8x4,32x4/16x8/2 \
          --repeats=20 --out="$run/sweep.json" ;;
    kodak | kodak_best)
      if [ "$phase" = kodak ]; then recipe=paper seconds=${KODAK_S:-480}
      else recipe=best seconds=${KODAK_BEST_S:-480}; fi
      limited "$seconds" "$py" experiments/fit.py --dataset="$kodak" --num_gaussians=70000 \
          --steps=50000 --recipe="$recipe" --backend=pallas --batch_size=1 \
          --out_dir="$run/$phase" ;;
    table1)
      limited "${TABLE1_S:-480}" "$py" experiments/table1.py --dataset="$kodak" --max_images=4 \
          --crop=256 --scale_by_area --gs3d_gaussians=10000 --init=random --learning_rate=0.001 \
          --lr_schedule=paper --backend=pallas \
          --steps=gaussianimage:50000,siren:50000,wire:50000,instant_ngp:50000,gs3d:50000 \
          --out_dir="$run/table1" ;;
    *) echo "unknown phase $phase" >&2; continue ;;
  esac > "$out/$phase.log" 2>&1
  echo "$phase: exit $? after $((SECONDS - start)) s" | tee -a "$out/machine.log"
done

tar czf "$out/gpu_plan.tgz" --exclude='*.npz' --exclude='*.png' --exclude='.xla_cache' "$run" \
    2>/dev/null
ls -l "$out"
tail -n 25 "$out"/bench.log "$out"/ab.log 2>/dev/null
grep -h "psnr\|PSNR\|fit_seconds" "$out"/fit.log 2>/dev/null | tail -n 5
exit 0
