"""gi_jax.codec.rvq: k-means, residual VQ with EMA codebooks, fixed-point codewords.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gi_jax import codec
from gi_jax.codec.rvq import kmeans, rvq_dequantize, rvq_ema_update, rvq_indices, rvq_init, rvq_quantize
from gi_jax.codec.rvq import MAX_CODEWORD_INT, nearest, transmitted
from gi_jax.errors import InvalidInputError


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
