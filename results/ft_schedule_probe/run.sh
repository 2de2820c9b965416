#!/usr/bin/env bash
# The fine-tuning schedule probe behind docs/codec_experiments.md's paragraph (probe.py: one fit
# per image and N, then each schedule:lr variant fine-tuned, refined and encoded from it;
# resumable). In the order it ran; paired.py summarises records.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROBE="${PYTHON:-.venv/bin/python} results/ft_schedule_probe/probe.py"
VARIANTS=paper:0.01,hold_cosine:0.01,cosine:0.01,hold_cosine:0.02 $PROBE kodim23 800
export VARIANTS=paper:0.01,paper:0.02,hold_cosine:0.02,paper:0.03,hold_cosine:0.03,hold_cosine:0.05
$PROBE kodim23 800,5000
export VARIANTS=paper:0.01,hold_cosine:0.02,paper:0.02
for im in kodim01 kodim13 kodim05; do $PROBE $im 800,5000; done
export VARIANTS=paper:0.01,hold_cosine:0.02
$PROBE kodim23 9000
$PROBE kodim01 9000
for im in kodim03 kodim06 kodim11 kodim16 kodim21 kodim02; do $PROBE $im 3000; done
