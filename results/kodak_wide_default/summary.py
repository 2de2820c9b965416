"""The 24-image CPU Kodak curve of OURS's default (wide positions from 100 pixels per Gaussian),
put together as run.sh says: N = 800 and 3,000 from this run and from
results/wide_positions_check (the rule at every N: the same encodes there), N = 5,000 and 9,000
from results/kodak_ft_default, and the Pillow codecs' records from there too (same images).

Checks that every N has all 24 images, then writes gaussianimage.json, bd_rate.json and rd.png
here, as experiments/compress.py would for one run, and prints the BD-rates; the curve against
kodak_ft_default's (the same protocol without wide positions); the change at equal rate at N = 800
and 3,000 in pairs made by the same code (valued at each image's RD slope, as
results/wide_positions_check/summary.py does); and how far the current code's plain encodes are
from kodak_ft_default's records, which an older version of the code made.
"""
import importlib.util
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(RESULTS, "..", "experiments"))
import compress  # noqa: E402  (the run's own summary functions)


WIDE_COUNTS = (800, 3000)  # where the rule applies on Kodak (N <= 768 * 512 / 100)
ALL_COUNTS = (800, 3000, 5000, 9000)


def records(*path):
  with open(os.path.join(RESULTS, *path)) as f:
    return json.load(f)["records"]


def ours(rows, counts):
  return [r for r in rows if r["codec"] == "ours" and r["nominal_gaussians"] in counts]


