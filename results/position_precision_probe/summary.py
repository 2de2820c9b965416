"""Each rule's PSNR change at equal rate, from records.json: the PSNR change plus what the saved
bits are worth at the image's own RD slope (dB per doubling of the file, from
results/kodak_ft_default: the chord N = 800 → 3,000 at 800, and the mean of that chord and
3,000 → 9,000 at 3,000). Ends with the table of docs/codec_experiments.md (its columns: TABLE)."""
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
# (smaller σ from, grid factor; 0: ×2, ×4, ×8 from σ, 2σ, 4σ) of the docs table's columns
TABLE = ((0.0, 2), (2.0, 2), (6.0, 2), (2.0, 4), (4.0, 4), (4.0, 0))


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


def at_equal_rate(row, slope):
  return row["psnr_change"] - slope * math.log2(1 - row["saved_fraction"])


def signed(x):
  return f"{x:+.2f}".replace("-", "−")  # the docs' minus sign


def main():
  slope = slopes()
  records = sorted(json.load(open(os.path.join(HERE, "records.json"))),
                   key=lambda r: (r["num_gaussians"], r["image"]))
  records = [(r, slope[r["image"]][r["num_gaussians"]]) for r in records]
  for r, s in records:
    print(f"{r['image']} N={r['num_gaussians']} ({r['psnr']:.2f} dB, slope {s:.2f} dB/doubling)")
    for row in r["rows"]:
      rule = f"×{row['factor']}" if row["factor"] else "×2,4,8"
      print(f"  σ≥{row['sigma_min']:<4} {rule:7s} {100 * row['saved_fraction']:5.1f}% bits "
            f"{row['psnr_change']:+.3f} dB  at equal rate {at_equal_rate(row, s):+.3f} dB")
  print("\nbits saved / PSNR change -> at equal rate, dB")
  for r, s in records:
    rows = {(row["sigma_min"], row["factor"]): row for row in r["rows"]}
    cells = [f"−{100 * row['saved_fraction']:.1f}% / {signed(row['psnr_change'])} → "
             f"{signed(at_equal_rate(row, s))}" for row in map(rows.get, TABLE)]
    print(f"| {r['image']}, {r['num_gaussians']:,} ({s:.1f}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
