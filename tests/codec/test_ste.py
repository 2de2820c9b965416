"""gi_jax.codec.ste: straight-through roundings and their exact derivatives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gi_jax.codec.positions import grid_ste
from gi_jax.codec.ste import half_ste, round_ste


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
