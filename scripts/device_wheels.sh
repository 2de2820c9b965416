#!/usr/bin/env bash
# Wheels of the dependencies that the device machine's image lacks (it has JAX, optax, chex,
# absl-py, Pillow, matplotlib, sortedcontainers, pytest and hypothesis, and no network), for
# scripts/gpu_plan.sh to install there. Run here, from the repo root, then name `.whl` (ignored)
# in the device call's `carry`. Versions match the ones the tests run with (the file format
# relies on constriction's model quantization). flax and what `import flax.linen` loads (msgpack,
# PyYAML, rich and its markdown-it-py, mdurl, Pygments) are for gi_jax.baselines
# (experiments/table1.py).
set -euo pipefail
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    constriction==0.5.0 dm-pix==0.4.5 pypng==0.20220715.0 \
    flax==0.12.12 msgpack==1.2.4 PyYAML==6.0.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
    Pygments==2.21.0
ls -l .whl
