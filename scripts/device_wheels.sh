#!/usr/bin/env bash
# Wheels of the dependencies that the device machine's image lacks (it has JAX, optax, chex,
# absl-py, Pillow, matplotlib, sortedcontainers, pytest and hypothesis, and no network), for
# scripts/gpu_plan.sh to install there. Run here, from the repo root, then name `.whl` (ignored)
# in the device call's `carry`. Versions match the ones the tests run with (the file format
# relies on constriction's model quantization).
set -euo pipefail
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    constriction==0.5.0 dm-pix==0.4.5 pypng==0.20220715.0
ls -l .whl
