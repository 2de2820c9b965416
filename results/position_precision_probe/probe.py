"""Would coarser positions for large Gaussians pay? An upper bound on the loss, from rounding.

Encodes an image with the codec's CPU defaults (``OURS``, 1,000 + 2,000 steps) once and keeps the
file (``files/<image>_<N>.gimg``; reused when present). Then, with no refitting, snaps the position
of every Gaussian whose smaller standard deviation is at least ``t`` pixels to a grid ``f`` times
coarser than the file's quarter-pixel grid, renders, and records the PSNR change beside the bits
such a rule would save. Positions cost their full grid entropy (the fitted Gaussians cover the
image nearly evenly, docs/codec_experiments.md), so a ``f`` times coarser grid saves ``2·log2 f``
bits per Gaussian moved; the decoder would know each Gaussian's step from its covariance codes,
so the rule needs no side information. Fine-tuning through the coarser grid would win back part
of the loss (the half-pixel row, ``t = 0, f = 2``, calibrates how much against quantizers.py's
fine-tuned figures).

Usage: .venv/bin/python results/position_precision_probe/probe.py kodim13 800
Appends one record per (image, N) to ``records.json`` beside this file.
"""
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gi_jax import codec, io, metrics  # noqa: E402
from gi_jax.codec import decoder  # noqa: E402
from gi_jax.codec.quantize import grid_means_raw  # noqa: E402

KODAK = os.environ.get("KODAK", os.path.join(HERE, "..", "..", "..", "shared", "data", "kodak"))
THRESHOLDS = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)   # smaller σ, pixels
FACTORS = (2, 4, 8)                                  # grid 0.5, 1, 2 px
SNAP_THRESHOLDS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
SCALED_FROM = (1.0, 2.0, 4.0)                        # σ0 of the growing steps


def main(name, n):
  image = io.load_image(os.path.join(KODAK, name + ".png"))
  h, w = image.shape[:2]
  path = os.path.join(HERE, "files", f"{name}_{n}.gimg")
  encode_seconds = None
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    steps, ft = codec.CPU_STEPS
    # Without wide positions (the default since): the probe measures what they would save.
    result = codec.encode_image(image, n, steps, ft,
                                settings=dataclasses.replace(codec.OURS, wide=None))
    encode_seconds = result.encode_seconds
    with open(path + ".tmp", "wb") as f:
      f.write(result.data)
    os.replace(path + ".tmp", path)
  data = open(path, "rb").read()
  decoded, info = codec.decode(data, backend="reference")
  q = info["quantized"]
  g = q.dequantize()
  cells = q.position_cells
  psnr = lambda rendered: float(metrics.psnr(io.quantize_8bit(rendered), image))  # as on disk
  base = psnr(decoded)

  def change_at(fine_codes):
    """PSNR change with the positions at these (possibly fractional) quarter-pixel cells."""
    means = grid_means_raw(jnp.asarray(fine_codes, jnp.float32), cells)
    return psnr(decoder.render_decoded(dataclasses.replace(g, means_raw=means), h, w,
                                       "reference")) - base

  a, b, c = np.asarray(g.covariance).T
  sigma_min = np.sqrt(np.maximum((a + c) / 2 - np.sqrt(((a - c) / 2) ** 2 + b * b), 0))
  codes = np.asarray(q.position_codes, np.int64)
  rows = []
  for t in THRESHOLDS:
    moved = sigma_min >= t
    for f in FACTORS:
      coarse = (codes // f) * f + (f - 1) / 2.0     # the coarse cell's centre, in fine cells
      saved = float(moved.sum() * 2 * np.log2(f))
      rows.append(dict(sigma_min=t, factor=f, moved=int(moved.sum()), saved_bits=saved,
                       saved_fraction=saved / (8 * len(data)),
                       psnr_change=change_at(np.where(moved[:, None], coarse, codes))))
  # Steps that grow with the Gaussian: ×2 from σ0, ×4 from 2σ0, ×8 from 4σ0 (factor 0 marks them).
  for s0 in SCALED_FROM:
    levels = np.clip(np.floor(np.log2(np.maximum(sigma_min, 1e-9) / s0)) + 1, 0, 3).astype(int)
    f = (1 << levels)[:, None]
    saved = float(2 * levels.sum())
    rows.append(dict(sigma_min=s0, factor=0, moved=int((levels > 0).sum()), saved_bits=saved,
                     saved_fraction=saved / (8 * len(data)),
                     psnr_change=change_at((codes // f) * f + (f - 1) / 2.0)))
  # The same rules as real files the current decoder reads: a moved Gaussian keeps the file's
  # quarter-pixel grid but takes the nearest cell ≡ 0 (mod f), and the file's own histograms pick
  # up the regularity; the bytes are measured, not estimated.
  assert codec.encode(q, h, w) == data  # like for like: the kept file re-encodes to itself
  snapped = []
  limit = np.asarray(cells, np.int64) - 1
  for t in SNAP_THRESHOLDS:
    moved = sigma_min >= t
    for f in (2, 4):
      new = np.minimum(f * np.floor(codes / f + 0.5).astype(np.int64), limit - limit % f)
      new = np.where(moved[:, None], new, codes)
      q2 = dataclasses.replace(q, position_codes=new.astype(np.uint16))
      data2 = codec.encode(q2, h, w)
      snapped.append(dict(sigma_min=t, factor=f, moved=int(moved.sum()), bytes=len(data2),
                          saved_fraction=1 - len(data2) / len(data), psnr_change=change_at(new)))
  record = dict(image=name, num_gaussians=n, bytes=len(data), bpp=8 * len(data) / (h * w),
                psnr=base, encode_seconds=encode_seconds,
                sigma_min_quantiles=dict(zip(("10", "25", "50", "75", "90"), np.percentile(
                    sigma_min, [10, 25, 50, 75, 90]).round(2).tolist())), rows=rows, snapped=snapped,
                when=time.strftime("%Y-%m-%d %H:%M"))
  out = os.path.join(HERE, "records.json")
  records = json.load(open(out)) if os.path.exists(out) else []
  records = [r for r in records if (r["image"], r["num_gaussians"]) != (name, n)] + [record]
  with open(out + ".tmp", "w") as f:
    json.dump(records, f, indent=1)
  os.replace(out + ".tmp", out)
  print(f"{name} N={n}: {len(data)} bytes, {base:.2f} dB, σ_min quantiles "
        f"{record['sigma_min_quantiles']}")
  for r in rows:
    print(f"  σ≥{r['sigma_min']:<4} ×{r['factor'] or '2,4,8'}: {r['moved']:5d} moved, "
          f"{100 * r['saved_fraction']:5.1f}% bits, {r['psnr_change']:+.3f} dB")
  for r in snapped:
    print(f"  snapped σ≥{r['sigma_min']:<4} ×{r['factor']}: {r['moved']:5d} moved, "
          f"{100 * r['saved_fraction']:5.1f}% bytes, {r['psnr_change']:+.3f} dB")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
