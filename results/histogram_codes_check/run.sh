#!/bin/bash
# The files are those of results/position_precision_probe/run.sh (default encodes of Kodak images
# at N = 800 and 3,000) and results/rate_control_check/run.sh (gi-encode --bpp on Kodak crops; not
# the -wide files of its `run.sh 1 wide`, made after this log).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python results/histogram_codes_check/reencode.py \
  results/position_precision_probe/files/*.gimg results/rate_control_check/*[0-9].gimg \
  | tee results/histogram_codes_check/log.txt
