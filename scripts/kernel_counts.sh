#!/usr/bin/env bash
# bench.py --structure with the kernels a GPU would launch, on any machine: installs JAX's CUDA
# plugin of the installed JAX's version (no CUDA libraries, no driver) into .cuda_aot once, then
# compiles each program for an H100 here (experiments/kernel_count.py). Extra arguments go to
# bench.py, e.g. --configs=768x512:70000 --out=results/structure.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
version=$(.venv/bin/python -c "import jax; print(jax.__version__)")
if [ "$(cat .cuda_aot/VERSION 2>/dev/null)" != "$version" ]; then
  rm -rf .cuda_aot
  .venv/bin/python -m pip install -q --no-deps --target .cuda_aot \
    "jax-cuda12-plugin==$version" "jax-cuda12-pjrt==$version"
  echo "$version" > .cuda_aot/VERSION
fi
JAX_PLATFORMS=cpu PYTHONPATH=.cuda_aot exec .venv/bin/python experiments/bench.py --structure "$@"
