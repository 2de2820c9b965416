"""The Gaussians pytree: parameterisations, derived quantities, conversion and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import errors


def test_cholesky_covariance_and_conic():
  g = gi_jax.Gaussians.cholesky(jnp.zeros((1, 2)), jnp.asarray([[1.5, 0.5, 0.5]]), jnp.ones((1, 3)))
  # L = [[2, 0], [0.5, 1]] -> Σ = [[4, 1], [1, 1.25]]
  np.testing.assert_allclose(g.covariance, [[4.0, 1.0, 1.25]])
  np.testing.assert_allclose(g.determinant, [4.0])
  np.testing.assert_allclose(g.conic, [[1.25 / 4, -1 / 4, 4 / 4]])
  lam = 2.625 + np.sqrt(max(0.1, 2.625**2 - 4.0))
  assert int(g.radius[0]) == int(np.ceil(3 * np.sqrt(lam)))
  np.testing.assert_allclose(g.pixel_means(10, 20), [[10.0, 5.0]])


def test_rs_covariance():
  theta_raw = jnp.asarray([[0.0]])  # θ = 2π·sigmoid(0) = π: R = -I, Σ = diag(s²)
  g = gi_jax.Gaussians.rs(jnp.zeros((1, 2)), jnp.asarray([[1.5, -2.5]]), theta_raw,
                          jnp.ones((1, 3)))
  np.testing.assert_allclose(g.covariance, [[4.0, 0.0, 4.0]], atol=1e-6)
  np.testing.assert_allclose(g.scale_raw, [[1.5, -2.5]])
  np.testing.assert_allclose(g.rot_raw, [[0.0]])
  with pytest.raises(AttributeError):
    g.chol_raw


def test_rs_to_cholesky_preserves_covariance_and_render():
  k1, k2 = jax.random.split(jax.random.key(0))
  g = gi_jax.init_gaussians(k1, 200, 32, 32, "rs")
  g = gi_jax.Gaussians(g.means_raw, jax.random.normal(k2, (200, 3)) * 2, g.colors, "rs")
  c = g.to_cholesky()
  assert c.parameterization == "cholesky"
  np.testing.assert_allclose(c.covariance, g.covariance, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gi_jax.render(c, 32, 32), gi_jax.render(g, 32, 32), atol=1e-4)


def test_init_is_deterministic_and_in_range():
  a = gi_jax.init_gaussians(jax.random.key(3), 500, 40, 60)
  b = gi_jax.init_gaussians(jax.random.key(3), 500, 40, 60)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  means = a.pixel_means(40, 60)
  assert bool(jnp.all(jnp.isfinite(a.means_raw)))
  assert float(means[:, 0].min()) >= 0 and float(means[:, 0].max()) <= 60
  assert float(a.cov_raw.min()) >= 0 and float(a.colors.max()) < 1


def test_pytree_roundtrip_and_static_parameterization():
  g = gi_jax.init_gaussians(jax.random.key(0), 10, 8, 8, "rs")
  leaves, treedef = jax.tree.flatten(g)
  assert len(leaves) == 3
  again = jax.tree.unflatten(treedef, leaves)
  assert again.parameterization == "rs"
  doubled = jax.jit(lambda g: jax.tree.map(lambda x: 2 * x, g))(g)
  assert doubled.parameterization == "rs"


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "10"])
def test_init_rejects_bad_counts(bad):
  with pytest.raises(errors.InvalidInputError):
    gi_jax.init_gaussians(jax.random.key(0), bad, 8, 8)


def test_validate_rejects_mismatched_and_nan():
  g = gi_jax.init_gaussians(jax.random.key(0), 10, 8, 8)
  with pytest.raises(errors.InvalidInputError, match="disagree"):
    gi_jax.Gaussians(g.means_raw, g.cov_raw[:5], g.colors).validate()
  with pytest.raises(errors.InvalidInputError, match="colors"):
    gi_jax.Gaussians(g.means_raw, g.cov_raw, g.colors.at[0, 0].set(jnp.inf)).validate()
  with pytest.raises(errors.InvalidInputError, match="parameterization"):
    gi_jax.init_gaussians(jax.random.key(0), 10, 8, 8, "svd")
  assert isinstance(errors.InvalidInputError("x"), ValueError)
