"""Fit quality beyond the paper (#7): gradient initialisation (gi_jax.init), and fits with it and
with α-blending. (Densification: test_densify.py; α-blending's renderer: test_raster_alpha.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import errors, init, metrics
from gi_jax.init import from_pixels, gradient_init, hilbert_order, nearest_point_map
from gi_jax.io import load_image, sample_image_path
from gi_jax.raster_alpha import with_opacity

FIELDS = ("means_raw", "cov_raw", "colors")
# One Gaussian count and image size for the initialisation tests, so each function compiles once.
N = 300


@pytest.fixture(scope="module")
def crop():
  """A 48×48 piece of kodim23 with edges and flat parts."""
  return jnp.asarray(load_image(sample_image_path())[200:248, 300:348])


@functools.partial(jax.jit, static_argnums=(1, 2))
def _render(gaussians, height, width):
  # A fixed capacity compiles once per shape; an overflow would render NaN and fail the test.
  return gi_jax.render(gaussians, height, width, "reference", capacity=8192)


def _psnr(gaussians, target):
  height, width = target.shape[:2]
  return float(metrics.psnr(_render(gaussians, height, width), target))


# -- gradient initialisation ---------------------------------------------------------------------


def test_gradient_init_is_deterministic_per_seed(crop):
  a = gradient_init(jax.random.key(3), crop, N)
  b = gradient_init(jax.random.key(3), crop, N)
  c = gradient_init(jax.random.key(4), crop, N)
  for name in FIELDS:
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert not np.array_equal(a.means_raw, c.means_raw)
  assert a.num_gaussians == N and a.validate() is a


def test_gradient_init_follows_the_gradient():
  # Left half flat grey, right half fine stripes: the stripes should get most Gaussians, smaller.
  image = np.full((48, 48, 3), 0.5, np.float32)
  image[:, 24:, :] = (np.arange(24) % 4 < 2)[None, :, None] * 0.8 + 0.1
  g = gradient_init(jax.random.key(0), jnp.asarray(image), N)
  x = np.asarray(g.pixel_means(48, 48))[:, 0]
  sigma = np.sqrt(np.asarray(g.covariance)[:, 0])
  right = x >= 24
  assert right.sum() > 3 * (~right).sum()
  assert np.median(sigma[right]) < 0.5 * np.median(sigma[~right])
  # The uniform share (0.3 by default, half of it on the left) keeps the flat half covered.
  assert (~right).sum() >= 0.5 * 0.3 * N * 0.5


def test_gradient_init_beats_random_init(crop):
  random_psnr = _psnr(gi_jax.init_gaussians(jax.random.key(0), N, 48, 48), crop)
  gradient_psnr = _psnr(gradient_init(jax.random.key(0), crop, N), crop)
  assert gradient_psnr > random_psnr + 6.0, (gradient_psnr, random_psnr)


@pytest.mark.parametrize("size,num", [(8, 1000), (16, 2000)])
def test_gradient_init_denser_than_pixels_is_not_saturated(crop, size, num):
  # Points closer than MIN_SIGMA allows get σ clipped up: their colours must shrink by the
  # larger overlap, or the first render is saturated and the clipped loss has no gradient.
  target = crop[:size, :size]
  g = gradient_init(jax.random.key(0), target, num)
  assert np.isclose(np.sqrt(np.asarray(g.covariance)[:, 0]), 0.3, atol=1e-4).mean() > 0.9
  image = np.asarray(gi_jax.render(g, size, size, "reference"))
  np.testing.assert_allclose(image.mean((0, 1)), np.asarray(target).mean((0, 1)), rtol=0.25)
  assert (image < 1).mean() > 0.9


def test_from_pixels_parameterizations_agree():
  xy = jnp.asarray([[0.0, 0.0], [10.5, 3.25], [31.9, 15.9]])
  sigma = jnp.asarray([0.3, 2.0, 7.5])
  colors = jnp.ones((3, 3))
  chol = from_pixels(xy, sigma, colors, 16, 32, "cholesky")
  rs = from_pixels(xy, sigma, colors, 16, 32, "rs")
  expected = np.stack([sigma**2, np.zeros(3), sigma**2], -1)
  np.testing.assert_allclose(chol.covariance, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rs.covariance, expected, rtol=1e-5, atol=1e-6)
  # Positions survive the tanh round trip and stay strictly inside the image.
  means = np.asarray(rs.pixel_means(16, 32))
  np.testing.assert_allclose(means[1], [10.5, 3.25], rtol=1e-5)
  assert (means > 0).all() and (means < [32, 16]).all()


def test_gradient_init_settings_follow_the_density(crop):
  for threshold, settings in init.SETTINGS_BY_DENSITY:
    assert init.default_settings(threshold) == settings
  assert init.default_settings(99.0) == init.default_settings(30.0) != init.default_settings(100.0)
  assert init.default_settings(29.0) == init.default_settings(0.5) != init.default_settings(30.0)
  # The crop's 2,304 pixels: 300 Gaussians have 7.7 px each, 20 have 115 px.
  for count in (N, 20):
    uniform, scale = init.default_settings(crop.shape[0] * crop.shape[1] / count)
    by_density = gradient_init(jax.random.key(0), crop, count)
    given = gradient_init(jax.random.key(0), crop, count, uniform_fraction=uniform,
                          scale_factor=scale)
    for name in FIELDS:
      np.testing.assert_array_equal(getattr(by_density, name), getattr(given, name))


def test_gradient_init_rejects_bad_options(crop):
  with pytest.raises(errors.InvalidInputError, match="uniform_fraction"):
    gradient_init(jax.random.key(0), crop, 10, uniform_fraction=1.5)
  with pytest.raises(errors.InvalidInputError, match="num_gaussians"):
    gradient_init(jax.random.key(0), crop, 0)
  with pytest.raises(errors.InvalidInputError, match="init must be"):
    gi_jax.fit(crop, 10, 1, init="kmeans", progress=False)


def test_hilbert_order_and_voronoi():
  order = hilbert_order(5, 7)
  assert sorted(order.tolist()) == list(range(35))
  rows, cols = np.divmod(order, 7)
  # Consecutive pixels on the curve are neighbours, except where it leaves the image and re-enters.
  assert np.mean(np.abs(np.diff(rows)) + np.abs(np.diff(cols)) == 1) > 0.8
  # Jump flooding agrees with brute force nearest points.
  xy = jax.random.uniform(jax.random.key(0), (40, 2)) * jnp.asarray([31.0, 23.0])
  pixel = (jnp.round(xy[:, 1]).astype(jnp.int32) * 32 + jnp.round(xy[:, 0]).astype(jnp.int32))
  owner = np.asarray(nearest_point_map(xy, pixel, 24, 32))
  ys, xs = np.mgrid[0:24, 0:32]
  d = (xs[..., None] - np.asarray(xy)[:, 0]) ** 2 + (ys[..., None] - np.asarray(xy)[:, 1]) ** 2
  best = np.take_along_axis(d, owner[..., None], -1)[..., 0]
  assert np.mean(np.isclose(best, d.min(-1))) > 0.99


def test_fit_with_gradient_init_and_alpha_blend(crop):
  result = gi_jax.fit(crop, N, 30, init="gradient", progress=False, steps_per_call=30)
  start = _psnr(gradient_init(jax.random.key(0), crop, N), crop)
  assert result.history[-1]["psnr"] > start
  alpha = gi_jax.fit(crop, N, 60, blend="alpha", progress=False, steps_per_call=30)
  assert alpha.opacity.shape == (N,)
  assert alpha.history[-1]["psnr"] > alpha.history[0]["psnr"]
  image = alpha.render()
  np.testing.assert_allclose(float(metrics.psnr(image, crop)), alpha.history[-1]["psnr"], atol=0.5)
  model = with_opacity(alpha.gaussians, 0.25)
  np.testing.assert_allclose(model.opacity, 0.25, rtol=1e-6)
