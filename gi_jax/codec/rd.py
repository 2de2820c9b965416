"""Rate–distortion summaries: Bjøntegaard delta rate and delta PSNR (VCEG-M33).

Both fit a cubic polynomial through each curve (log10 rate against quality for BD-rate, quality
against log10 rate for BD-PSNR) and compare the two fits' averages over the interval where the
curves overlap. With fewer than four points a curve gets the highest degree its points allow.

Example::

  bd_rate([0.1, 0.2, 0.4, 0.8], [26, 28, 30, 32],    # anchor: bpp, PSNR
          [0.08, 0.16, 0.32, 0.64], [26, 28, 30, 32])  # test: 20% fewer bits
  # -> -20.0 (percent; negative means the test needs fewer bits)
"""

from __future__ import annotations

import math

import numpy as np

from gi_jax.errors import InvalidInputError


def rd_score(psnr: float, num_bytes: int, slope: float) -> float:
  """Higher is better: ``psnr`` less ``slope`` dB per doubling of the file's size.

  The trade-off of a choice between files of one image at a local RD slope (dB per doubling).
  """
  return psnr - slope * math.log2(num_bytes)


def _curve(rate, quality, name):
  rate = np.asarray(rate, np.float64).reshape(-1)
  quality = np.asarray(quality, np.float64).reshape(-1)
  if rate.shape != quality.shape:
    raise InvalidInputError(f"{name}: {rate.size} rates but {quality.size} quality values")
  keep = np.isfinite(rate) & np.isfinite(quality)
  rate, quality = rate[keep], quality[keep]
  if rate.size < 2:
    raise InvalidInputError(f"{name}: a curve needs at least 2 finite points, got {rate.size}")
  if (rate <= 0).any():
    raise InvalidInputError(f"{name}: rates must be positive")
  return np.log10(rate), quality


def _average(x, y, lo, hi):
  """Mean over [lo, hi] of the polynomial fit of y on x (cubic, or lower for few points)."""
  degree = min(3, x.size - 1)
  integral = np.polyint(np.polyfit(x, y, degree))
  return (np.polyval(integral, hi) - np.polyval(integral, lo)) / (hi - lo)


def _overlap(a, b, what):
  lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
  if not hi > lo:
    raise InvalidInputError(f"the curves do not overlap in {what}; no Bjøntegaard delta exists")
  return lo, hi


def bd_rate(rate_anchor, quality_anchor, rate_test, quality_test) -> float:
  """Average rate difference of ``test`` against ``anchor`` at equal quality, in percent.

  Args:
    rate_anchor: anchor rates (e.g. bpp), positive.
    quality_anchor: anchor qualities (e.g. PSNR in dB, or MS-SSIM in dB).
    rate_test: test rates.
    quality_test: test qualities.

  Returns:
    BD-rate in percent: negative when the test curve needs fewer bits for the same quality.

  Raises:
    InvalidInputError: fewer than 2 points on a curve, non-positive rates, or no overlap.
  """
  log_a, q_a = _curve(rate_anchor, quality_anchor, "anchor")
  log_t, q_t = _curve(rate_test, quality_test, "test")
  lo, hi = _overlap(q_a, q_t, "quality")
  diff = _average(q_t, log_t, lo, hi) - _average(q_a, log_a, lo, hi)
  return float((10.0**diff - 1.0) * 100.0)


def quality_at_rates(rate_anchor, quality_anchor, rates) -> list[float | None]:
  """The anchor's quality at each of ``rates``: linear in log rate between its two nearest points.

  Where a codec stands at one bitrate, beside the BD averages: ``quality_test[i] −
  quality_at_rates(anchor…, rate_test)[i]`` is the test's gain there.

  Args:
    rate_anchor: anchor rates, positive.
    quality_anchor: anchor qualities.
    rates: where to read the anchor's curve.

  Returns:
    One quality per rate; None outside the anchor's range of rates (no extrapolation).
  """
  log_a, q_a = _curve(rate_anchor, quality_anchor, "anchor")
  order = np.argsort(log_a)
  log_a, q_a = log_a[order], q_a[order]
  out = []
  for rate in rates:
    x = math.log10(rate) if rate is not None and rate > 0 else math.nan
    out.append(float(np.interp(x, log_a, q_a)) if log_a[0] <= x <= log_a[-1] else None)
  return out


def bd_psnr(rate_anchor, quality_anchor, rate_test, quality_test) -> float:
  """Average quality difference of ``test`` against ``anchor`` at equal rate (e.g. dB)."""
  log_a, q_a = _curve(rate_anchor, quality_anchor, "anchor")
  log_t, q_t = _curve(rate_test, quality_test, "test")
  lo, hi = _overlap(log_a, log_t, "rate")
  return float(_average(log_t, q_t, lo, hi) - _average(log_a, q_a, lo, hi))
