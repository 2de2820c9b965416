"""Tests of gi_jax.codec: quantizers, fine-tuning, the file format, bits-back ordering, CLIs,
BD-rate.

Everything runs on tiny images (32×32) with a few hundred Gaussians and a handful of steps.
"""


import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gi_jax
from gi_jax import codec, io
from gi_jax.codec import bitio, cli, pipeline, quantize as qz
from gi_jax.codec.covariance import cov_channels
from gi_jax.codec.decoder import batch_groups, entropy_decode
from gi_jax.codec.render import (render_capacity, render_decoded, render_decoded_batch,
                                 render_quantized, render_quantized_batch)
from gi_jax.codec.format import (MAGIC, VERSION, bits_back_report, breakdown, canonicalize,
                                 codebooks, container, decode_quantized, entropy, log2_factorial,
                                 payload, prediction, streams)
from gi_jax.codec.pipeline import Candidate, WidePositions, override_wide
from gi_jax.codec.positions import grid_ste, wide_gaussians
from gi_jax.codec.quantize import (fixed_length_bits, init_quantizers, quantize_gaussians,
                                   to_quantized)
from gi_jax.codec.rate import OURS_RATE, rate_model
from gi_jax.codec.rd import quality_at_rates
from gi_jax.codec.rvq import (MAX_CODEWORD_INT, kmeans, nearest, rvq_dequantize, rvq_ema_update,
                              rvq_indices, rvq_init, rvq_quantize, transmitted)
from gi_jax.codec.ste import half_ste, round_ste
from gi_jax.codec.uniform import uniform_codes, uniform_dequantize, uniform_init, uniform_quantize
from gi_jax.errors import CodecError, InvalidInputError
from gi_jax.fitting import optimize
from gi_jax.io import sample_image_path
from gi_jax.sharding import default_mesh
from harness import codec_record_key

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


@pytest.fixture(scope="module")
def quantized():
  return random_quantized()


@pytest.fixture(scope="module")
def target():
  image = io.load_image(sample_image_path())
  return image[200:200 + H, 300:300 + W]


@pytest.fixture(scope="module")
def tuned(target):
  fitted = gi_jax.fit(target, 64, 30, progress=False, steps_per_call=30)
  return fitted, codec.finetune(fitted, target, steps=20, progress=False, steps_per_call=10)


# -- straight-through estimators and quantizers ----------------------------------------------------

@pytest.mark.parametrize("fn", [round_ste, half_ste, lambda x: grid_ste(x, (40, 24))])
def test_ste_gradient_is_identity(fn):
  x = jax.random.normal(jax.random.key(0), (50, 2)) * 3
  w = jax.random.normal(jax.random.key(1), (50, 2))
  grad = jax.grad(lambda x: jnp.sum(w * fn(x)))(x)
  np.testing.assert_array_equal(grad, w)


def test_ste_forward_values_are_exact():
  x = jnp.asarray([0.3, 1.5, 2.5, -0.7, 1e-3, 70000.0], jnp.float32)
  np.testing.assert_array_equal(round_ste(x), jnp.round(x))
  expected = np.clip(np.asarray(x), -65504, 65504).astype(np.float16).astype(np.float32)
  np.testing.assert_array_equal(half_ste(x), expected)


def test_uniform_quantizer_init_codes_and_gradients():
  x = jax.random.uniform(jax.random.key(0), (200, 3), minval=-1.0, maxval=2.0)
  q = uniform_init(x, 6)
  np.testing.assert_allclose(q.offset, x.min(0))
  np.testing.assert_allclose(q.scale, (x.max(0) - x.min(0)) / 63, rtol=1e-6)
  codes = uniform_codes(q, x, 6)
  assert codes.min() == 0 and codes.max() == 63
  np.testing.assert_array_equal(codes[jnp.argmin(x, 0), jnp.arange(3)], 0)
  np.testing.assert_array_equal(codes[jnp.argmax(x, 0), jnp.arange(3)], 63)
  values = uniform_quantize(q, x, 6)
  np.testing.assert_array_equal(values, uniform_dequantize(q, codes))
  assert jnp.max(jnp.abs(values - x) / q.scale) <= 0.5 + 1e-4
  # Identity inside the range, zero where the code is clipped.
  x_out = x.at[0].set(x.max(0) + 10.0)
  w = jax.random.normal(jax.random.key(1), x.shape)
  grad = jax.grad(lambda x: jnp.sum(w * uniform_quantize(q, x, 6)))(x_out)
  np.testing.assert_array_equal(grad[1:], w[1:])
  np.testing.assert_array_equal(grad[0], 0)
  # Scale and offset are learned: LSQ gradients inside the range, plain ones where clipped.
  gq = jax.grad(lambda q: jnp.sum(w * uniform_quantize(q, x_out, 6)))(q)
  c = (x_out - q.offset) / q.scale
  np.testing.assert_allclose(gq.scale, jnp.sum(w[1:] * (jnp.round(c[1:]) - c[1:]), 0) + 63 * w[0],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gq.offset, w[0], rtol=1e-6)


