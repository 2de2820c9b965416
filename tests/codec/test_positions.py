"""gi_jax.codec.positions: which Gaussians are wide, their fake-quantized positions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.quantize import init_quantizers, quantize_gaussians, to_quantized
from gi_jax.codec.positions import wide_gaussians
from tests.codec.helpers import H, W, assert_same_symbols, wide_quantized, smaller_sigma


@pytest.mark.parametrize("parameterization", ["cholesky", "rs"])
def test_wide_gaussians_are_those_with_a_large_smaller_sigma(parameterization):
  q = wide_quantized(400, seed=1, parameterization=parameterization)
  sigma = smaller_sigma(q)
  for threshold in (0.25, 0.5, 1.0, 2.0):
    rule = lambda xp: np.asarray(wide_gaussians(q.cov_codes, q.cov_scale, q.cov_offset,
                                                   parameterization, threshold, xp=xp))
    clear = np.abs(sigma - threshold) > 1e-4 * threshold  # float32 may differ at the edge only
    np.testing.assert_array_equal(rule(np)[clear], (sigma >= threshold)[clear])
    np.testing.assert_array_equal(rule(jnp)[clear], (sigma >= threshold)[clear])
  assert 0 < (sigma >= 1.0).sum() < len(sigma)


def test_fake_quantized_wide_positions_match_the_decoders():
  g = gi_jax.init_gaussians(jax.random.key(0), 200, H, W)
  config = codec.QuantizerConfig(position_step=0.25, wide_sigma=0.5)
  quantizers = init_quantizers(jax.random.key(1), g, config)
  gq, aux = quantize_gaussians(g, quantizers, config, (H, W))
  symbols = to_quantized(g, quantizers, config, (H, W))
  assert_same_symbols(aux.symbols, symbols)
  np.testing.assert_array_equal(gq.means_raw, symbols.dequantize().means_raw)
  # A wide Gaussian moves to the nearest even cell: at most one cell per axis, in pixels (a cell
  # and a half in the grid's last cell, which is odd).
  wide = smaller_sigma(symbols.to_numpy()) >= 0.5
  moved = np.abs(symbols.dequantize().pixel_means(H, W) - g.pixel_means(H, W))
  last = np.asarray(symbols.position_codes) == 126
  assert wide.any() and bool(np.all(moved[wide] <= np.where(last[wide], 0.375, 0.25) + 1e-4))
  assert bool(np.all(moved[~wide] <= 0.125 + 1e-4))
