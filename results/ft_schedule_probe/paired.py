"""Each fine-tuning variant against the paper's schedule at lr 0.01 (the old OURS), pair by pair
(same image, N and fit), from records.json (probe.py). Gains in PSNR after colour refinement, in
file bytes, and in dB at equal rate (the difference of ``OURS.rd_score``)."""
import json
import os

import numpy as np

from gi_jax.codec import OURS

HERE = os.path.dirname(os.path.abspath(__file__))
records = json.load(open(os.path.join(HERE, "records.json")))["records"]
BASE = ("paper", 0.01)
groups = {}
for r in records:
  groups.setdefault((r["image"], r["num_gaussians"]), {})[(r["schedule"], r["learning_rate"])] = r
variants = sorted({v for g in groups.values() for v in g} - {BASE})
for variant in variants:
  rows = [(key, g[BASE], g[variant]) for key, g in sorted(groups.items(), key=lambda kv: kv[0][::-1])
          if BASE in g and variant in g]
  if not rows:
    continue
  print(f"\n{variant[0]} lr {variant[1]:g} against paper lr 0.01")
  print("image     N      dPSNR   dbytes   dB at equal rate   best step")
  gains = []
  for (image, n), base, other in rows:
    d_psnr = other["psnr"] - base["psnr"]
    d_bytes = other["bytes"] / base["bytes"] - 1
    gain = OURS.rd_score(other["psnr"], other["bytes"]) - OURS.rd_score(base["psnr"], base["bytes"])
    gains.append(gain)
    print(f"{image}  {n:5d}  {d_psnr:+.3f}  {100 * d_bytes:+.2f}%  {gain:+.3f}  "
          f"{base['best_step']} -> {other['best_step']}")
  gains = np.array(gains)
  print(f"{len(gains)} pairs: mean {gains.mean():+.3f} dB, median {np.median(gains):+.3f}, "
        f"min {gains.min():+.3f}, max {gains.max():+.3f}, {(gains > 0).sum()} better")
