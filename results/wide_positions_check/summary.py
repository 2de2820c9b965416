"""Prints the paired rows of docs/codec_experiments.md's wide-positions table: bytes and PSNR with
and without the rule, and the change at equal rate, valuing the bytes at each image's RD slope
(dB per doubling of the file, from results/kodak_ft_default: at each N the mean of the chords to
its neighbours among 800, 3,000, 5,000 and 9,000, the one chord at the ends). Then per N the mean
change and how many pairs gain, the median size ratio (codec.rate.WIDE_FACTOR), and the BD-rate
of the wide files' mean curve against the others' over the N every image has."""
import json
import math
import os

import numpy as np

from gi_jax import codec

HERE = os.path.dirname(os.path.abspath(__file__))


def slopes():
  with open(os.path.join(HERE, "..", "kodak_ft_default", "records.json")) as f:
    records = [r for r in json.load(f)["records"] if r["codec"] == "ours"]
  points = {}
  for r in records:
    points.setdefault(r["image"], {})[r["num_gaussians"]] = (r["bpp"], r["psnr"])
  out = {}
  for image, p in points.items():
    counts = sorted(p)
    chords = [(p[b][1] - p[a][1]) / math.log2(p[b][0] / p[a][0])
              for a, b in zip(counts, counts[1:])]
    for i, n in enumerate(counts):
      near = chords[max(i - 1, 0):i + 1]
      out[image, n] = sum(near) / len(near)
  return out


def ours(name):
  with open(os.path.join(HERE, name)) as f:
    return {(r["image"], r["num_gaussians"]): r for r in json.load(f)["records"]
            if r["codec"] == "ours"}


def equal_rate_gain(plain, wide, slope):
  """The wide file's PSNR minus the plain one's at equal rate: the bytes it saves valued at
  ``slope`` dB per doubling of the file."""
  return wide["psnr"] - plain["psnr"] + slope * math.log2(plain["bytes"] / wide["bytes"])


def mean_curve_bd_rate(plain, wide, images, counts):
  """BD-rate of the wide files' mean curve over ``images`` against the plain files', at
  ``counts`` (both keyed by (image, N))."""
  mean = lambda records, field: [np.mean([records[i, n][field] for i in images]) for n in counts]
  return codec.bd_rate(mean(plain, "bpp"), mean(plain, "psnr"), mean(wide, "bpp"),
                       mean(wide, "psnr"))


def main():
  slope = slopes()
  base, wide = ours("records_wide0.json"), ours("records_wide2.json")
  pairs = sorted(set(base) & set(wide), key=lambda k: (k[1], k[0]))
  gains = {}
  print("| image, N (slope) | bytes | PSNR (dB) | MS-SSIM | at equal rate |")
  print("| --- | --- | --- | --- | --- |")
  for key in pairs:
    a, b = base[key], wide[key]
    gain = equal_rate_gain(a, b, slope[key])
    gains.setdefault(key[1], []).append(gain)
    print(f"| {key[0][:-4]}, {key[1]:,} ({slope[key]:.1f}) | {a['bytes']:,} → {b['bytes']:,} "
          f"({100 * (b['bytes'] / a['bytes'] - 1):+.1f}%) | {a['psnr']:.3f} → {b['psnr']:.3f} "
          f"({b['psnr'] - a['psnr']:+.3f}) | {a['ms_ssim']:.4f} → {b['ms_ssim']:.4f} | "
          f"{gain:+.2f} dB |")
  print()
  for n, g in sorted(gains.items()):
    print(f"N = {n:,}: {len(g)} pairs, mean {np.mean(g):+.3f} dB at equal rate "
          f"({min(g):+.2f} to {max(g):+.2f}), {sum(x > 0 for x in g)} gain")
  ratios = [wide[k]["bytes"] / base[k]["bytes"] for k in pairs]
  print(f"size ratio over {len(ratios)} pairs: median {np.median(ratios):.4f} "
        f"({min(ratios):.4f} to {max(ratios):.4f})")
  images = sorted({k[0] for k in pairs})
  counts = [n for n in sorted(gains) if all((i, n) in base and (i, n) in wide for i in images)]
  if len(counts) >= 2:
    bd = mean_curve_bd_rate(base, wide, images, counts)
    print(f"BD-rate of the {len(images)} images' mean curves over N = {counts}: {bd:+.2f}%")


if __name__ == "__main__":
  main()
