"""Two Kodak runs of experiments/compress.py, image by image (default: this 2,000-step fine-tuning
run against results/kodak_full's 500 steps; or ``paired.py BASE NEW``, folder names under
results/): PSNR and size changes at each N on the images NEW has done so far, the change in dB at
equal rate (``OURS.rd_score``), whether the pair's fits agree, and the mean
curve of BASE (all its images) moved by the mean changes (PSNR added, bpp scaled) -> an estimated
BD-rate against the paper, with a bootstrap over NEW's complete images."""
import json
import sys

import numpy as np

from gi_jax import codec

PAPER = ([0.120, 0.148, 0.431, 0.717, 1.000, 1.285], [24.71, 25.07, 27.41, 28.75, 29.66, 30.50])
COUNTS = [800, 3000, 5000, 9000]
load = lambda d: {(r['image'], r['nominal_gaussians']): r for r in
                  json.load(open(f'results/{d}/records.json'))['records'] if r['codec'] == 'ours'}
if len(sys.argv) not in (1, 3):
  sys.exit('usage: paired.py [BASE NEW]  (folder names under results/)')
base_dir, new_dir = sys.argv[1:] or ('kodak_full', 'kodak_ft2000')
base, new = load(base_dir), load(new_dir)
print(f'{new_dir} against {base_dir}')
print('image        N    dPSNR   dbytes  equal rate  fit dPSNR  best step  encode s')
d_psnr, d_rate, gains = {n: [] for n in COUNTS}, {n: [] for n in COUNTS}, []
for key in sorted(new, key=lambda k: (k[0], k[1])):
  a, b = base[key], new[key]
  d_psnr[key[1]].append(b['psnr'] - a['psnr'])
  d_rate[key[1]].append(b['bytes'] / a['bytes'] - 1)
  gains.append(codec.OURS.rd_score(b['psnr'], b['bytes'])
               - codec.OURS.rd_score(a['psnr'], a['bytes']))
  print(f'{key[0]:12s} {key[1]:5d} {d_psnr[key[1]][-1]:+.2f} dB {100 * d_rate[key[1]][-1]:+5.1f}%  '
        f"{gains[-1]:+.2f} dB   {b['fit_psnr'] - a['fit_psnr']:+.4f}    "
        f"{a['best_step']} -> {b['best_step']}  {a['encode_seconds']:.0f} -> "
        f"{b['encode_seconds']:.0f}")
if gains:
  print(f'{len(gains)} pairs at equal rate: mean {np.mean(gains):+.3f} dB, median '
        f'{np.median(gains):+.3f}, min {np.min(gains):+.3f}, max {np.max(gains):+.3f}, '
        f'{sum(g > 0 for g in gains)} better')
rate = [np.mean([r['bpp'] for k, r in base.items() if k[1] == n]) for n in COUNTS]
psnr = [np.mean([r['psnr'] for k, r in base.items() if k[1] == n]) for n in COUNTS]
print(f'{base_dir} ({len(base) // len(COUNTS)} images) vs paper: '
      f'{codec.bd_rate(*PAPER, rate, psnr):+.1f}%')
print('mean changes (images): ' + ', '.join(
    f'N={n}: {np.mean(d_psnr[n]):+.2f} dB {100 * np.mean(d_rate[n]):+.1f}% ({len(d_psnr[n])})'
    for n in COUNTS if d_psnr[n]))
if all(d_psnr[n] for n in COUNTS):
  moved_rate = [r * (1 + np.mean(d_rate[n])) for r, n in zip(rate, COUNTS)]
  moved_psnr = [p + np.mean(d_psnr[n]) for p, n in zip(psnr, COUNTS)]
  print(f'moved by the mean changes: {codec.bd_rate(*PAPER, moved_rate, moved_psnr):+.1f}%')
  # How much the estimate depends on which images were measured: resample the complete images.
  done = sorted({k[0] for k in new if all((k[0], n) in new for n in COUNTS)})
  rng, boot = np.random.default_rng(0), []
  for _ in range(2000):
    pick = rng.choice(done, len(done))
    dp = [np.mean([new[(i, n)]['psnr'] - base[(i, n)]['psnr'] for i in pick]) for n in COUNTS]
    dr = [np.mean([new[(i, n)]['bytes'] / base[(i, n)]['bytes'] for i in pick]) for n in COUNTS]
    boot.append(codec.bd_rate(*PAPER, [r * f for r, f in zip(rate, dr)],
                              [p + d for p, d in zip(psnr, dp)]))
  print(f'bootstrap over the {len(done)} complete images: 5-95% '
        f'{np.percentile(boot, 5):+.1f}% to {np.percentile(boot, 95):+.1f}%')
