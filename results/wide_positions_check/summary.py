"""Prints the paired rows of docs/codec_experiments.md's wide-positions table: bytes and PSNR with
and without the rule, and the change at equal rate, valuing the bytes at each image's RD slope
(dB per doubling of the file, as results/position_precision_probe/summary.py takes them from
results/kodak_ft_default)."""
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SLOPES = {("kodim04.png", 800): 1.6, ("kodim08.png", 800): 1.9, ("kodim13.png", 800): 1.0,
          ("kodim23.png", 800): 2.7, ("kodim04.png", 3000): 1.8, ("kodim08.png", 3000): 2.1,
          ("kodim13.png", 3000): 1.3, ("kodim23.png", 3000): 2.5, ("kodim04.png", 9000): 1.9,
          ("kodim23.png", 9000): 2.5}  # at 9,000: between kodak_ft_default's 5,000 and 9,000


def ours(name):
  with open(os.path.join(HERE, name)) as f:
    return {(r["image"], r["num_gaussians"]): r for r in json.load(f)["records"]
            if r["codec"] == "ours"}


base, wide = ours("records_wide0.json"), ours("records_wide2.json")
print("| image, N (slope) | bytes | PSNR (dB) | MS-SSIM | at equal rate |")
print("| --- | --- | --- | --- | --- |")
for key in sorted(base, key=lambda k: (k[1], k[0])):
  a, b = base[key], wide[key]
  gain = b["psnr"] - a["psnr"] + SLOPES[key] * math.log2(a["bytes"] / b["bytes"])
  print(f"| {key[0][:-4]}, {key[1]:,} ({SLOPES[key]}) | {a['bytes']:,} → {b['bytes']:,} "
        f"({100 * (b['bytes'] / a['bytes'] - 1):+.1f}%) | {a['psnr']:.3f} → {b['psnr']:.3f} "
        f"({b['psnr'] - a['psnr']:+.3f}) | {a['ms_ssim']:.4f} → {b['ms_ssim']:.4f} | "
        f"{gain:+.2f} dB |")
