"""Straight-through against exact clip gradient, image by image, from results.json (run.sh)."""
import json
import numpy as np
records = json.load(open('results/clip_gradient_kodak/results.json'))['records']
by_image = {}
for r in records:
  by_image.setdefault(r['image'], {})[r['clip_gradient']] = r
pairs = [(name, v['exact'], v['straight_through']) for name, v in sorted(by_image.items())
         if len(v) == 2]
print('image          exact    straight  dPSNR')
for name, exact, straight in pairs:
  print(f"{name:12s} {exact['psnr']:7.3f}  {straight['psnr']:7.3f}  "
        f"{straight['psnr'] - exact['psnr']:+.3f}")
d_psnr = np.array([s['psnr'] - e['psnr'] for _, e, s in pairs])
for field in ('psnr', 'ms_ssim'):
  print(f"mean {field}: exact {np.mean([e[field] for _, e, _ in pairs]):.4f}  "
        f"straight-through {np.mean([s[field] for _, _, s in pairs]):.4f}")
print(f'{len(pairs)} images: dPSNR mean {d_psnr.mean():+.3f}, median {np.median(d_psnr):+.3f}, '
      f'min {d_psnr.min():+.3f}, max {d_psnr.max():+.3f}, {(d_psnr > 0).sum()} better')
