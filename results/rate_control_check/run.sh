#!/usr/bin/env bash
# gi-encode --bpp on images the rate model (gi_jax/codec/rate.py) was not fitted on: centred
# crops of three Kodak images at other sizes, and the bundled kodim23 at a rate between the
# fitted N. Writes the crops, the files and log.txt here (the log is what
# docs/codec_experiments.md quotes). `run.sh 2` encodes with --bpp_passes 2 instead (a second
# pass at the N the first file's size calls for) and logs to log_passes2.txt.
# Run from the repository root, after scripts/setup.sh. Wide positions are pinned off, as those
# logs were made before them (and OURS_RATE then had no wide factor); `run.sh 1 wide` encodes with
# the default's wide positions (where it has 100 pixels per Gaussian or more) and logs to
# log_wide.txt.
set -euo pipefail
source .venv/bin/activate
here=results/rate_control_check
passes=${1:-1}
if [[ $passes == 1 ]]; then log=$here/log.txt suffix=""; else
  log=$here/log_passes$passes.txt suffix=-p$passes; fi
wide=(--wide_sigma 0)
if [[ ${2:-} == wide ]]; then log=${log%.txt}_wide.txt suffix=$suffix-wide wide=(); fi
python - "$here" <<'PY'
import sys
from PIL import Image
for name, (w, h) in [("kodim05", (384, 384)), ("kodim15", (256, 256)), ("kodim20", (512, 320))]:
  image = Image.open(f"../shared/data/kodak/{name}.png")
  left, top = (image.width - w) // 2, (image.height - h) // 2
  image.crop((left, top, left + w, top + h)).save(f"{sys.argv[1]}/{name}_{w}x{h}.png")
PY
: > "$log"
for spec in "$here/kodim05_384x384:0.3" "$here/kodim15_256x256:0.5" "$here/kodim20_512x320:0.15" \
            "gi_jax/data/kodim23:0.25"; do
  image=${spec%%:*}; bpp=${spec##*:}
  gi-encode "$image.png" "$here/$(basename "$image")-$bpp$suffix.gimg" --bpp "$bpp" \
    --bpp_passes "$passes" "${wide[@]}" 2>&1 | grep -v "quick settings" | grep "gi-encode" |
    tee -a "$log"
done
