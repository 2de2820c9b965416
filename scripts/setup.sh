#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 (JAX 0.11 needs it) and installs gi_jax with the test and plots
# extras (the experiments draw their figures with matplotlib).
# Idempotent: a second run only checks what is installed. Adds JAX's CUDA build when a GPU is seen.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local candidates=(python3.12 python3.13 python3)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12 "$(pyenv root)"/versions/3.13*/bin/python3.13)
  fi
  for py in "${candidates[@]}"; do
    if "$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  echo "error: need Python >= 3.12 (JAX 0.11); none found (tried ${candidates[*]})" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python)
  "$py" -m venv .venv
fi
extras="test,plots"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="test,plots,cuda"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