def test_kmeans_lloyd_fixed_point():
  centres = jnp.asarray([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
  key_a, key_b = jax.random.split(jax.random.key(0))
  labels = jax.random.randint(key_a, (400,), 0, 4)
  x = centres[labels] + 0.01 * jax.random.normal(key_b, (400, 3))
  distortion = lambda c: float(jnp.mean(jnp.min(jnp.sum((x[:, None] - c[None]) ** 2, -1), 1)))
  start, _ = kmeans(jax.random.key(3), x, 4, 0)
  assert all(any(np.array_equal(c, row) for row in np.asarray(x)) for c in np.asarray(start))
  found, counts = kmeans(jax.random.key(3), x, 4, 50)
  assign = nearest(x, found)
  np.testing.assert_array_equal(counts, jnp.bincount(assign, length=4))
  for k in range(4):  # converged: each centre is the mean of its points
    np.testing.assert_allclose(found[k], x[assign == k].mean(0), atol=1e-5)
  assert distortion(found) <= distortion(start)
  # Fewer points than centres: sampled with repetition, nothing breaks.
  few, few_counts = kmeans(jax.random.key(0), x[:3], 8, 5)
  assert few.shape == (8, 3) and int(few_counts.sum()) == 3


def test_rvq_quantize_gradient_commitment_and_ema():
  x = jax.random.uniform(jax.random.key(0), (300, 3))
  rvq = rvq_init(jax.random.key(1), x, 2, 8, 5)
  assert rvq.codebooks.shape == (2, 8, 3) and rvq.ema_count.shape == (2, 8)
  np.testing.assert_allclose(rvq.ema_count.sum(-1), [300, 300])
  out, idx, commitment = rvq_quantize(rvq, x)
  cb = transmitted(rvq.codebooks)  # float16 values, as the file stores them
  np.testing.assert_array_equal(cb, rvq.codebooks.astype(jnp.float16).astype(jnp.float32))
  np.testing.assert_array_equal(idx, rvq_indices(cb, x))
  q1 = cb[0][idx[:, 0]]
  q2 = cb[1][idx[:, 1]]
  np.testing.assert_array_equal(out, q1 + q2)
  np.testing.assert_allclose(commitment,
                             jnp.mean((q1 - x) ** 2) + jnp.mean((q2 - (x - q1)) ** 2), rtol=1e-6)
  # The second stage beats the first alone.
  assert jnp.mean((out - x) ** 2) < jnp.mean((q1 - x) ** 2)
  # Exactly the identity through the quantized output (the reference doubles it).
  w = jax.random.normal(jax.random.key(2), x.shape)
  grad = jax.grad(lambda x: jnp.sum(w * rvq_quantize(rvq, x)[0]))(x)
  np.testing.assert_array_equal(grad, w)
  # Nothing reaches the codebooks by gradient: they are EMA state.
  g_rvq = jax.grad(lambda r: jnp.sum(w * rvq_quantize(r, x)[0]) +
                   rvq_quantize(r, x)[2])(rvq)
  assert all(float(jnp.abs(leaf).max()) == 0 for leaf in jax.tree.leaves(g_rvq))
  # EMA with decay 0: codewords become the (smoothed) means of what they quantize.
  new = rvq_ema_update(rvq, x, idx, decay=0.0)
  for k in range(8):
    members = x[idx[:, 0] == k]
    if len(members):
      np.testing.assert_allclose(new.codebooks[0, k], members.mean(0), rtol=1e-3, atol=1e-5)
  # With decay 0.8 it moves 20% of the way in the statistics.
  half = rvq_ema_update(rvq, x, idx, decay=0.8)
  np.testing.assert_allclose(half.ema_count, 0.8 * rvq.ema_count + 0.2 * new.ema_count,
                             rtol=1e-5)


@pytest.mark.parametrize("fraction_bits", [1, 10, 20])
def test_fixed_point_codewords(fraction_bits):
  x = jax.random.uniform(jax.random.key(0), (300, 3))
  rvq = rvq_init(jax.random.key(1), x, 2, 8, 5)
  rvq = rvq._replace(codebooks=rvq.codebooks.at[0, 0, 0].set(1e9))  # beyond the clip
  step = 2.0 ** -fraction_bits
  cb = transmitted(rvq.codebooks, fraction_bits)
  ints = np.asarray(cb, np.float64) / step
  np.testing.assert_array_equal(ints, np.round(ints))
  assert np.abs(ints).max() == MAX_CODEWORD_INT
  inside = np.abs(np.asarray(rvq.codebooks)) < MAX_CODEWORD_INT * step
  assert np.all(np.abs(cb - rvq.codebooks)[inside] <= step / 2)
  # Indices, values and EMA residuals all come from the transmitted codewords.
  out, idx, _ = rvq_quantize(rvq, x, fraction_bits)
  np.testing.assert_array_equal(idx, rvq_indices(cb, x))
  np.testing.assert_array_equal(out, rvq_dequantize(cb, idx))
  new = rvq_ema_update(rvq, x, idx, 0.0, fraction_bits)
  k = int(idx[0, 1])
  members = np.asarray(x - cb[0][idx[:, 0]])[np.asarray(idx[:, 1]) == k]
  np.testing.assert_allclose(new.codebooks[1, k], members.mean(0), rtol=1e-3, atol=1e-5)
  with pytest.raises(InvalidInputError, match="codeword_fraction_bits"):
    codec.QuantizerConfig(codeword_fraction_bits=21)


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


# -- fine-tuning -----------------------------------------------------------------------------------

def test_loss_state_is_carried_exactly_through_optimize():
  """A stateful loss's state is stored as the loss returns it, next to a learned leaf, and an
  overflowing call that is redone does not apply its state twice."""
  big = jnp.asarray([16_000_001.0, 3.0, 65535.0])

  def make_loss(capacity):
    def loss_fn(w, target, binned, state):
      new = jnp.where(state[0] < 16_000_005, state + 1, state)
      return jnp.sum((w - target) ** 2), (jnp.int32(2), new)  # 2 > capacity 1: one redo
    return loss_fn

  out = optimize(jnp.zeros(3), jnp.ones(3), 7, make_loss, optimizer=optax.sgd(0.1), capacity=1,
                 steps_per_call=3, aux=big)
  assert out.capacity >= 2
  np.testing.assert_array_equal(out.aux, big + jnp.asarray([4.0, 4, 4]))
  assert float(jnp.abs(out.params - 1).max()) < 0.5


def test_finetune_keeps_the_best_and_reports_the_decoders_psnr(tuned, target):
  fitted, result = tuned
  assert result.steps == 20 and 0 <= result.best_step <= 20
  assert result.psnr >= result.initial_psnr
  image = result.render("reference")
  assert abs(float(gi_jax.metrics.psnr(image, target)) - result.psnr) < 1e-3
  # Quantization costs something, but the fine-tuned codec stays near the float fit.
  fit_psnr = float(gi_jax.metrics.psnr(fitted.render("reference"), target))
  assert result.psnr > fit_psnr - 3.0


def test_finetune_that_diverges_keeps_its_best_step_before(tuned, target):
  # A rate this large makes the final state non-finite: the encode keeps the best step seen, and
  # says so, instead of failing on the final state (kodim12 once diverged through a NaN gradient).
  fitted, _ = tuned
  with pytest.warns(UserWarning, match="fine-tuning diverged"):
    result = codec.finetune(fitted, target, steps=10, learning_rate=1e30, progress=False)
  assert not np.isfinite(np.asarray(result.gaussians.cov_raw)).all()
  assert np.isfinite(result.psnr) and result.best_step < 10
  assert codec.decode(codec.encode(result.quantized, *target.shape[:2]))[0].shape == target.shape
  with pytest.warns(UserWarning, match=r"diverged \(image 0 of the batch\)") as caught:
    [batched] = codec.finetune_batch([fitted], [target], 10, learning_rate=1e30, progress=False)
  # The caller's line, however deep the check (numpy's overflow warnings are caught too).
  assert {w.filename for w in caught if "diverged" in str(w.message)} == {__file__}
  assert np.isfinite(batched.psnr)


def test_finetune_is_finetune_batch_of_one_bit_for_bit(tuned, target):
  fitted, single = tuned
  records = []
  [batch] = codec.finetune_batch([fitted], [target], steps=20, seeds=[0], steps_per_call=10,
                                 progress=records.append)
  assert_same_symbols(batch.quantized, single.quantized)
  for a, b in zip(jax.tree.leaves((batch.gaussians, batch.quantizers)),
                  jax.tree.leaves((single.gaussians, single.quantizers))):
    np.testing.assert_array_equal(a, b)
  assert (batch.mse, batch.best_step) == (single.mse, single.best_step)
  assert ([(r["step"], r["loss"]) for r in batch.history] ==
          [(r["step"], r["loss"]) for r in single.history])
  assert [len(r["psnr"]) for r in records] == [1, 1]


def test_finetune_batch_matches_single_finetunes(target):
  images = [target, target[::-1]]
  fits = gi_jax.fit_batch(images, 48, 20, progress=False, steps_per_call=20)
  config = codec.QuantizerConfig(position_step=0.5)
  batch = codec.finetune_batch(fits, images, 6, config=config, seeds=[3, 4], progress=False,
                               steps_per_call=3, backend="reference")
  for fitted, image, seed, got in zip(fits, images, [3, 4], batch):
    one = codec.finetune(fitted, image, 6, config=config, seed=seed, progress=False,
                         steps_per_call=3, backend="reference")
    assert got.psnr == pytest.approx(one.psnr, abs=0.02)
    assert got.initial_psnr == pytest.approx(one.initial_psnr, abs=1e-4)
    assert [r["step"] for r in got.history] == [3, 6]
    assert np.mean(got.quantized.cov_codes == one.quantized.cov_codes) > 0.95
  with pytest.raises(InvalidInputError, match="one size"):
    codec.finetune_batch(fits, [target, target[:16]], 1, progress=False)


def test_finetune_batch_that_cannot_fit_is_a_clear_error(target, monkeypatch):
  fits = [gi_jax.init_gaussians(jax.random.key(i), 48, *target.shape[:2]) for i in range(2)]
  monkeypatch.setattr(gi_jax.memory, "_free_bytes_per_device", lambda devices: 1000)
  with pytest.raises(gi_jax.errors.ImageTooLargeError, match="not even one image"):
    codec.finetune_batch(fits, [target, target], 1, progress=False)


def test_finetune_batch_sharded_equals_one_device(target):
  assert len(jax.devices()) == 4  # tests/conftest.py
  # 3 images on 4 devices: padded with a copy of the last one, whose result is dropped.
  images = [target, target[::-1], 1 - target]
  fits = gi_jax.fit_batch(images, 48, 20, progress=False, steps_per_call=20)
  config = codec.QuantizerConfig(position_step=0.5)
  kwargs = dict(config=config, seeds=[3, 4, 5], steps_per_call=3, backend="reference")
  records = []
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
  sharded = codec.finetune_batch(fits, images, 6, progress=records.append, mesh=mesh, **kwargs)
  single = codec.finetune_batch(fits, images, 6, progress=False, mesh=default_mesh(1),
                                **kwargs)
  assert len(sharded) == 3 and all(len(r["psnr"]) == 3 for r in records)
  for a, b in zip(sharded, single):
    assert a.psnr == pytest.approx(b.psnr, abs=1e-3)
    assert a.best_step == b.best_step
    assert np.mean(a.quantized.cov_codes == b.quantized.cov_codes) > 0.99


def _assert_best_candidate_kept(encoded, settings, sizes):
  """The file is the candidate with the best rd_score, and each candidate used its own K."""
  assert [c.codebook_size for c in encoded.candidates] == list(sizes)
  scores = [settings.rd_score(c.psnr, c.num_bytes) for c in encoded.candidates]
  kept = encoded.candidates[int(np.argmax(scores))]
  assert (kept.num_bytes, kept.psnr) == (len(encoded.data), encoded.tuned.psnr)
  assert encoded.tuned.quantized.codebooks.shape[1] == kept.codebook_size


def test_encode_images_batch(target):
  images = [target, 1 - target]
  settings = dataclasses.replace(codec.OURS, codebook_sizes=(4, 8))
  encoded = codec.encode_images(images, 40, 10, 4, settings=settings, backend="reference")
  for image, e in zip(images, encoded):
    decoded, info = codec.decode(e.data, backend="reference")
    assert abs(float(gi_jax.metrics.psnr(decoded, image)) - e.tuned.psnr) < 1e-3
    assert e.encode_seconds > e.entropy_seconds > 0
    _assert_best_candidate_kept(e, settings, (4, 8))


# -- the file --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits_back,color_bits", [(False, 0), (True, 0), (False, 6), (True, 4)])
def test_encode_decode_roundtrip_is_exact(bits_back, color_bits):
  # 64 Gaussians: the size the fine-tuning and CLI tests render too.
  quantized = random_quantized(64, color_bits=color_bits)
  data = codec.encode(quantized, H, W, bits_back=bits_back)
  image, info = codec.decode(data, backend="reference")
  canonical = canonicalize(quantized)
  assert_same_symbols(info["quantized"], canonical)
  assert bool(data[5] & container.FLAG_UNIFORM_COLORS) == bool(color_bits)
  # Bit-exact: the decoder's image is the decoder's render of the encoder's (canonical) symbols;
  # dequantized outside the decoder's jitted call, within float rounding.
  np.testing.assert_array_equal(image, render_quantized(canonical, H, W, "reference"))
  expected = render_decoded(canonical.dequantize(), H, W, "reference")
  np.testing.assert_allclose(image, expected, atol=1e-6)
  # Any order renders the same image up to float summation order.
  unordered = gi_jax.render(quantized.dequantize(), H, W, "reference")
  np.testing.assert_allclose(image, unordered, atol=2e-6)
  assert info["bpp"] == 8 * len(data) / (H * W)
  assert info["num_gaussians"] == quantized.num_gaussians and info["bits_back"] == bits_back


def test_render_decoded_batch_matches_one_by_one():
  sets = [random_quantized(64, seed=s).dequantize() for s in (1, 2, 3)]
  batch = render_decoded_batch(sets, H, W, "reference")
  assert batch.shape == (3, H, W, 3)
  for image, g in zip(batch, sets):
    np.testing.assert_allclose(image, render_decoded(g, H, W, "reference"), atol=1e-6)


@pytest.fixture(scope="module")
def mixed_files():
  """Files of two N, two layouts and two sizes, interleaved: decode_batch must regroup them."""
  sets = [(random_quantized(64, seed=1), H, W), (random_quantized(96, seed=2), H, W),
          (random_quantized(64, seed=3), H, W), (random_quantized(64, seed=4), 20, 40),
          (random_quantized(64, seed=5, position_step=0.25), H, W),
          (random_quantized(64, seed=6), H, W)]
  return [codec.encode(q, h, w) for q, h, w in sets]


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_batch_matches_decode_in_order(mixed_files, workers):
  with codec.decoder_pool(workers) as pool:  # workers=0: no pool, pool is None
    images = codec.decode_batch(mixed_files, "reference", executor=pool)
  groups = batch_groups(entropy_decode(mixed_files))
  assert sorted(len(members) for _, _, members in groups) == [1, 1, 1, 3]
  assert [members for _, _, members in groups][0] == [0, 2, 5]
  for data, image in zip(mixed_files, images):
    expected, info = codec.decode(data, "reference")
    assert image.shape == (info["height"], info["width"], 3)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_decode_batch_names_the_corrupt_file(mixed_files, monkeypatch):
  files = list(mixed_files)
  files[1] = files[1][:-7]
  with codec.decoder_pool(2) as pool:
    with pytest.raises(CodecError, match="^file 1: "):
      codec.decode_batch(files, "reference", executor=pool)
  names = [f"f{i}.gimg" for i in range(len(files))]
  with pytest.raises(CodecError, match="^f1.gimg: "):
    codec.decode_batch(files, "reference", names=names)
  # A set that fails the render's checks is named too.
  monkeypatch.setattr(codec.render, "MAX_INTERSECTIONS", 10)
  with pytest.raises(CodecError, match="the Gaussians of f0.gimg touch"):
    codec.decode_batch(mixed_files, "reference", names=names)
  with pytest.raises(InvalidInputError, match="5 names for 6 files"):
    codec.decode_batch(mixed_files, "reference", names=names[:5])


@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_a_shared_render_capacity_changes_no_pixel_and_compiles_once(backend):
  # Sets of one N whose Gaussians grow (a larger covariance step) touch more tiles: each one's
  # own capacity differs.
  q = random_quantized(300, seed=1)
  sets = [dataclasses.replace(q, cov_scale=q.cov_scale * f) for f in (1, 2, 4)]
  own = [render_capacity([q], H, W) for q in sets]
  shared = render_capacity(sets, H, W)
  assert shared == max(own) and len(set(own)) > 1
  for q in sets:
    expected = render_quantized(q, H, W, backend)
    for capacity in (shared, 4 * shared):
      np.testing.assert_array_equal(render_quantized(q, H, W, backend, capacity=capacity),
                                    expected)
  before = codec.render._render._cache_size()
  for q in sets:
    render_quantized(q, H, W, backend, capacity=8 * shared)
  assert codec.render._render._cache_size() == before + 1
  assert render_capacity([], H, W) == 0


def test_render_quantized_batch_checks_its_sets(monkeypatch):
  sets = [random_quantized(64, seed=s) for s in (1, 2)]
  with pytest.raises(InvalidInputError, match="set 1 differs"):
    render_quantized_batch([sets[0], random_quantized(65, seed=2)], H, W, "reference")
  broken = dataclasses.replace(sets[1], cov_scale=np.full(3, np.inf, np.float32))
  with pytest.raises(CodecError, match="set 1 of the batch: decoded Gaussians are not finite"):
    render_quantized_batch([sets[0], broken], H, W, "reference")
  monkeypatch.setattr(codec.render, "MAX_INTERSECTIONS", 10)
  with pytest.raises(CodecError, match="set 0 of the batch touch .* above the decoder's limit"):
    render_quantized_batch(sets, H, W, "reference")
  with pytest.raises(CodecError, match="the Gaussians of file touch"):
    codec.decode(codec.encode(sets[0], H, W), "reference")


def test_roundtrip_rs_and_duplicates():
  q = random_quantized(120, seed=5, parameterization="rs")
  # Repeat some Gaussians: a multiset must survive bits-back ordering too.
  order = np.concatenate([np.arange(120), np.arange(20)])
  q = q.permute(order)
  for bits_back in (False, True):
    back, header = decode_quantized(codec.encode(q, 20, 40, bits_back=bits_back))
    assert header.parameterization == "rs" and (header.height, header.width) == (20, 40)
    np.testing.assert_array_equal(back.position_codes, canonicalize(q).position_codes)
    np.testing.assert_array_equal(back.cov_codes, canonicalize(q).cov_codes)


@pytest.mark.parametrize("bits_back", [False, True])
def test_grid_positions_roundtrip_and_cost_less(bits_back):
  q = random_quantized(200, seed=7, position_step=0.25)
  data = codec.encode(q, H, W, bits_back=bits_back)
  back, header = decode_quantized(data)
  assert header.position_cells == q.position_cells == (128, 128)
  np.testing.assert_array_equal(back.position_codes, canonicalize(q).position_codes)
  np.testing.assert_array_equal(back.dequantize().means_raw,
                                canonicalize(q).dequantize().means_raw)
  # Random positions: a quarter-pixel grid needs fewer bits than float16 positions.
  half = random_quantized(200, seed=7)
  assert len(data) < len(codec.encode(half, H, W, bits_back=bits_back))


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


@pytest.mark.parametrize("parameterization,wide_sigma", [("cholesky", 0.5), ("rs", 0.75)])
@pytest.mark.parametrize("bits_back", [True, False])
def test_wide_positions_roundtrip_on_even_cells_and_cost_less(parameterization, wide_sigma,
                                                              bits_back):
  q = wide_quantized(300, seed=4, parameterization=parameterization, wide_sigma=wide_sigma)
  wide = smaller_sigma(q) >= wide_sigma
  assert 50 < wide.sum() < 250 and not (q.position_codes[wide] % 2).any()
  assert (q.position_codes[~wide] % 2).any()
  data = codec.encode(q, H, W, bits_back=bits_back)
  back, header = decode_quantized(data)
  assert header.version == VERSION and header.wide_sigma == back.wide_sigma == wide_sigma
  assert_same_symbols(back, canonicalize(q))
  # The same symbols without the rule cost more (a bit per wide coordinate, less the four
  # models' cost, which at 300 Gaussians can take half of it).
  plain = codec.encode(dataclasses.replace(q, wide_sigma=0.0), H, W, bits_back=bits_back)
  assert len(data) < len(plain) - wide.sum() // 16
  np.testing.assert_array_equal(codec.decode(data)[0], codec.decode(plain)[0])


def test_wide_positions_with_predicted_covariance_roundtrip():
  correlated = correlated_quantized(300, seed=5)
  q = wide_quantized(300, seed=5, codes=correlated.cov_codes)
  q = dataclasses.replace(q, position_codes=q.position_codes & np.uint16(0xFFFE))  # all even
  data = codec.encode(q, H, W)
  assert codec.read_header(data)[0].cov_predictor is not None
  assert_same_symbols(decode_quantized(data)[0], canonicalize(q))


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


def test_encode_puts_wide_gaussians_on_even_cells_by_the_files_rule():
  # A set whose float32 rule kept some wide Gaussians on odd cells (forged here): the file's
  # rule decides, and moves them one cell down; the others keep their cells.
  q = wide_quantized(200, seed=6)
  wide = smaller_sigma(q) >= 0.5
  odd = dataclasses.replace(q, position_codes=q.position_codes | np.uint16(1))
  back = decode_quantized(codec.encode(odd, H, W))[0]
  expected = np.where(wide[:, None], q.position_codes, q.position_codes | np.uint16(1))
  assert_same_symbols(back, canonicalize(dataclasses.replace(q, position_codes=expected)))


def test_wide_sigma_is_checked():
  for bad in (0.3, -1.0, 40.0, float("nan"), True):
    with pytest.raises(InvalidInputError, match="wide_sigma"):
      codec.QuantizerConfig(position_step=0.25, wide_sigma=bad)
  with pytest.raises(InvalidInputError, match="grid positions"):
    codec.QuantizerConfig(wide_sigma=1.0)
  with pytest.raises(CodecError, match="grid positions"):
    codec.encode(dataclasses.replace(random_quantized(20), wide_sigma=1.0), H, W)
  data = codec.encode(wide_quantized(40, seed=2), H, W)
  with pytest.raises(CodecError, match="inconsistent flags"):  # the flag without a grid
    codec.decode(with_crc(data[:5] + bytes([data[5] & ~container.FLAG_POSITION_GRID]) + data[6:-4]))
  header = codec.read_header(data)[0]
  at = 6 + sum(len(bitio.varint(v)) for v in (H, W, header.num_gaussians, header.pad) + tuple(
      c - 1 for c in header.position_cells))
  assert data[at] == 4  # 0.5 px in eighths
  with pytest.raises(CodecError, match="threshold of 0"):
    codec.decode(with_crc(data[:at] + b"\x00" + data[at + 1:-4]))


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


@pytest.mark.parametrize("start,bits", [(streams.COV_COLUMN, 6), (streams.COLOR_COLUMN, 3)])
def test_prediction_is_invertible(start, bits):
  rng = np.random.default_rng(0)
  table = rng.integers(0, 1 << bits, (500, 10))
  for coef in (np.zeros(5), np.asarray([0.5, 3.0, -1.2, 0.7, 80.0]), np.asarray([1e4] * 5)):
    coef = coef.astype(np.float16).astype(np.float32)
    coded = prediction.predict(table, coef, bits, start)
    residuals = coded[:, start + 1:start + 3]
    assert residuals.min() >= 0 and residuals.max() < 2 << bits
    np.testing.assert_array_equal(np.delete(coded, [start + 1, start + 2], 1),
                                  np.delete(table, [start + 1, start + 2], 1))
    np.testing.assert_array_equal(prediction.unpredict(coded, coef, bits, start), table)
  top = (1 << bits) - 1
  bad = prediction.predict(np.full((1, 10), top), np.zeros(5, np.float32), bits, start)
  with pytest.raises(CodecError, match="outside its range"):
    prediction.unpredict(bad, np.asarray([0, top, 0, 0, top], np.float32), bits, start)


@pytest.mark.parametrize("color_bits", [0, 5])
def test_predictions_roundtrip_and_are_chosen_when_shorter(color_bits):
  q = correlated_quantized(color_bits=color_bits)
  data = codec.encode(q, H, W)
  back, header = decode_quantized(data)
  assert header.cov_predictor is not None
  assert (header.color_predictor is not None) == bool(color_bits)
  assert_same_symbols(back, canonicalize(q))
  # Chosen because it is shorter; uncorrelated codes keep the plain streams.
  header = codec.read_header(codec.encode(random_quantized(200, color_bits=color_bits), H, W))[0]
  assert header.cov_predictor is None and header.color_predictor is None
  # The colour flag means nothing without uniform colours: a forged one is refused.
  if not color_bits:
    with pytest.raises(CodecError, match="inconsistent flags"):
      forged = bytes([data[5] | container.FLAG_COLOR_PREDICTION])
      codec.decode(with_crc(data[:5] + forged + data[6:-4]))


def test_one_format_version():
  data = codec.encode(random_quantized(50, seed=2), H, W)
  assert data[4] == VERSION == 1
  for version in (0, 2, 6, 255):
    with pytest.raises(CodecError, match=f"unsupported format version {version}"):
      codec.decode(with_crc(data[:4] + bytes([version]) + data[5:-4]))


@pytest.mark.parametrize("stages,k", [(2, 16), (1, 2), (3, 256)])
def test_fixed_point_codebooks_roundtrip_and_are_shorter(stages, k):
  q = random_quantized(200, seed=5, codeword_fraction_bits=10)
  rng = np.random.default_rng(stages * k)
  spread = np.asarray([1.0] + [0.03] * (stages - 1))[:, None, None]  # residual stages are small
  values = np.round(rng.normal(0, 1, (stages, k, 3)) * spread * 1024) / 1024
  q = dataclasses.replace(q, codebooks=values.astype(np.float32),
                          color_indices=rng.integers(0, k, (200, stages)).astype(np.uint8))
  data = codec.encode(q, H, W)
  back, header = decode_quantized(data)
  assert_same_symbols(back, canonicalize(q))
  np.testing.assert_array_equal(back.codebooks, q.codebooks)
  # Fixed point where it is shorter (or float16 cannot hold the values); with 16 codewords and
  # more it takes under 12 bits a value against float16's 16.
  header_bytes, bits = codebooks.codebook_fields(q.codebooks)
  assert header.fixed_point_codebooks == (header_bytes == b"")
  if k >= 16:
    assert header.fixed_point_codebooks and len(bits) < 12 * stages * k * 3
  # Float16 codebooks off any coarse grid stay float16.
  plain = random_quantized(200, seed=5)
  assert not codec.read_header(codec.encode(plain, H, W))[0].fixed_point_codebooks
  # Fixed-point codewords with uniform colours mean nothing: a forged flag is refused.
  uniform = codec.encode(random_quantized(50, seed=2, color_bits=5), H, W)
  with pytest.raises(CodecError, match="inconsistent flags"):
    codec.decode(with_crc(uniform[:5] + bytes([uniform[5] | container.FLAG_FIXED_POINT_CODEBOOKS]) +
                          uniform[6:-4]))


@pytest.mark.parametrize("fields,message", [((25,), "finer than"), ((3, 0, 27), "27-bit"),
                                            ((3, -(1 << 25), 0), "beyond")])
def test_corrupt_fixed_point_codebooks_are_refused(fields, message):
  bits = bitio.BitWriter()
  bits.gamma(fields[0] + 1)
  if len(fields) > 1:
    bits.signed(fields[1])
    bits.write(fields[2], 5)
  bits.write(0, 64)
  with pytest.raises(CodecError, match=message):
    codebooks.read_fixed_point_codebooks(bitio.BitReader(bits.to_bytes()), 2, 8)


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


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 32, 33, 64, 1000])
def test_smaller_after_counts_later_smaller_keys(n):
  keys = np.random.default_rng(n).permutation(4 * n)[:n] - n  # distinct, some negative
  expected = [int((keys[i + 1:] < keys[i]).sum()) for i in range(n)]
  np.testing.assert_array_equal(payload._smaller_after(keys), expected)


