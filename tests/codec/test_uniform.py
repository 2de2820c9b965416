"""gi_jax.codec.uniform: the learned uniform quantizer.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax.codec.uniform import uniform_codes, uniform_dequantize, uniform_init, uniform_quantize


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
