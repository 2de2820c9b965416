"""docs/codec_experiments.md's rows of the 2,000-step run against results/kodak_full, one per
image in run order: PSNR and size changes at the four N, the quantization loss (fit - file) range,
best steps."""
import json
ORDER = "01 03 23 06 11 16 21 02 07 12 17 22 04 09 14 19 24 05 10 15 20 08 13 18".split()
COUNTS = (800, 3000, 5000, 9000)
load = lambda d: {(r['image'], r['nominal_gaussians']): r for r in
                  json.load(open(f'results/{d}/records.json'))['records'] if r['codec'] == 'ours'}
base, long = load('kodak_full'), load('kodak_ft2000')
sign = lambda s: s.replace('-', '−')
for i in ORDER:
  keys = [(f'kodim{i}.png', n) for n in COUNTS]
  if not all(k in long for k in keys):
    continue
  pairs = [(base[k], long[k]) for k in keys]
  dp = ', '.join(f"{b['psnr'] - a['psnr']:+.2f}" for a, b in pairs)
  dr = ', '.join(f"{100 * (b['bytes'] / a['bytes'] - 1):+.1f}" for a, b in pairs)
  loss = lambda r: r['fit_psnr'] - r['psnr']
  lo = ', '.join(f"{loss(a):.2f} → {loss(b):.2f}" for a, b in pairs)
  steps = min(b['best_step'] for _, b in pairs)
  print(sign(f"| kodim{i} | {dp} | {dr} | {lo} | ≥ {steps} |"))
