"""gi_jax.codec.quantize: the quantizers put together, fake quantization equal to the decoder's,
checked settings.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.quantize import init_quantizers, quantize_gaussians, to_quantized
from gi_jax.codec import bitio
from gi_jax.codec.covariance import cov_channels
from gi_jax.errors import CodecError, InvalidInputError
from tests.codec.helpers import H, W, assert_same_symbols, random_quantized, with_crc


@pytest.mark.parametrize("parameterization,position_step,color_bits,fraction_bits",
                         [("cholesky", 0.0, 0, 0), ("rs", 0.0, 0, 0), ("cholesky", 0.5, 0, 10),
                          ("rs", 0.3, 0, 0), ("cholesky", 0.25, 6, 0), ("rs", 0.0, 3, 0)])
def test_fake_quantized_values_match_the_decoders(parameterization, position_step, color_bits,
                                                  fraction_bits):
  g = gi_jax.init_gaussians(jax.random.key(0), 64, H, W, parameterization)
  config = codec.QuantizerConfig(position_step=position_step, color_bits=color_bits,
                                 codeword_fraction_bits=fraction_bits)
  quantizers = init_quantizers(jax.random.key(1), g, config)
  gq, aux = quantize_gaussians(g, quantizers, config, (H, W))
  symbols = to_quantized(g, quantizers, config, (H, W))
  dq = symbols.dequantize()
  np.testing.assert_array_equal(gq.means_raw, dq.means_raw)
  np.testing.assert_array_equal(gq.colors, dq.colors)
  np.testing.assert_allclose(gq.cov_raw, dq.cov_raw, rtol=1e-6, atol=1e-6)
  assert_same_symbols(aux.symbols, symbols)
  assert symbols.color_bits == color_bits and (symbols.codebooks is None) == bool(color_bits)
  if color_bits:
    # Uniform colours move by at most half a step, and their quantizer learns by gradient.
    step = quantizers.color.scale
    assert bool(jnp.all(jnp.abs(dq.colors - g.colors) <= 0.5 * step + 1e-5))
    grad = jax.grad(lambda q: jnp.sum(quantize_gaussians(g, q, config, (H, W))[0].colors))(
        quantizers)
    assert float(jnp.abs(grad.color.scale).sum()) > 0
  if position_step:
    # A grid position moves to its cell's centre: at most half a cell per axis, in pixels.
    cells = config.position_cells(H, W)
    assert symbols.position_cells == cells == (-(-W // position_step), -(-H // position_step))
    half_cell = 0.5 * np.asarray([W, H]) / np.asarray(cells)
    moved = np.abs(dq.pixel_means(H, W) - g.pixel_means(H, W))
    assert bool(np.all(moved <= half_cell + 1e-4))
  # Quantizing the covariance channels moves them by at most half a step.
  channels = cov_channels(g)
  assert bool(jnp.all(jnp.abs(cov_channels(dq) - channels) <= 0.5 * quantizers.cov.scale + 1e-4))


@pytest.mark.parametrize("color_bits", [0, 5])
def test_quantizers_jit_and_vmap(color_bits):
  config = codec.QuantizerConfig(color_bits=color_bits)
  keys = jax.random.split(jax.random.key(0), 2)
  batch = jax.vmap(lambda k: gi_jax.init_gaussians(k, 64, H, W))(keys)
  quantizers = jax.vmap(lambda k, g: init_quantizers(k, g, config))(keys, batch)
  step = jax.jit(jax.vmap(lambda g, q: quantize_gaussians(g, q, config)))
  gq, aux = step(batch, quantizers)
  for i in range(2):
    one = jax.tree.map(lambda x: x[i], batch)
    q_one = jax.tree.map(lambda x: x[i], quantizers)
    ref, ref_aux = quantize_gaussians(one, q_one, config)
    np.testing.assert_allclose(gq.cov_raw[i], ref.cov_raw, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gq.colors[i], ref.colors)
    np.testing.assert_allclose(aux.commitment[i], ref_aux.commitment, rtol=1e-5)


@pytest.mark.parametrize("field", ["means_raw", "cov_raw", "colors"])
def test_quantizers_refuse_nan_gaussians(field):
  g = gi_jax.init_gaussians(jax.random.key(0), 40, H, W)
  config = codec.OURS.quantizers
  quantizers = init_quantizers(jax.random.key(1), g, config)
  bad = dataclasses.replace(g, **{field: getattr(g, field).at[3, 0].set(jnp.nan)})
  with pytest.raises(InvalidInputError, match=f"{field} contains NaN"):
    init_quantizers(jax.random.key(1), bad, config)
  with pytest.raises(InvalidInputError, match=f"{field} contains NaN"):
    to_quantized(bad, quantizers, config, (H, W))
  # Under jit the values are unknown: no check, no error (as for render).
  jax.jit(lambda g: to_quantized(g, quantizers, config, (H, W)))(bad)


@pytest.mark.parametrize("bad", [dict(position_step=-1.0), dict(commitment_weight=-0.1),
                                 dict(commitment_weight=float("nan")), dict(decay=1.0),
                                 dict(codebook_size=1), dict(stages=True)])
def test_quantizer_config_refuses_impossible_settings(bad):
  with pytest.raises(InvalidInputError, match=next(iter(bad))):
    codec.QuantizerConfig(**bad)


def test_grid_settings_and_codes_are_checked():
  with pytest.raises(InvalidInputError, match="65536"):
    codec.QuantizerConfig(position_step=1e-3).position_cells(H, 100)
  g = gi_jax.init_gaussians(jax.random.key(0), 8, H, W)
  config = codec.QuantizerConfig(position_step=0.5)
  with pytest.raises(InvalidInputError, match="image_size"):
    quantize_gaussians(g, init_quantizers(jax.random.key(0), g, config), config)
  q = random_quantized(30, seed=4, position_step=0.5)
  with pytest.raises(CodecError, match="outside its grid"):
    codec.encode(dataclasses.replace(q, position_cells=(8, 8)), H, W)
  # A forged header with a smaller grid (valid checksum): the codes fall outside it.
  data = codec.encode(q, H, W)
  header = codec.read_header(data)[0]
  body = bytearray(data[:-4])
  grid_at = 6 + sum(len(bitio.varint(v)) for v in (H, W, header.num_gaussians, header.pad))
  assert bytes(body[grid_at:grid_at + 2]) == bitio.varint(63) + bitio.varint(63)
  body[grid_at:grid_at + 2] = bitio.varint(3) + bitio.varint(3)
  with pytest.raises(CodecError, match="outside the grid"):
    codec.decode(with_crc(bytes(body)))
