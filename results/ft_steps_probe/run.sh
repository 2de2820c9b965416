#!/usr/bin/env bash
# Longer fine-tuning at OURS's schedule (hold_cosine, 2·10⁻²): 2,000 against 4,000 steps from one
# fit per image and N (../ft_schedule_probe/probe.py, records.json here), on the CPU defaults'
# 1,000-step fits; then 2,000 + 2,000 steps. In the order it ran. To summarise:
#   .venv/bin/python results/ft_schedule_probe/paired.py results/ft_steps_probe/records.json \
#       hold_cosine:0.02:2000
# (with hold_cosine:0.02:4000 as the base for the 8,000-step runs at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
export RECORDS=results/ft_steps_probe/records.json
export VARIANTS=hold_cosine:0.02:2000,hold_cosine:0.02:4000
PROBE="${PYTHON:-.venv/bin/python} results/ft_schedule_probe/probe.py"
for im in kodim13 kodim23 kodim05; do $PROBE $im 3000; done
for im in kodim13 kodim23 kodim05; do $PROBE $im 800; done
for im in kodim23 kodim13; do $PROBE $im 9000; done
# Where the extra time goes instead into the fit: 2,000 + 2,000 steps (its own fit).
export VARIANTS=hold_cosine:0.02:2000 FIT_STEPS=2000
for n in 3000 800; do for im in kodim13 kodim23 kodim05; do $PROBE $im $n; done; done
# The same at N = 9,000 (a later session).
for im in kodim23 kodim13; do $PROBE $im 9000; done
# How far fine-tuning goes on paying: 8,000 steps from the same 1,000-step fits (a later session).
export VARIANTS=hold_cosine:0.02:8000 FIT_STEPS=1000
for n in 800 3000; do for im in kodim23 kodim13; do $PROBE $im $n; done; done
