#!/usr/bin/env bash
# experiments/compress.py on Kodak one image at a time, in a given order, for runs that take
# several sessions: any prefix of the order is a set of complete images (every rate), and
# compress.py skips the records it already has, so running this again resumes. Output is
# appended to OUT/run.log. From the repo root:
#   bash scripts/kodak_by_image.sh OUT "01 03 23 ..." [compress.py flags]
# KODAK names the folder of kodimNN.png (default ../shared/data/kodak).
set -euo pipefail
out=$1
order=$2
shift 2
kodak=${KODAK:-../shared/data/kodak}
for i in $order; do
  one="$out/one/kodim$i"
  mkdir -p "$one"
  ln -sf "$(realpath "$kodak/kodim$i.png")" "$one/"
  echo "== kodim$i $(date -u +%FT%TZ)" >>"$out/run.log"
  .venv/bin/python experiments/compress.py --dataset="$one" --out_dir="$out" "$@" \
      >>"$out/run.log" 2>&1
done
