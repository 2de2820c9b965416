"""Fits gi_jax.codec.rate's model of a file's size to the files of a compress.py run.

  python experiments/fit_rate_model.py --records=OUT_DIR/records.json

bits(N) = fixed_bits + N·(bits_per_gaussian + position_bits·log2(H·W/N)), least squares on bits.
Prints the constants and how far the model is off per N, both the fitted one and the library's
(without wide positions: run it on files made with ``--wide_sigma=0``); then how far the library's
model corrected by an image's file at one N (``RateModel.corrected``) is off at the next N.
``codec.rate.OURS_RATE`` holds the constants fitted to the 96 files of the 24-image Kodak run at
the CPU steps (N = 800, 3,000, 5,000, 9,000): ``tests/fixtures/rate_model_files.json`` keeps their
sizes, ``git show de1c395:results/kodak_ft_default/records.json`` the whole records.
"""
import dataclasses
import json

from absl import app, flags
import numpy as np

from gi_jax.codec import OURS, rate

_RECORDS = flags.DEFINE_string("records", None, "A compress.py records.json.", required=True)

# These files were made without wide positions: the model without them (OURS_RATE scales it by
# rate.WIDE_FACTOR where they apply).
MODEL = rate.rate_model(dataclasses.replace(OURS, wide=None))


def main(argv):
  del argv
  with open(_RECORDS.value) as f:
    records = [r for r in json.load(f)['records'] if r['codec'] == 'ours']
  report(records)


def report(records):
  """Prints the fitted constants and the library model's errors for ``records``."""
  n = np.array([r['num_gaussians'] for r in records], float)
  area = np.array([r['height'] * r['width'] for r in records], float)
  bits = np.array([8 * r['bytes'] for r in records], float)
  (fixed, per_gaussian, position), *_ = np.linalg.lstsq(
      np.stack([np.ones_like(n), n, n * np.log2(area / n)], 1), bits, rcond=None)
  pixels = area / n
  print(f'{len(records)} files: fixed_bits={fixed:.1f}, bits_per_gaussian={per_gaussian:.2f}, '
        f'position_bits={position:.3f}, measured_pixels_per_gaussian='
        f'({np.floor(10 * pixels.min()) / 10:.1f}, {np.ceil(10 * pixels.max()) / 10:.1f})')
  library = np.array([MODEL.bits(int(k), r['height'], r['width'])
                      for k, r in zip(n, records)])
  error = 100 * (library / bits - 1)
  print(f'the model off by {np.median(abs(error)):.1f}% at the median, {abs(error).max():.1f}% at '
        'most')
  for count in sorted(set(n)):
    e = error[n == count]
    print(f'  N = {count:5.0f}: {e.min():+.1f}% to {e.max():+.1f}%')

  # RateModel.corrected: the model scaled by one N's file, predicting the same image's file at the
  # next N (what gi-encode --bpp_passes 2 relies on), for the images of the first record's size.
  bits_of = {(r['image'], r['num_gaussians']): 8 * r['bytes'] for r in records}
  height, width = records[0]['height'], records[0]['width']
  counts = sorted({r['num_gaussians'] for r in records})
  print('corrected by one N, predicting the next (|error|, median and largest):')
  for a, b in zip(counts, counts[1:]):
    images = sorted(i for i, k in bits_of if k == a and (i, b) in bits_of)
    plain = [abs(MODEL.bits(b, height, width) / bits_of[i, b] - 1) for i in images]
    fixed = [abs(MODEL.corrected(bits_of[i, a], a, height, width).bits(b, height, width)
                 / bits_of[i, b] - 1) for i in images]
    print(f'  N = {a:5d} -> {b:5d}: model {100 * np.median(plain):.2f}% / {100 * max(plain):.2f}%, '
          f'corrected {100 * np.median(fixed):.2f}% / {100 * max(fixed):.2f}%')


if __name__ == "__main__":
  app.run(main)
