"""Each fine-tuning variant against a base variant, pair by pair (same image and N; the same fit
where the fit steps agree), from a probe.py records file. A variant is
schedule:learning_rate:finetune_steps[:fit_steps] (fit steps 1,000 unless named). Gains in
PSNR after colour refinement, in file bytes, and in dB at equal rate (the difference of
``OURS.rd_score``); the fine-tuning's time against the base's, and the variant's fit time where
recorded.

  python paired.py                     # records.json here, against paper:0.01:2000 (the old OURS)
  python paired.py ../ft_steps_probe/records.json hold_cosine:0.02:2000
"""
import json
import os
import sys

import numpy as np

from gi_jax.codec import OURS

HERE = os.path.dirname(os.path.abspath(__file__))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "records.json")
schedule, lr, steps, *fit_steps = (sys.argv[2] if len(sys.argv) > 2
                                   else "paper:0.01:2000").split(":")
BASE = (schedule, float(lr), int(steps), int(fit_steps[0]) if fit_steps else 1_000)
records = json.load(open(path))["records"]
groups = {}
for r in records:
  variant = (r["schedule"], r["learning_rate"], r["finetune_steps"], r["steps"])
  groups.setdefault((r["image"], r["num_gaussians"]), {})[variant] = r
variants = sorted({v for g in groups.values() for v in g} - {BASE})
label = lambda v: f"{v[0]} lr {v[1]:g}, {v[3]} + {v[2]} steps"  # fit + fine-tuning steps
for variant in variants:
  rows = [(key, g[BASE], g[variant])
          for key, g in sorted(groups.items(), key=lambda kv: kv[0][::-1])
          if BASE in g and variant in g]
  if not rows:
    continue
  print(f"\n{label(variant)} against {label(BASE)}")
  print("image     N      dPSNR   dbytes   dB at equal rate   best step   fine-tuning time ratio"
        "   fit s")
  gains = []
  for (image, n), base, other in rows:
    d_psnr = other["psnr"] - base["psnr"]
    d_bytes = other["bytes"] / base["bytes"] - 1
    gain = OURS.rd_score(other["psnr"], other["bytes"]) - OURS.rd_score(base["psnr"], base["bytes"])
    gains.append(gain)
    print(f"{image}  {n:5d}  {d_psnr:+.3f}  {100 * d_bytes:+.2f}%  {gain:+.3f}  "
          f"{base['best_step']} -> {other['best_step']}  "
          f"{other['finetune_seconds'] / base['finetune_seconds']:.2f}  "
          f"{other.get('fit_seconds') or float('nan'):.0f}")
  gains = np.array(gains)
  print(f"{len(gains)} pairs: mean {gains.mean():+.3f} dB, median {np.median(gains):+.3f}, "
        f"min {gains.min():+.3f}, max {gains.max():+.3f}, {(gains > 0).sum()} better")
