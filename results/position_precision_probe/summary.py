"""Each rule's PSNR change at equal rate, from records.json: the PSNR change plus what the saved
bits are worth at the image's own RD slope (dB per doubling of the file, from
results/kodak_ft_default: the chord N = 800 → 3,000 at 800, and the mean of that chord and
3,000 → 9,000 at 3,000)."""
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def slopes():
  records = json.load(open(os.path.join(HERE, "..", "kodak_ft_default", "records.json")))
  points = {}
  for r in records["records"]:
    if r["codec"] == "ours":
      points.setdefault(os.path.basename(r["image"])[:-4], {})[r["num_gaussians"]] = (
          r["bpp"], r["psnr"])
  chord = lambda p, a, b: (p[b][1] - p[a][1]) / math.log2(p[b][0] / p[a][0])
  return {name: {800: chord(p, 800, 3000), 3000: (chord(p, 800, 3000) + chord(p, 3000, 9000)) / 2}
          for name, p in points.items()}


def main():
  slope = slopes()
  for r in json.load(open(os.path.join(HERE, "records.json"))):
    s = slope[r["image"]][r["num_gaussians"]]
    print(f"{r['image']} N={r['num_gaussians']} ({r['psnr']:.2f} dB, slope {s:.2f} dB/doubling)")
    for row in r["rows"]:
      worth = -s * math.log2(1 - row["saved_fraction"])
      rule = f"×{row['factor']}" if row["factor"] else "×2,4,8"
      print(f"  σ≥{row['sigma_min']:<4} {rule:7s} {100 * row['saved_fraction']:5.1f}% bits "
            f"{row['psnr_change']:+.3f} dB  at equal rate {row['psnr_change'] + worth:+.3f} dB")


if __name__ == "__main__":
  main()
