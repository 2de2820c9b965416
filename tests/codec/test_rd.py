"""gi_jax.codec.rd: BD-rate and quality at rates.
"""

import numpy as np
import pytest

from gi_jax import codec
from gi_jax.codec.rd import quality_at_rates
from gi_jax.errors import InvalidInputError


def test_bd_rate_on_synthetic_curves():
  rate = np.asarray([0.1, 0.2, 0.4, 0.8, 1.6])
  psnr = 25 + 4 * np.log2(rate / 0.1) + 0.1 * np.log2(rate / 0.1) ** 2
  assert codec.bd_rate(rate, psnr, rate, psnr) == pytest.approx(0, abs=1e-9)
  assert codec.bd_rate(rate, psnr, 0.8 * rate, psnr) == pytest.approx(-20, abs=1e-6)
  assert codec.bd_rate(rate, psnr, 1.5 * rate, psnr) == pytest.approx(50, abs=1e-6)
  # A straight line in log rate: a PSNR shift of d dB is a rate factor 10**(-d/slope).
  slope = 12.0  # dB per decade
  line = 30 + slope * np.log10(rate)
  expected = (10 ** (-1.0 / slope) - 1) * 100
  assert codec.bd_rate(rate, line, rate, line + 1.0) == pytest.approx(expected, abs=1e-6)
  assert codec.bd_psnr(rate, line, rate, line + 1.0) == pytest.approx(1.0, abs=1e-9)
  # Partial overlap and fewer than four points still work; no overlap is an error.
  assert codec.bd_rate(rate[:3], psnr[:3], 0.8 * rate[1:], psnr[1:]) == pytest.approx(-20, abs=0.1)
  with pytest.raises(InvalidInputError):
    codec.bd_rate(rate, psnr, rate, psnr + 100)
  with pytest.raises(InvalidInputError):
    codec.bd_rate([0.1], [20], rate, psnr)


def test_quality_at_rates_reads_the_anchor_between_its_points():
  rate = [0.8, 0.1, 0.4, 0.2]  # any order
  line = [30 + 12 * np.log10(r) for r in rate]
  got = quality_at_rates(rate, line, [0.1, 0.3, 0.8, 0.05, 1.0, None])
  np.testing.assert_allclose(got[:3], [30 + 12 * np.log10(r) for r in (0.1, 0.3, 0.8)])
  assert got[3:] == [None, None, None]  # outside the anchor's rates: no extrapolation
