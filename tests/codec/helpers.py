"""Helpers of the codec's tests: quantized sets made without fitting (random, wide, correlated),
their comparison, a file's checksum.
"""

import dataclasses

import jax
import numpy as np

import gi_jax
from gi_jax import codec
from gi_jax.codec.quantize import init_quantizers, to_quantized


H = W = 32


def assert_same_symbols(a, b):
  """Two quantized sets hold the same symbols, side information and static settings."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def random_quantized(n=300, seed=0, parameterization="cholesky", position_step=0.0,
                     color_bits=0, codeword_fraction_bits=0):
  """A quantized set from random Gaussians (no fitting), as a file would hold."""
  g = gi_jax.init_gaussians(jax.random.key(seed), n, H, W, parameterization)
  config = codec.QuantizerConfig(position_step=position_step, color_bits=color_bits,
                                 codeword_fraction_bits=codeword_fraction_bits)
  quantizers = init_quantizers(jax.random.key(seed + 1), g, config)
  return to_quantized(g, quantizers, config, (H, W)).to_numpy()


def wide_quantized(n=200, seed=0, parameterization="cholesky", wide_sigma=0.5, codes=None):
  """A quantized set on a quarter-pixel grid whose Gaussians at least ``wide_sigma`` px wide sit
  on even cells (as to_quantized makes them); ``codes``: the covariance codes to use."""
  g = gi_jax.init_gaussians(jax.random.key(seed), n, H, W, parameterization)
  config = codec.QuantizerConfig(position_step=0.25, wide_sigma=wide_sigma)
  quantizers = init_quantizers(jax.random.key(seed + 1), g, config)
  q = to_quantized(g, quantizers, config, (H, W)).to_numpy()
  return q if codes is None else dataclasses.replace(q, cov_codes=codes)


def smaller_sigma(q):
  """Each Gaussian's smaller standard deviation in pixels, from its dequantized covariance."""
  a, b, c = np.moveaxis(np.asarray(q.dequantize().covariance, np.float64), -1, 0)
  return np.sqrt(np.linalg.eigvalsh(np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)
                                    )[:, 0])


def correlated_quantized(n=200, seed=0, color_bits=0):
  """A set whose third covariance code follows the first, as Cholesky fits' diagonals do (and
  with ``color_bits`` whose colour codes move together, as a colour's channels do)."""
  q = random_quantized(n, seed=seed, position_step=0.25, color_bits=color_bits)
  rng = np.random.default_rng(seed)
  cov = q.cov_codes.astype(np.int64)
  cov[:, 2] = np.clip(cov[:, 0] // 2 + 10 + rng.integers(-2, 3, n), 0, 63)
  fields = dict(cov_codes=cov.astype(np.uint8))
  if color_bits:
    levels = 1 << color_bits
    grey = rng.integers(0, levels, n)
    colors = np.clip(grey[:, None] + rng.integers(-1, 2, (n, 3)), 0, levels - 1)
    fields.update(color_indices=colors.astype(np.uint8))
  return dataclasses.replace(q, **fields)


def with_crc(body: bytes) -> bytes:
  import zlib
  return body + zlib.crc32(body).to_bytes(4, "little")