@pytest.mark.parametrize("case", ["distinct", "repeats", "wide keys"])
def test_bits_back_runs_roundtrip(case):
  # The decoder ranks runs of Gaussians with sorts, with a sorted set once a Gaussian repeats,
  # and with tuples when the symbols do not pack into 62 bits: all must agree with the encoder.
  if case == "wide keys":
    g = gi_jax.init_gaussians(jax.random.key(3), 700, H, W)
    config = codec.QuantizerConfig(stages=4, codebook_size=256)
    q = to_quantized(g, init_quantizers(jax.random.key(4), g, config), config,
                           (H, W)).to_numpy()
  else:
    q = random_quantized(700, seed=3)
  if case == "repeats":  # 150 repeats: runs then repeat their own and other runs' Gaussians
    q = q.permute(np.concatenate([np.arange(700), np.arange(600, 700), np.arange(0, 50)]))
  data = codec.encode(q, H, W)
  back, header = decode_quantized(data)
  assert_same_symbols(back, canonicalize(q))
  widths = sum((m.span - 1).bit_length() for m in codec.read_header(data)[2])
  assert (widths > 62) == (case == "wide keys")
  # Bits-back ordering saves close to the bound in every case.
  report = bits_back_report(q, H, W, encoded=data)
  assert report["saved_bits"] > 0.9 * report["multiset_bound_bits"]