def wide_check_summary():
  # The wide-positions check's own pairing (per-image RD slopes, gain at equal rate, mean-curve
  # BD-rate), so that both tables count alike.
  path = os.path.join(RESULTS, "wide_positions_check", "summary.py")
  spec = importlib.util.spec_from_file_location("wide_check_summary", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  baseline_rows = records("kodak_ft_default", "records.json")
  here_rows = records("kodak_wide_default", "records.json")
  baseline = ours(baseline_rows, ALL_COUNTS)
  defaults = [r for r in here_rows if r.get("wide_sigma") == 2.0]
  mine = (ours(defaults, WIDE_COUNTS) + ours(records("wide_positions_check", "records_wide2.json"),
                                             WIDE_COUNTS)
          + [r for r in baseline if r["nominal_gaussians"] not in WIDE_COUNTS])
  images = sorted({r["image"] for r in baseline})
  for n in ALL_COUNTS:
    got = sorted(r["image"] for r in mine if r["nominal_gaussians"] == n)
    if got != images:
      sys.exit(f"N = {n}: {len(got)} records for {len(set(got))} of the {len(images)} images; "
               "run run.sh to the end first")
  check = ours(defaults, (5000,))  # kodim17 re-encoded: the rule does not apply, as before it

  describe = ("24 image(s), CPU protocol (1000 + 2000 fine-tuning steps), OURS's default with wide "
              "positions (σ ≥ 2 px on a 0.5 px grid from 100 px per Gaussian); N = 5,000 and 9,000 "
              "from results/kodak_ft_default, where the rule does not apply")
  curves = {"ours": compress.compressai_json("GaussianImage-JAX (ours, cholesky)", describe,
                                             compress.curve(mine, "nominal_gaussians"))}
  compress.write_json(os.path.join(HERE, "gaussianimage.json"), curves["ours"])
  for name in ("JPEG", "WebP", "JPEG 2000", "AVIF"):
    points = compress.curve([r for r in baseline_rows if r["codec"] == name], "setting")
    curves[name] = compress.compressai_json(f"{name} (Pillow)", describe, points)
  curves["GaussianImage (paper, Kodak)"] = {
      "name": "GaussianImage (paper, Kodak, 768×512)", "description": "published",
      "results": {"bpp": compress.PUBLISHED_KODAK[0], "psnr-rgb": compress.PUBLISHED_KODAK[1]}}
  anchors = {k: v for k, v in curves.items() if k != "ours"}
  table = compress.bd_rates(curves["ours"], anchors)
  compress.write_json(os.path.join(HERE, "bd_rate.json"),
                      {"test": curves["ours"]["name"], "description": describe, "anchors": table,
                       "note": "BD-rate (%) of ours against each anchor; negative: ours needs "
                               "fewer bits. psnr-rgb-gain-db: at each of our points, our PSNR "
                               "minus the anchor's at that bpp"})
  compress.plot(os.path.join(HERE, "rd.png"), curves, f"Rate–distortion: {describe}")

  res = curves["ours"]["results"]
  print("\nours, means over 24 images:")
  for i, n in enumerate(res["setting"]):
    print(f"  N = {n:>5,}: {res['bpp'][i]:.4f} bpp, PSNR {res['psnr-rgb'][i]:.2f} dB, "
          f"MS-SSIM {res['ms-ssim-rgb'][i]:.4f}")
  print("BD-rate of ours against (PSNR, MS-SSIM):")
  fmt = lambda v: "-" if v is None else f"{v:+.1f}%"
  for name, row in table.items():
    print(f"  {name:30s} {fmt(row.get('psnr-rgb'))}  {fmt(row.get('ms-ssim-rgb'))}")

  # Against the same protocol without wide positions: the curves (N = 5,000 and 9,000 shared; the
  # pairs at 800 and 3,000 come from two code versions, see the drift below), then pairs made by
  # the same code (the wide check's plain files, and this run's).
  old = compress.compressai_json("without", "", compress.curve(baseline, "nominal_gaussians"))
  row = compress.bd_rates(curves["ours"], {"without": old})["without"]
  print(f"against kodak_ft_default (no wide positions): BD-rate {fmt(row['psnr-rgb'])} (PSNR), "
        f"{fmt(row['ms-ssim-rgb'])} (MS-SSIM)")
  plain_rows = (records("wide_positions_check", "records_wide0.json")
                + [r for r in here_rows if not r.get("wide_sigma")])
  plain = {(r["image"], r["nominal_gaussians"]): r for r in ours(plain_rows, ALL_COUNTS)}
  wide = {(r["image"], r["nominal_gaussians"]): r for r in mine
          if r["nominal_gaussians"] in WIDE_COUNTS}
  wide_check = wide_check_summary()
  slope = wide_check.slopes()
  pairs = [k for k in wide if k in plain]
  print(f"paired, same code ({len({k[0] for k in pairs})} images):")
  for n in WIDE_COUNTS:
    gains, ratios = [], []
    for key in (k for k in pairs if k[1] == n):
      a, b = plain[key], wide[key]
      gains.append(wide_check.equal_rate_gain(a, b, slope[key[0], a["num_gaussians"]]))
      ratios.append(b["bytes"] / a["bytes"])
    print(f"  N = {n:,}: {sum(g > 0 for g in gains)} of {len(gains)} gain at equal rate, mean "
          f"{np.mean(gains):+.3f} dB ({min(gains):+.2f} to {max(gains):+.2f}); files "
          f"{100 * (np.median(ratios) - 1):+.1f}% (median)")
  both = sorted({k[0] for k in pairs if all((k[0], n) in plain for n in WIDE_COUNTS)})
  if both:
    bd = wide_check.mean_curve_bd_rate(plain, wide, both, WIDE_COUNTS)
    print(f"  BD-rate of the {len(both)} images' mean curves over N = {WIDE_COUNTS}: {bd:+.2f}%")

  # How far the current code's plain encodes are from kodak_ft_default's (an older version).
  then = {(r["image"], r["nominal_gaussians"]): r for r in baseline}
  drift = [(plain[k], then[k]) for k in plain if k in then]
  drift += [(b, then[b["image"], 5000]) for b in check]
  for n in ALL_COUNTS:
    d = [(a["psnr"] - b["psnr"], a["bytes"] / b["bytes"]) for a, b in drift
         if a["nominal_gaussians"] == n]
    if d:
      print(f"  drift at N = {n:,} ({len(d)} images): PSNR {np.mean([x[0] for x in d]):+.3f} dB "
            f"(|max| {max(abs(x[0]) for x in d):.2f}), bytes "
            f"{100 * (np.mean([x[1] for x in d]) - 1):+.2f}% (now against kodak_ft_default)")

if __name__ == "__main__":
  main()
