#!/usr/bin/env bash
# Coarser positions for large Gaussians, as an upper bound on the loss from rounding alone
# (probe.py; its files/ are kept, so a rerun only re-measures). kodim04 and kodim08 were added
# in a later session. Then (prints docs/codec_experiments.md's table rows last):
#   .venv/bin/python results/position_precision_probe/summary.py
set -euo pipefail
cd "$(dirname "$0")/../.."
for n in 800 3000; do for im in kodim23 kodim13 kodim04 kodim08; do
  "${PYTHON:-.venv/bin/python}" results/position_precision_probe/probe.py $im $n
done; done