def test_bits_back_saving(quantized):
  report = bits_back_report(quantized, H, W)
  n = quantized.num_gaussians
  bound = log2_factorial(n)
  assert report["bound_bits"] == pytest.approx(bound)
  # Positive, close to log2(N!), and above it by no more than word rounding (2 × 32 bits).
  assert 0.9 * bound < report["saved_bits"] <= bound + 64


def test_rate_breakdown_adds_up_to_the_file(small_files):
  for data in small_files:
    info = codec.rate_breakdown(data)
    header = codec.read_header(data)[0]
    parts = info["header_bits"] + info["pad_bits"] + info["order_bits"] + info["crc_bits"] + sum(
        s["model_bits"] + s["payload_bits"] for s in info["streams"])
    assert parts == pytest.approx(8 * len(data))
    wide_streams = 4 if header.wide_sigma else 0  # the wide Gaussians' positions
    assert len(info["streams"]) == 7 + header.stages + wide_streams and info["header_bits"] > 0
    assert ("cov1_residual" in breakdown.stream_names(header)) == (header.cov_predictor is not None)
    # The ideal lengths are what ANS writes, to within its word rounding; bits-back then gives
    # back log2(N!) of them, to within that rounding (2 × 32 bits; at N = 40 the bound is 159).
    n = info["num_gaussians"]
    assert info["order_bound_bits"] == pytest.approx(-log2_factorial(n))
    assert info["bits_back"] == header.bits_back
    if header.bits_back:
      assert abs(info["order_bits"] - info["order_bound_bits"]) <= 64
    else:
      assert abs(info["order_bits"]) <= 64
  # Per stream, the payload is the entropy coder's cost of the symbols table less its model.
  q = random_quantized(40, seed=3)  # small_files[1], without bits-back or predictions
  assert codec.read_header(small_files[1])[0].cov_predictor is None
  table = streams.to_streams(streams.canonicalize(q))
  alphabets = streams.alphabets(q.cov_bits, streams.color_alphabets(*q.codebooks.shape[:2]))
  for s, column, alphabet in zip(codec.rate_breakdown(small_files[1])["streams"], table.T,
                                 alphabets):
    assert s["model_bits"] + s["payload_bits"] == pytest.approx(
        entropy.stream_model_and_bits(column, alphabet)[1])


