"""The per-image codebook choice against always 2 × 16 and always 2 × 32, from the candidates each
record of results/kodak_codebook_choice lists (both fine-tuned from the same fit): per image and N,
the kept size and each candidate's PSNR and bytes; the change at equal rate (``OURS.rd_score``);
and the BD-rate of the mean curves (needs two or more N)."""
import json

import numpy as np

from gi_jax import codec

records = [r for r in json.load(open('results/kodak_codebook_choice/records.json'))['records']
           if r['codec'] == 'ours']
by_size = lambda r: {c['codebook_size']: c for c in r['candidates']}
print('image        N     2x16 bytes, dB    2x32 bytes, dB    kept  32 at equal rate')
gains = []
for r in sorted(records, key=lambda r: (r['nominal_gaussians'], r['image'])):
  c = by_size(r)
  gains.append(codec.OURS.rd_score(c[32]['psnr'], c[32]['num_bytes'])
               - codec.OURS.rd_score(c[16]['psnr'], c[16]['num_bytes']))
  print(f"{r['image']:12s} {r['nominal_gaussians']:5d} {c[16]['num_bytes']:7d} {c[16]['psnr']:6.2f}"
        f"    {c[32]['num_bytes']:7d} {c[32]['psnr']:6.2f}    {r['kept_codebook_size']:4d}"
        f"  {gains[-1]:+.2f} dB")
images = sorted({r['image'] for r in records})
counts = sorted({r['nominal_gaussians'] for r in records})
complete = [i for i in images
            if {r['nominal_gaussians'] for r in records if r['image'] == i} == set(counts)]
print(f'{len(records)} records, {len(complete)} images at every N; 2 x 32 kept in '
      f"{sum(r['kept_codebook_size'] == 32 for r in records)}; 32 better at equal rate in "
      f'{sum(g > 0 for g in gains)}')


def curve(pick):
  """Mean bpp and PSNR per N over the complete images, taking ``pick(record)``'s candidate."""
  rows = [[r for r in records if r['image'] in complete and r['nominal_gaussians'] == n]
          for n in counts]
  bpp = [np.mean([8 * pick(r)['num_bytes'] / (r['height'] * r['width']) for r in row])
         for row in rows]
  return bpp, [np.mean([pick(r)['psnr'] for r in row]) for row in rows]


if len(counts) >= 2 and complete:
  always16 = curve(lambda r: by_size(r)[16])
  always32 = curve(lambda r: by_size(r)[32])
  chosen = curve(lambda r: by_size(r)[r['kept_codebook_size']])
  print(f'BD-rate against always 2 x 16: choice {codec.bd_rate(*always16, *chosen):+.1f}%, '
        f'always 2 x 32 {codec.bd_rate(*always16, *always32):+.1f}%')