def _histogram_counts(kind, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "peaked":  # a prediction residual: most symbols near the middle
    residuals = np.clip(np.round(rng.laplace(0, 3, 800)) + 40, 0, 79).astype(int)
    counts = np.bincount(residuals, None, 80)
  elif kind == "sparse":  # a few hundred symbols over 64 codes, with gaps
    counts = np.bincount(rng.integers(0, 64, 150), None, 64)
  elif kind == "flat":
    counts = np.bincount(rng.integers(0, 256, 20000), None, 256)
  else:  # "tiny": a handful of symbols
    counts = np.asarray([3, 0, 0, 1, 0, 7, 1])
  used = np.flatnonzero(counts)
  return counts[used[0]:used[-1] + 1].astype(np.float64)


@pytest.mark.parametrize("kind", ["peaked", "sparse", "flat", "tiny"])
def test_cheapest_histogram_codes_cost_no_more_than_rounding(kind):
  counts = _histogram_counts(kind)
  nearest, cheapest = entropy._histogram_codes(counts), entropy._cheapest_codes(counts)
  assert entropy._histogram_bits(cheapest, counts) <= entropy._histogram_bits(nearest, counts)
  # A model the decoder accepts: codes in range, ends used, every used symbol with a weight.
  assert cheapest.min() >= 0 and cheapest.max() <= entropy._Q_MAX
  assert cheapest[0] >= 1 and cheapest[-1] >= 1 and (cheapest[counts > 0] >= 1).all()
  model = entropy.StreamModel(512, 7, cheapest)
  bits = bitio.BitWriter()
  model.write(bits)
  back = entropy.StreamModel.read(bitio.BitReader(bits.to_bytes(), "model"), 512)
  np.testing.assert_array_equal(back.codes, cheapest)
  # The bits the encoder counts are what the model block and the ideal payload take.
  assert entropy._histogram_bits(cheapest, counts) + 1 + 2 * 9 == pytest.approx(
      entropy.model_bits(model) +
      entropy.payload_bits(model, np.concatenate([np.zeros(7), counts])))


def test_cheapest_histogram_codes_fill_costly_gaps():
  # Rounding sends a lone gap as two large steps (down to 0 and back); filling it with its
  # neighbours' weight costs the payload less than the steps cost the model.
  counts = _histogram_counts("sparse")
  nearest, cheapest = entropy._histogram_codes(counts), entropy._cheapest_codes(counts)
  assert (nearest == 0).any() and entropy._histogram_bits(
      cheapest, counts) < entropy._histogram_bits(nearest, counts) - 20


def test_cheapest_histogram_codes_shorten_files_and_decode_the_same(monkeypatch):
  q = random_quantized(200, seed=5)
  data = codec.encode(q, H, W)
  with monkeypatch.context() as m:
    m.setattr(entropy, "_cheapest_codes", entropy._histogram_codes)
    rounded = codec.encode(q, H, W)
  assert len(data) < len(rounded)
  assert_same_symbols(decode_quantized(data)[0], decode_quantized(rounded)[0])


def test_entropy_coding_beats_fixed_length(quantized):
  data = codec.encode(quantized, H, W, bits_back=False)
  header = codec.read_header(data)[0]
  assert 8 * header.payload_bytes < fixed_length_bits(quantized.num_gaussians)


def test_identical_gaussians_are_padded_to_the_length_rule():
  n = 5000
  q = random_quantized(1).permute(np.zeros(n, np.int64))
  data = codec.encode(q, H, W)
  assert 8 * len(data) >= n
  back, header = decode_quantized(data)
  assert header.pad > 0 and back.num_gaussians == n


def test_encode_refuses_what_the_format_cannot_hold(quantized):
  n = quantized.num_gaussians
  bad = [dict(cov_codes=np.full((n, 3), 64)), dict(color_indices=np.full((n, 2), 8)),
         dict(codebooks=np.full((2, 8, 3), 0.1, np.float32)),  # not float16 values
         dict(position_codes=np.full((n, 2), 0x7C00, np.uint16)),   # infinity
         dict(cov_scale=np.asarray([1, np.nan, 1], np.float32)),
         dict(color_indices=np.zeros((n, 3), np.uint8)),
         dict(color_bits=5),  # uniform colours without their steps and offsets
         dict(color_bits=9, codebooks=None, color_scale=np.ones(3, np.float32),
              color_offset=np.zeros(3, np.float32))]
  uniform = random_quantized(n, color_bits=3)
  bad_uniform = [dict(color_indices=np.full((n, 3), 8, np.uint8)),
                 dict(color_offset=np.asarray([0, np.inf, 0], np.float32)),
                 dict(color_indices=np.zeros((n, 2), np.uint8))]
  for base, cases in ((quantized, bad), (uniform, bad_uniform)):
    for fields in cases:
      with pytest.raises(CodecError):
        codec.encode(dataclasses.replace(base, **fields), H, W)
  for height, width in ((0, W), (H, 1 << 16), (1 << 14, 1 << 14)):
    with pytest.raises(CodecError):
      codec.encode(quantized, height, width)


# -- bad input -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_files():
  q = random_quantized(40, seed=3)
  grid = random_quantized(40, seed=3, position_step=0.5)
  files = [codec.encode(q, H, W, bits_back=b) for b in (True, False)] + [
      codec.encode(grid, H, W), codec.encode(random_quantized(40, seed=3, color_bits=6), H, W),
      codec.encode(correlated_quantized(200, seed=3, color_bits=4), H, W),
      codec.encode(random_quantized(40, seed=3, codeword_fraction_bits=10), H, W)]
  assert codec.read_header(files[-1])[0].fixed_point_codebooks
  header = codec.read_header(files[-2])[0]
  assert header.cov_predictor is not None and header.color_predictor is not None
  files.append(codec.encode(wide_quantized(60, seed=3), H, W))
  assert codec.read_header(files[-1])[0].wide_sigma == 0.5
  return files


def with_crc(body: bytes) -> bytes:
  import zlib
  return body + zlib.crc32(body).to_bytes(4, "little")


def test_clear_errors(small_files):
  data = small_files[0]
  cases = {
      b"": "truncated", b"GI": "truncated", b"PNG\x89rest": "not a GaussianImage",
      data[:4] + b"\x07" + data[5:]: "version 7", data[:30]: "truncated",
      data[:-1]: "checksum", data + b"\x00": "checksum",
      data[:10] + bytes([data[10] ^ 1]) + data[11:]: "checksum",
  }
  for bad, message in cases.items():
    with pytest.raises(CodecError, match=message):
      codec.decode(bad)
  with pytest.raises(CodecError, match="bytes"):
    codec.decode("GIMG")  # not bytes


def test_absurd_sizes_are_refused_before_allocating(small_files):
  body = small_files[0][:-4]
  header, *_ = codec.read_header(small_files[0])
  prefix = body[:6]

  def rebuilt(height, width, n, pad=1):
    # Re-write the varints, keep the rest, fix the checksum: only the claims are absurd.
    r = bitio.ByteReader(body)
    r.take(6)
    for _ in range(4):
      r.varint(1 << 62, "x")
    return with_crc(prefix + b"".join(bitio.varint(v) for v in (height, width, n, pad)) +
                    body[r.pos:])

  for height, width, n, message in [(H, W, 10**9, "Gaussians"), (H, W, 8 * 10**4, "Gaussians"),
                                    (10**6, W, 40, "height"), (30000, 30000, 40, "pixels"),
                                    (0, W, 40, "size"), (H, W, 0, "Gaussians")]:
    with pytest.raises(CodecError, match=message):
      codec.decode(rebuilt(height, width, n))
  with pytest.raises(CodecError, match="padding"):
    codec.decode(rebuilt(H, W, 40, pad=1000))
  # A plausible but wrong N (with a forged checksum) decodes to garbage or fails cleanly.
  for n in (header.num_gaussians - 1, header.num_gaussians + 1, header.num_gaussians + 50):
    try:
      q, _ = decode_quantized(rebuilt(H, W, n))
      assert q.num_gaussians == n
    except CodecError:
      pass


def test_hypothesis_fuzz_decoder(small_files):
  hypothesis = pytest.importorskip("hypothesis")
  st = hypothesis.strategies

  def check(data):
    try:
      q, header = decode_quantized(data)
    except CodecError:
      return
    # Whatever decodes is a consistent, bounded set.
    assert 1 <= q.num_gaussians <= 8 * len(data)
    assert q.cov_codes.shape == (q.num_gaussians, 3)

  edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)

  @hypothesis.settings(max_examples=200, deadline=None, derandomize=True,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(which=st.integers(0, len(small_files) - 1), edits=edits,
                    cut=st.integers(0, 10**6),
                    fix_crc=st.booleans(), junk=st.binary(max_size=64),
                    mode=st.sampled_from(["edit", "truncate", "junk", "magic_junk"]))
  def fuzz(which, edits, cut, fix_crc, junk, mode):
    data = bytearray(small_files[which])
    if mode == "edit":
      for pos, byte in edits:
        data[pos % len(data)] = byte
    elif mode == "truncate":
      data = data[:cut % len(data)]
    elif mode == "junk":
      data = bytearray(junk)
    else:
      data = bytearray(MAGIC + bytes([VERSION]) + junk)
    data = bytes(data)
    if fix_crc and len(data) > 4:
      data = with_crc(data[:-4])
    check(data)

  fuzz()


# -- command line ----------------------------------------------------------------------------------

def test_cli_roundtrip(tmp_path, target, capsys):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  out = str(tmp_path / "x.gimg")
  assert cli.encode_main([src, out, "--num_gaussians", "64", "--steps", "0",
                          "--finetune_steps", "0"]) == 0
  png = str(tmp_path / "back.png")
  assert cli.decode_main([out, png]) == 0
  with open(out, "rb") as f:
    _, info = codec.decode(f.read())
  decoded = io.load_image(png)
  assert decoded.shape == (H, W, 3)
  np.testing.assert_array_equal(decoded, io.quantize_8bit(np.asarray(_)))
  err = capsys.readouterr().err
  assert "bpp" in err and "no fitting steps" in err and "nan" not in err
  # Errors are one line and a non-zero status, not a traceback.
  assert cli.decode_main([src, str(tmp_path / "y.png")]) == 1
  assert "not a GaussianImage file" in capsys.readouterr().err
  assert cli.main(["nonsense"]) == 2
  chosen = str(tmp_path / "k.gimg")
  assert cli.encode_main([src, chosen, "--num_gaussians", "64", "--steps", "0",
                          "--finetune_steps", "2", "--codebook_sizes", "4,8"]) == 0
  assert "of 4 (" in capsys.readouterr().err
  assert cli.encode_main([src, str(tmp_path / "bad.gimg"), "--codebook_sizes", "4,1"]) == 1
  assert "codebook_size" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")
  wide = str(tmp_path / "w.gimg")
  for flags, wide_sigma in [(["--wide_sigma", "0.5", "--wide_min_pixels", "0"], 0.5),
                            (["--wide_sigma", "0.5"], 0.0),  # 16 pixels per Gaussian: not wide
                            (["--wide_min_pixels", "10"], 2.0)]:
    assert cli.encode_main([src, wide, "--num_gaussians", "64", "--steps", "0",
                            "--finetune_steps", "0", *flags]) == 0
    with open(wide, "rb") as f:
      assert codec.read_header(f.read())[0].wide_sigma == wide_sigma
  assert cli.encode_main([src, str(tmp_path / "bad.gimg"), "--paper", "--wide_sigma", "2"]) == 1
  assert "grid positions" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")
  for rate in ("nan", "0", "-1"):
    assert cli.encode_main([src, str(tmp_path / "bad.gimg"), "--learning_rate", rate]) == 1
    assert "learning_rate must be a finite number > 0" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")


@pytest.mark.parametrize("sizes", ["4,x", "0", "8,-1", ""])
def test_cli_codebook_sizes_are_positive_integers(tmp_path, sizes, capsys):
  # gi-encode parses the list itself: the codec's commands need nothing of the experiments.
  with pytest.raises(SystemExit) as stop:
    cli.encode_main(["in.png", str(tmp_path / "out.gimg"), "--codebook_sizes", sizes])
  assert stop.value.code == 2
  assert "--codebook_sizes must be positive integers" in capsys.readouterr().err
  parsed = cli._encode_parser().parse_args(["in.png", "out.gimg", "--codebook_sizes", "16,32"])
  assert parsed.codebook_sizes == (16, 32)


def test_cli_encodes_at_a_target_bpp(tmp_path, target, capsys):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  out = str(tmp_path / "x.gimg")
  # 32×32 is far below the pixels per Gaussian the model was measured on: the log says so.
  assert cli.encode_main([src, out, "--bpp", "4", "--steps", "0", "--finetune_steps", "0"]) == 0
  model = rate_model()
  n = model.gaussians_for_bpp(4, H, W)
  with open(out, "rb") as f:
    assert codec.read_header(f.read())[0].num_gaussians == n
  err = capsys.readouterr().err
  assert f"--bpp 4: pass 1: {n} Gaussians (predicted {model.bpp(n, H, W):.4f} bpp" in err
  assert "outside" in err
  for argv, message in [(["--bpp", "0.001"], "below the smallest"),
                        (["--bpp", "4", "--paper"], "no rate model"),
                        (["--bpp", "4", "--bpp_passes", "0"], "passes must be"),
                        (["--num_gaussians", "10", "--bpp_passes", "2"], "needs --bpp")]:
    assert cli.encode_main([src, str(tmp_path / "bad.gimg")] + argv) == 1
    assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")
  with pytest.raises(SystemExit):
    cli.encode_main([src, out, "--bpp", "4", "--num_gaussians", "10"])
  assert "not allowed with" in capsys.readouterr().err


def test_cli_info_says_where_the_bits_go(tmp_path, small_files, capsys):
  names = []
  for i, data in enumerate(small_files[:2]):
    names.append(str(tmp_path / f"in{i}.gimg"))
    with open(names[-1], "wb") as f:
      f.write(data)
  assert cli.decode_main(["--info"] + names) == 0
  out = capsys.readouterr().out
  for name, data in zip(names, small_files):
    assert f"{name}: {W}×{H}, 40 Gaussians, {len(data):,} bytes" in out
  assert out.count("color1 ") == 2 and "order (bits-back" in out and "not bits-back" in out
  assert sorted(os.listdir(tmp_path)) == ["in0.gimg", "in1.gimg"]  # renders nothing
  # A bad file is named, the others still reported, and the status says so.
  assert cli.decode_main(["--info", str(tmp_path / "missing.gimg"), names[0]]) == 1
  captured = capsys.readouterr()
  assert "missing.gimg" in captured.err and names[0] in captured.out
  with pytest.raises(SystemExit):
    cli.decode_main(["--info", names[0], "--out_dir", str(tmp_path / "out")])
  assert "--out_dir" in capsys.readouterr().err


def test_cli_decodes_many_files_into_a_folder(tmp_path, mixed_files, capsys):
  names = []
  for i, data in enumerate(mixed_files):
    names.append(str(tmp_path / f"in{i}.gimg"))
    with open(names[-1], "wb") as f:
      f.write(data)
  out = tmp_path / "out"
  for workers in ("0", "2"):
    assert cli.decode_main(names + ["--out_dir", str(out), "--batch_files", "4",
                                    "--workers", workers, "--backend", "reference"]) == 0
    assert "6 files" in capsys.readouterr().err
    for i, data in enumerate(mixed_files):
      image, _ = codec.decode(data, "reference")
      np.testing.assert_array_equal(io.load_image(str(out / f"in{i}.png")),
                                    io.quantize_8bit(image))
  # A corrupt file in the second batch: named, and nothing is written, not even the first batch;
  # a folder that existed keeps what it had, one the run created is removed.
  with open(names[5], "wb") as f:
    f.write(mixed_files[5][:-3])
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  (out / "in0.png").write_bytes(b"old")
  before["in0.png"] = b"old"
  assert cli.decode_main(names + ["--out_dir", str(out), "--batch_files", "4"]) == 1
  assert f"{names[5]}: " in capsys.readouterr().err
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
  fresh = tmp_path / "fresh"
  assert cli.decode_main(names + ["--out_dir", str(fresh), "--batch_files", "4"]) == 1
  assert f"{names[5]}: " in capsys.readouterr().err
  assert not fresh.exists()
  twin = str(tmp_path / "a" / "in0.gimg")
  assert cli.decode_main([names[0], twin, "--out_dir", str(fresh)]) == 1
  assert "same name" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.decode_main(names[:3])
  assert "--out_dir" in capsys.readouterr().err


def test_cli_refuses_an_output_it_cannot_write_before_fitting(tmp_path, target, capsys,
                                                              monkeypatch):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  monkeypatch.setattr(cli, "encode_image", lambda *a, **k: pytest.fail("encoded"))
  assert cli.encode_main([src, str(tmp_path)]) == 1
  assert "is a folder" in capsys.readouterr().err
  (tmp_path / "file").write_text("")
  assert cli.encode_main([src, str(tmp_path / "file" / "x.gimg")]) == 1
  assert "cannot write there" in capsys.readouterr().err
  assert cli.decode_main([src, str(tmp_path)]) == 1
  assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("settings", ["OURS", "PAPER"])
def test_encode_image_decodes_to_the_tuned_image(target, settings):
  settings = getattr(codec, settings)
  encoded = codec.encode_image(target, 48, 20, 10, settings=settings, backend="reference")
  image, info = codec.decode(encoded.data, backend="reference")
  assert info["bpp"] == encoded.bpp
  np.testing.assert_array_equal(image, encoded.tuned.render("reference"))
  assert abs(float(gi_jax.metrics.psnr(image, target)) - encoded.tuned.psnr) < 1e-3
  grid = info["quantized"].position_cells
  assert grid == (None if settings is codec.PAPER else (4 * W, 4 * H))
  assert encoded.encode_seconds >= encoded.entropy_seconds > 0
  assert encoded.candidates == (
      Candidate(settings.quantizers.codebook_size, len(encoded.data), encoded.tuned.psnr),)


@pytest.mark.parametrize("rd_slope", [0.0, 1.7, 1e6])
def test_encode_image_keeps_the_codebook_size_with_the_best_rd_score(target, rd_slope):
  settings = dataclasses.replace(codec.OURS, codebook_sizes=(2, 16), rd_slope=rd_slope)
  encoded = codec.encode_image(target, 48, 20, 10, settings=settings, backend="reference")
  _assert_best_candidate_kept(encoded, settings, (2, 16))
  small, large = encoded.candidates
  if rd_slope == 0.0:  # quality alone
    assert encoded.tuned.psnr == max(small.psnr, large.psnr)
  if rd_slope == 1e6:  # size alone
    assert len(encoded.data) == min(small.num_bytes, large.num_bytes)
  image, _ = codec.decode(encoded.data, backend="reference")
  assert abs(float(gi_jax.metrics.psnr(image, target)) - encoded.tuned.psnr) < 1e-3


@pytest.mark.parametrize("bad", [dict(rd_slope=-1.0), dict(rd_slope=float("nan")),
                                 dict(codebook_sizes=(16, 1)), dict(codebook_sizes=(300,)),
                                 dict(codebook_sizes=(16, 16)), dict(codebook_sizes=(16.5,)),
                                 dict(codebook_sizes=(16, 32),
                                      quantizers=qz.QuantizerConfig(color_bits=6)),
                                 dict(lr_schedule="linear"), dict(finetune_lr_schedule="linear")])
def test_codec_settings_refuse_impossible_choices(bad):
  with pytest.raises(InvalidInputError):
    dataclasses.replace(codec.OURS, **bad)


@pytest.mark.parametrize("bad", [dict(wide=WidePositions(2.0), quantizers=qz.QuantizerConfig(
    position_step=0.25, wide_sigma=2.0)), dict(wide=WidePositions(2.0),
                                                quantizers=qz.QuantizerConfig())])
def test_codec_settings_refuse_impossible_wide_positions(bad):
  with pytest.raises(InvalidInputError, match="wide"):
    dataclasses.replace(codec.OURS, **bad)


@pytest.mark.parametrize("sigma,pixels", [(0.0, 64.0), (0.3, 64.0), (2.0, -1.0),
                                          (2.0, float("inf")), (2.0, float("nan")), (True, 64.0)])
def test_wide_positions_refuse_impossible_settings(sigma, pixels):
  with pytest.raises(InvalidInputError):
    WidePositions(sigma, pixels)


def test_wide_positions_apply_from_their_pixels_per_gaussian():
  wide = WidePositions(2.0, 64.0)
  assert wide.applies(512, 768, 6144) and not wide.applies(512, 768, 6145)
  assert WidePositions(2.0, 0.0).applies(1, 1, 10**6)
  assert codec.OURS.wide == WidePositions(2.0, 100.0)  # 393,216 / 100: up to 3,932
  configs = [codec.OURS.candidate_quantizers(512, 768, n)[0] for n in (800, 3932, 3933, 9000)]
  assert [c.wide_sigma for c in configs] == [2.0, 2.0, 0.0, 0.0]
  assert all(dataclasses.replace(c, wide_sigma=0.0) == codec.OURS.quantizers for c in configs)
  choice = dataclasses.replace(codec.OURS, codebook_sizes=(16, 32))
  assert [(c.codebook_size, c.wide_sigma) for c in choice.candidate_quantizers(512, 768, 800)] == [
      (16, 2.0), (32, 2.0)]
  assert codec.PAPER.wide is None and codec.PAPER.quantizers_for(512, 768, 10).wide_sigma == 0.0
  # The command lines' overrides: None keeps the settings' own, sigma 0 turns them off.
  assert override_wide(codec.OURS.wide) is codec.OURS.wide
  assert override_wide(codec.OURS.wide, 0.0, 10.0) is None
  assert override_wide(None, min_pixels_per_gaussian=0.0) == WidePositions(2.0, 0.0)
  assert override_wide(codec.OURS.wide, 1.5) == WidePositions(1.5, 100.0)


def test_settings_say_which_encodes_have_wide_positions():
  every = dataclasses.replace(codec.OURS, wide=None, quantizers=dataclasses.replace(
      codec.OURS.quantizers, wide_sigma=1.5))
  assert every.wide_positions == WidePositions(1.5, 0.0)
  assert codec.OURS.wide_positions is codec.OURS.wide and codec.PAPER.wide_positions is None


@pytest.mark.parametrize("encoder", ["encode_image", "encode_images"])
def test_encodes_use_wide_positions_by_pixels_per_gaussian(target, encoder):
  # 32×32 pixels: 8 Gaussians have 128 each (wide positions), 16 have 64 (none).
  for n, wide_sigma in [(8, 2.0), (16, 0.0)]:
    images = target if encoder == "encode_image" else [target, target]
    out = getattr(codec, encoder)(images, n, 4, 2, backend="reference")
    for encoded in [out] if encoder == "encode_image" else out:
      assert encoded.quantizers.wide_sigma == encoded.tuned.quantized.wide_sigma == wide_sigma
      assert codec.read_header(encoded.data)[0].wide_sigma == wide_sigma
      image, _ = codec.decode(encoded.data, backend="reference")
      np.testing.assert_array_equal(image, encoded.tuned.render("reference"))


@pytest.mark.parametrize("encoder", ["encode_image", "encode_images"])
def test_fine_tuning_follows_the_settings_schedule(target, encoder, monkeypatch):
  settings = dataclasses.replace(codec.OURS, lr_schedule="cosine",
                                 finetune_lr_schedule="hold_cosine")
  seen = []
  make_schedule = gi_jax.optim.make_schedule
  monkeypatch.setattr(gi_jax.optim, "make_schedule",
                      lambda name, *a: seen.append(name) or make_schedule(name, *a))
  images = target if encoder == "encode_image" else [target, target]
  getattr(codec, encoder)(images, 20, 2, 2, settings=settings, backend="reference")
  assert [name for name in seen if name != "cosine"] == ["hold_cosine"]


@pytest.mark.parametrize("encoder", ["encode_image", "encode_images"])
def test_more_gaussians_than_a_file_holds_fail_before_fitting(target, encoder, monkeypatch):
  fail = lambda *a, **k: pytest.fail("fitted")
  monkeypatch.setattr(pipeline, "fit", fail)
  monkeypatch.setattr(pipeline, "fit_batch", fail)
  n = container.MAX_GAUSSIANS + 1
  images = target if encoder == "encode_image" else [target]
  with pytest.raises(CodecError, match=f"1 to {n - 1} Gaussians, asked for {n}"):
    getattr(codec, encoder)(images, n, 1, 1)
  with pytest.raises(InvalidInputError, match="num_gaussians"):
    getattr(codec, encoder)(images, 0, 1, 1)


@pytest.mark.parametrize("flag,message", [
    ("--jpeg_qualities=20,500", "--jpeg_qualities must be integers in [0, 100]"),
    ("--jp2_bpp=0", "--jp2_bpp must be rates in bpp > 0"),
    ("--decode_repeats=0", "flag --decode_repeats=0"),
    ("--classic_from=/nonexistent/records.json", "--classic_from: no records file"),
])
def test_compress_experiment_refuses_bad_flags_before_any_work(tmp_path, flag, message):
  import subprocess
  import sys
  out = tmp_path / "rd"
  done = subprocess.run([sys.executable, "experiments/compress.py", "--crop=32",
                         "--num_gaussians=10", "--steps=1", "--finetune_steps=1", flag,
                         f"--out_dir={out}"], capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode != 0
  assert message in done.stderr and "Traceback" not in done.stderr
  assert not out.exists()


def test_compress_experiment_writes_compressai_json(tmp_path, target):
  import subprocess
  import sys
  out = tmp_path / "rd"
  dataset = tmp_path / "images"
  dataset.mkdir()
  io.save_image(str(dataset / "a.png"), target)
  io.save_image(str(dataset / "b.png"), target[::-1])
  # Another shape (as Kodak mixes landscape and portrait): encoded and rendered in its own batch.
  io.save_image(str(dataset / "c.png"), target[:, :24])
  cmd = [sys.executable, "experiments/compress.py", f"--dataset={dataset}", "--batch_size=2",
         "--num_gaussians=30,60",
         "--steps=10", "--finetune_steps=5", "--decode_repeats=1",
         "--jpeg_qualities=20,80",
         "--webp_qualities=20,80", "--avif_qualities=20,80", "--jp2_bpp=0.5,2",
         f"--out_dir={out}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode == 0, done.stderr[-2000:]
  ours = json.loads((out / "gaussianimage.json").read_text())
  assert set(ours) >= {"name", "description", "results"}
  assert len(ours["results"]["bpp"]) == len(ours["results"]["psnr-rgb"]) == 2
  jpeg = json.loads((out / "jpeg.json").read_text())
  assert len(jpeg["results"]["bpp"]) == 2
  anchors = json.loads((out / "bd_rate.json").read_text())["anchors"]
  assert len(anchors["JPEG"]["psnr-rgb-gain-db"]) == 2
  assert (out / "rd.png").stat().st_size > 0
  assert len(list((out / "files").glob("*.gimg"))) == 6
  records = json.loads((out / "records.json").read_text())["records"]
  assert sorted(r["batch_size"] for r in records if r["codec"] == "ours") == [1, 1, 2, 2, 2, 2]
  for r in (r for r in records if r["codec"] == "ours"):
    assert r["codeword_fraction_bits"] == 10 and r["densify"] is False
    assert r["finetune_lr_schedule"] == codec.OURS.finetune_lr_schedule
    # The fit's 8-bit PSNR beside the file's: the codec's loss on one footing.
    assert r["fit_psnr"] == pytest.approx(r["fit_train_psnr"], abs=1.0)
    # Where the bits go, in parts that add up to the file.
    parts = [r[k] for k in ("position_bits_per_gaussian", "covariance_bits_per_gaussian",
                            "color_bits_per_gaussian", "side_bits_per_gaussian")]
    assert min(parts) > 0 and sum(parts) == pytest.approx(8 * r["bytes"] / r["num_gaussians"])
  assert all(codec.read_header(f.read_bytes())[0].fixed_point_codebooks
             for f in (out / "files").glob("*.gimg"))
  # Re-running resumes (nothing to encode) and --recode re-codes the files losslessly.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # Another run takes the classic codecs' records from this one instead of encoding again.
  other = tmp_path / "rd2"
  reuse = subprocess.run([c for c in cmd if not c.startswith(("--out_dir", "--num_gaussians"))]
                         + [f"--out_dir={other}", "--num_gaussians=30",
                            f"--classic_from={out / 'records.json'}"],
                         capture_output=True, text=True, timeout=600, cwd=repo)
  assert reuse.returncode == 0, reuse.stderr[-2000:]
  classic = [r for r in records if r["codec"] != "ours"]
  assert f"classic codecs: {len(classic)} records taken from" in reuse.stdout
  reused = json.loads((other / "records.json").read_text())["records"]
  assert [r for r in reused if r["codec"] != "ours"] == classic
  assert json.loads((other / "bd_rate.json").read_text())["anchors"].keys() == anchors.keys()
  again = subprocess.run(cmd + ["--recode", "--noclassic"], capture_output=True, text=True,
                         timeout=600, cwd=repo)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "recoded: 0 files rewritten" in again.stdout
  timings = ("decode_cold_seconds", "decode_seconds", "entropy_decode_seconds")
  untimed = lambda rs: [{k: v for k, v in r.items() if k not in timings} for r in rs]
  recoded = json.loads((out / "records.json").read_text())["records"]
  assert untimed(recoded) == untimed(records)
  assert all(r["entropy_decode_seconds"] < r["decode_seconds"]
             for r in recoded if r["codec"] == "ours")
  assert all(r["format_version"] == VERSION for r in recoded if r["codec"] == "ours")
  records = recoded  # as the runs below find them (their decodes timed again)
  # A per-image codebook choice is a configuration of its own, beside the earlier files.
  choose = subprocess.run(cmd + ["--noclassic", "--num_gaussians=30", "--codebook_sizes=4,8"],
                          capture_output=True, text=True, timeout=600, cwd=repo)
  assert choose.returncode == 0, choose.stderr[-2000:]
  chosen = [r for r in json.loads((out / "records.json").read_text())["records"]
            if r not in records]
  assert len(chosen) == 3 and len(list((out / "files").glob("*.gimg"))) == 9
  for r in chosen:
    assert r["codebook_sizes"] == [4, 8] and r["kept_codebook_size"] in (4, 8)
    assert [c["codebook_size"] for c in r["candidates"]] == [4, 8]
  # It resumes too, and a run without the choice still counts only its own records.
  for extra in (["--codebook_sizes=4,8"], []):
    again = subprocess.run(cmd + ["--noclassic", "--num_gaussians=30", *extra],
                           capture_output=True, text=True, timeout=600, cwd=repo)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "N=30:" not in again.stdout  # nothing encoded
  assert len(json.loads((out / "records.json").read_text())["records"]) == len(records) + 3
  # The summary covers the images of the run, not every image in the records file.
  one = subprocess.run(cmd + ["--noclassic", "--max_images=1"], capture_output=True, text=True,
                       timeout=600, cwd=repo)
  assert one.returncode == 0, one.stderr[-2000:]
  summary = json.loads((out / "gaussianimage.json").read_text())
  assert summary["description"].startswith("1 image(s)")
  assert summary["results"]["bpp"] == sorted(r["bpp"] for r in records
                                             if r["codec"] == "ours" and r["image"] == "a.png")


def test_quantizers_experiment_shares_one_fit_per_image(tmp_path, target):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  dataset = tmp_path / "images"
  dataset.mkdir()
  io.save_image(str(dataset / "a.png"), target)
  out = tmp_path / "q"
  cmd = [sys.executable, "experiments/quantizers.py", f"--dataset={dataset}",
         "--num_gaussians=30,60", "--steps=10", "--finetune_steps=5", "--variant=base:",
         "--variant=k4:codebook_size=4,commitment_weight=0.5", f"--out_dir={out}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
  assert done.returncode == 0, done.stderr[-2000:]
  records = json.loads((out / "quantizers.json").read_text())["records"]
  assert sorted((r["num_gaussians"], r["variant"]) for r in records) == [
      (30, "base"), (30, "k4"), (60, "base"), (60, "k4")]
  k4 = [r for r in records if r["variant"] == "k4"]
  assert all(r["overrides"] == {"codebook_size": 4, "commitment_weight": 0.5} for r in k4)
  # Keyed by the codec settings as compress.py keys them (learning rates and schedules included).
  assert all(r["codec"] == codec_record_key(codec.OURS) for r in records)
  # One fit per count, shared by the variants.
  for n in (30, 60):
    assert len({r["fit_psnr"] for r in records if r["num_gaussians"] == n}) == 1
  assert "BD-rate" in done.stdout
  # Unknown fields are one usage error, and nothing is added to the results.
  bad = subprocess.run(cmd + ["--variant=x:codebook=4"], capture_output=True, text=True,
                       timeout=600, cwd=repo)
  assert bad.returncode != 0 and "FIELD one of" in bad.stderr
  bad = subprocess.run(cmd + ["--variant=x:cov_bits=5.5"], capture_output=True, text=True,
                       timeout=600, cwd=repo)
  assert bad.returncode != 0 and "cov_bits='5.5' is not an integer" in bad.stderr
  assert json.loads((out / "quantizers.json").read_text())["records"] == records
  # Records keep their whole quantizer settings; those from before (no "quantizers") had float16
  # codewords, so this run's settings (fixed point) encode afresh instead of resuming them.
  assert all(r["quantizers"]["codeword_fraction_bits"] == 10 for r in records)
  for r in records:
    del r["quantizers"]
  (out / "quantizers.json").write_text(json.dumps({"records": records}))
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
  assert again.returncode == 0, again.stderr[-2000:]
  records = json.loads((out / "quantizers.json").read_text())["records"]
  assert sorted(r["quantizers"]["codeword_fraction_bits"] for r in records) == [0] * 4 + [10] * 4


# -- BD-rate ---------------------------------------------------------------------------------------

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


# -- rate control ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(32, 32), (512, 768), (333, 1000), (4000, 6000)])
@pytest.mark.parametrize("bpp", [0.05, 0.3, 1.0, 4.0])
def test_rate_model_picks_the_count_closest_to_the_target(size, bpp):
  model = rate_model(codec.OURS)
  try:
    n = model.gaussians_for_bpp(bpp, *size)
  except InvalidInputError as e:
    assert "below the smallest" in str(e) and model.bpp(1, *size) > bpp
    return
  miss = lambda k: abs(model.bits(k, *size) - bpp * size[0] * size[1])
  assert miss(n) <= miss(n + 1) and (n == 1 or miss(n) <= miss(n - 1))
  assert model.bpp(n + 1, *size) > model.bpp(n, *size)  # monotone, so the search is exact


def test_rate_model_refuses_what_it_cannot_predict():
  model = rate_model()
  for bad in (0, -0.1, float("nan"), float("inf"), True, "0.3", 1e9):
    with pytest.raises(InvalidInputError):
      model.gaussians_for_bpp(bad, 512, 768)
  assert (model.gaussians_for_bpp(np.float32(0.3), 512, 768)
          == model.gaussians_for_bpp(0.3, 512, 768))
  for settings in (codec.PAPER, dataclasses.replace(codec.OURS, bits_back=False),
                   dataclasses.replace(codec.OURS, codebook_sizes=(16, 32)),
                   dataclasses.replace(codec.OURS, wide=WidePositions(1.5))):
    with pytest.raises(InvalidInputError, match="no rate model"):
      rate_model(settings)
  # Step counts and learning rates change the fit, not what a Gaussian costs: still modelled.
  assert rate_model(dataclasses.replace(codec.OURS, steps=10, learning_rate=1e-3)) == model


def test_rate_model_of_wide_positions():
  narrow = rate_model(dataclasses.replace(codec.OURS, wide=None))
  model = rate_model()
  assert model == OURS_RATE and narrow.wide_factor == 1.0
  for n in (800, 3932, 3933, 9000):  # wide positions from 100 pixels per Gaussian
    wide = 512 * 768 >= 100 * n
    assert model.bits(n, 512, 768) == narrow.bits(n, 512, 768) * (model.wide_factor if wide else 1)
  everywhere = rate_model(dataclasses.replace(codec.OURS, wide=WidePositions(2.0, 0.0)))
  assert everywhere.bits(9000, 512, 768) == pytest.approx(model.wide_factor *
                                                          narrow.bits(9000, 512, 768))
  # The rule on every encode, given in the quantizers instead, is the same model.
  assert rate_model(dataclasses.replace(
      codec.OURS, wide=None, quantizers=dataclasses.replace(codec.OURS.quantizers,
                                                            wide_sigma=2.0))) == everywhere


def _rate_model_files() -> dict:
  path = os.path.join(os.path.dirname(__file__), "fixtures", "rate_model_files.json")
  with open(path) as f:
    return json.load(f)


def test_wide_factor_is_what_the_measured_pairs_saved():
  ratios = [p["bytes_wide"] / p["bytes_plain"] for p in _rate_model_files()["wide_pairs"]]
  assert len(ratios) >= 10
  assert np.median(ratios) == pytest.approx(codec.rate.WIDE_FACTOR, abs=5e-4)


def test_rate_model_predicts_the_files_it_was_fitted_on():
  records = _rate_model_files()["files"]
  assert len(records) == 96
  model = rate_model(dataclasses.replace(codec.OURS, wide=None))  # as these files were made
  errors = [model.bits(r["num_gaussians"], r["height"], r["width"]) / (8 * r["bytes"]) - 1
            for r in records]
  assert np.median(np.abs(errors)) < 0.015 and np.max(np.abs(errors)) < 0.055
  assert all(model.measured(r["num_gaussians"], r["height"], r["width"]) for r in records)


@pytest.mark.parametrize("size", [(32, 32), (512, 768)])
@pytest.mark.parametrize("miss", [0.9, 1.0, 1.07])
def test_corrected_rate_model_predicts_the_file_it_was_corrected_by(size, miss):
  model = rate_model()
  n = model.gaussians_for_bpp(0.3, 512, 768) if size == (512, 768) else 50
  corrected = model.corrected(miss * model.bits(n, *size), n, *size)
  assert corrected.bits(n, *size) == pytest.approx(miss * model.bits(n, *size), rel=1e-12)
  assert corrected.bits(2 * n, *size) == pytest.approx(miss * model.bits(2 * n, *size), rel=1e-12)
  assert corrected.measured_pixels_per_gaussian == model.measured_pixels_per_gaussian
  for bits, count in [(0, n), (-5.0, n), (float("nan"), n), (True, n), (1e4, 0), (1e4, 2.5),
                      (1e4, codec.format.MAX_GAUSSIANS + 1)]:
    with pytest.raises(InvalidInputError):
      model.corrected(bits, count, *size)


def test_encode_for_bpp_corrects_each_pass_by_the_last_file(target):
  lines = []
  result = codec.encode_for_bpp(target, 4.0, 5, 3, passes=3, log=lines.append)
  model = rate_model()
  first = result.passes[0]
  assert first.num_gaussians == model.gaussians_for_bpp(4.0, H, W)
  assert first.predicted_bpp == model.bpp(first.num_gaussians, H, W)
  for before, after in zip(result.passes, result.passes[1:]):
    model = model.corrected(before.bpp * H * W, before.num_gaussians, H, W)
    assert after.num_gaussians == model.gaussians_for_bpp(4.0, H, W)
  # Each pass is one encode, its N new; the kept file is the one closest to the target.
  assert len({p.num_gaussians for p in result.passes}) == len(result.passes) <= 3
  assert result.encoded.bpp == min((p.bpp for p in result.passes), key=lambda b: abs(b - 4.0))
  assert codec.read_header(result.encoded.data)[0].num_gaussians in {
      p.num_gaussians for p in result.passes}
  assert lines[0].startswith(f"pass 1: {first.num_gaussians} Gaussians (predicted ")
  assert len(result.passes) == 1 or lines[-1].startswith("kept pass ")
  for bad in (0, 1.5, True):
    with pytest.raises(InvalidInputError, match="passes"):
      codec.encode_for_bpp(target, 4.0, 5, 3, passes=bad)
