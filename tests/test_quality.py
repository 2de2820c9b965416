"""Fit quality beyond the paper (#7): gradient initialisation, error-guided densification, and the
α-blending ablation renderer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import binning, errors, fitting, metrics
from gi_jax.densify import DensifySchedule, densify, make_post_step, select_weak
from gi_jax.init import from_pixels, gradient_init, hilbert_order, nearest_point_map
from gi_jax.io import load_image, sample_image_path
from gi_jax.raster_alpha import (AlphaGaussians, exclusive_segment_cumprod, rasterize_alpha,
                                 render_alpha, with_opacity)

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


# Eager (op-by-op) calls of these are slow; jitted, each compiles once.
_render_alpha = jax.jit(render_alpha, static_argnums=(1, 2), static_argnames=("capacity",))
_densify = jax.jit(densify, static_argnums=(4,))


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


# -- densification -------------------------------------------------------------------------------


def _left_half_problem():
  """A target with content in both halves, and Gaussians only in its left half.

  150 Gaussians are placed by the gradient on the left half; 50 more sit there with zero colour
  (negligible). Gradient descent alone barely reaches the right half in a few steps; densification
  should send the zero-colour ones there.
  """
  target = np.zeros((32, 64, 3), np.float32)
  yy, xx = np.mgrid[0:32, 0:64]
  target[..., 0] = 0.5 + 0.4 * np.sin(xx / 3.0) * (xx < 32)
  target[..., 1] = np.where((xx - 48) ** 2 + (yy - 16) ** 2 < 60, 0.9, 0.2)
  target[..., 2] = 0.3
  target = jnp.asarray(target)
  left = gradient_init(jax.random.key(0), target[:, :32], 150)
  xy = left.pixel_means(32, 32)
  useful = from_pixels(xy, jnp.sqrt(left.covariance[:, 0]), left.colors, 32, 64)
  idle_xy = jax.random.uniform(jax.random.key(1), (50, 2)) * jnp.asarray([31.0, 31.0])
  idle = from_pixels(idle_xy, jnp.full((50,), 1.0), jnp.zeros((50, 3)), 32, 64)
  init = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), useful, idle)
  return target, init


def test_select_weak_takes_negligible_degenerate_and_huge():
  target, g = _left_half_problem()
  # Gaussian 0 degenerate (l11 = 0: det 0), 1 huge, 2 tiny colour.
  cov = g.cov_raw.at[0].set(jnp.asarray([-0.5, 0.0, 0.5])).at[1].set(jnp.asarray([80.0, 0, 80.0]))
  g = gi_jax.Gaussians(g.means_raw, cov, g.colors.at[2].set(1e-6), g.parameterization)
  index, move = jax.jit(select_weak, static_argnums=(1, 2, 3))(g, 32, 64,
                                                               DensifySchedule(max_fraction=0.5))
  moved = set(np.asarray(index)[np.asarray(move)].tolist())
  assert {0, 1, 2} <= moved
  assert set(range(150, 200)) <= moved           # the zero-colour ones
  assert len(moved) < 100                        # not the useful ones


def test_densify_moves_idle_gaussians_to_the_error():
  target, g = _left_half_problem()
  image = _render(g, 32, 64)
  new, moved = _densify(jax.random.key(0), g, target, image, DensifySchedule(max_fraction=0.3))
  for name in FIELDS:
    assert getattr(new, name).shape == getattr(g, name).shape
    # Gaussians that stay are untouched.
    np.testing.assert_array_equal(getattr(new, name)[~moved], getattr(g, name)[~moved])
  moved = np.asarray(moved)
  assert moved[150:].all() and moved.sum() <= 60
  x = np.asarray(new.pixel_means(32, 64))[moved, 0]
  assert np.mean(x >= 32) > 0.8                    # the error is all in the right half
  assert _psnr(new, target) > _psnr(g, target) + 1.0


def test_post_step_runs_on_schedule_and_resets_optimizer_rows():
  target, g = _left_half_problem()
  optimizer = fitting.default_optimizer()
  loss = fitting.render_loss(32, 64, "reference")(4096)
  step = jax.jit(fitting.make_train_step(loss, optimizer))
  post = jax.jit(make_post_step(DensifySchedule(every=2, start=2, stop_fraction=1.0,
                                                max_fraction=0.3), 10, 32, 64, "reference")(4096))
  state = fitting.init_state(g, optimizer)
  state = step(state, target)                                  # step 1: no event
  after = post(state, target)
  for name in FIELDS:
    np.testing.assert_array_equal(getattr(after.params, name), getattr(state.params, name))
  state = step(state, target)                                  # step 2: event
  after = post(state, target)
  moved = np.any(np.asarray(after.params.means_raw != state.params.means_raw), axis=-1)
  assert moved[150:].all()
  for moments in (after.opt_state.mu, after.opt_state.n, after.opt_state.prev_grad):
    for name in FIELDS:
      rows = np.asarray(getattr(moments, name))
      assert (rows[moved] == 0).all() and (rows[~moved] != 0).any()
  assert int(after.max_count) > 0


def test_densification_helps_and_survives_capacity_recovery():
  target, g = _left_half_problem()
  schedule = DensifySchedule(every=25, start=25, stop_fraction=0.5)
  plain = gi_jax.fit(target, 0, 100, init=g, progress=False, steps_per_call=50)
  dense = gi_jax.fit(target, 0, 100, init=g, densify=schedule, progress=False, steps_per_call=50)
  assert dense.history[-1]["psnr"] > plain.history[-1]["psnr"] + 2.0
  # Starting with a capacity far too small forces redone calls; densification is a pure function
  # of the state, so the result is the same.
  tight = gi_jax.fit(target, 0, 100, init=g, densify=schedule, progress=False, steps_per_call=50,
                     capacity=256)
  assert tight.capacity > 256
  for name in FIELDS:
    np.testing.assert_allclose(getattr(tight.gaussians, name), getattr(dense.gaussians, name),
                               rtol=1e-5, atol=1e-5)


def test_densify_schedule_validation():
  assert DensifySchedule(every=10, start=5, stop_fraction=0.5).last_step(100) == 50
  events = [s for s in range(1, 101) if DensifySchedule(every=10, start=5, stop_fraction=0.5)
            .is_event(jnp.int32(s), 100)]
  assert events == [5, 15, 25, 35, 45]
  with pytest.raises(errors.InvalidInputError, match="every"):
    DensifySchedule(every=0)
  with pytest.raises(errors.InvalidInputError, match="max_fraction"):
    DensifySchedule(max_fraction=0.0)
  with pytest.raises(errors.InvalidInputError, match="blend='sum'"):
    gi_jax.fit(np.zeros((16, 16, 3), np.float32), 5, 1, densify=DensifySchedule(), blend="alpha",
               progress=False)


# -- α-blending ----------------------------------------------------------------------------------


def _two_overlapping(front_first: bool):
  xy = jnp.asarray([[16.0, 16.0], [17.0, 16.0]])
  colors = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  if not front_first:
    xy, colors = xy[::-1], colors[::-1]
  g = from_pixels(xy, jnp.asarray([3.0, 3.0]), colors, 32, 32)
  return AlphaGaussians(g, jnp.asarray([8.0, 8.0]))


def test_alpha_blending_front_gaussian_wins():
  image = np.asarray(_render_alpha(_two_overlapping(True), 32, 32, capacity=256))
  opacity = 1.0 / (1.0 + np.exp(-8.0))
  # Pixel (16, 16): red sits on it (σ = 0), blue is 1 px away (σ = 0.5·1/9).
  a_red = min(0.99, opacity)
  a_blue = min(0.99, opacity * np.exp(-0.5 / 9.0))
  np.testing.assert_allclose(image[16, 16], [a_red, 0.0, a_blue * (1.0 - a_red)], rtol=1e-5)
  # Swap the order: now blue is in front and wins its own pixel (17, 16) and this one.
  swapped = np.asarray(_render_alpha(_two_overlapping(False), 32, 32, capacity=256))
  np.testing.assert_allclose(swapped[16, 16], [a_red * (1.0 - a_blue), 0.0, a_blue], rtol=1e-5)
  assert swapped[16, 16, 2] > swapped[16, 16, 0]


def _dense_alpha(model, height, width):
  """Oracle: every Gaussian at every pixel, transmittance by cumprod over the index."""
  grid = binning.TileGrid(height, width)
  proj = binning.project(model.gaussians, grid)
  ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  px, py = xs.reshape(-1, 1).astype(jnp.float32), ys.reshape(-1, 1).astype(jnp.float32)
  tx, ty = px // binning.TILE, py // binning.TILE
  inside = ((tx >= proj.tile_min[:, 0]) & (tx < proj.tile_max[:, 0]) &
            (ty >= proj.tile_min[:, 1]) & (ty < proj.tile_max[:, 1]))
  from gi_jax.raster_reference import gaussian_alpha
  falloff, _, _ = gaussian_alpha(proj.means[None], proj.conics[None], px, py)
  alpha = jnp.minimum(0.99, model.opacity[None] * falloff)
  alpha = jnp.where(inside & (alpha >= 1 / 255), alpha, 0.0)
  trans = jnp.cumprod(jnp.concatenate([jnp.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
  return jnp.clip((alpha * trans) @ proj.colors, 0, 1).reshape(height, width, 3)


def test_alpha_blending_matches_dense_oracle():
  g = gi_jax.init_gaussians(jax.random.key(2), 60, 40, 40)
  model = AlphaGaussians(g, jax.random.normal(jax.random.key(3), (60,)))
  np.testing.assert_allclose(_render_alpha(model, 40, 40, capacity=1024),
                             jax.jit(_dense_alpha, static_argnums=(1, 2))(model, 40, 40), atol=2e-6)


def test_exclusive_segment_cumprod():
  x = jnp.asarray([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
  seg = jnp.asarray([0, 0, 0, 2, 2, 5])
  np.testing.assert_allclose(exclusive_segment_cumprod(x, seg), [1, 2, 6, 1, 5, 1])


def test_alpha_blending_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    g = gi_jax.init_gaussians(jax.random.key(5), 12, 24, 24, dtype=jnp.float64)
    g = gi_jax.Gaussians(g.means_raw, g.cov_raw + 1.0, g.colors, g.parameterization)
    grid = binning.TileGrid(24, 24)
    proj = binning.project(g, grid)
    bins = binning.bin_intersections(proj, grid, 512)
    weights = jax.random.normal(jax.random.key(6), (24, 24, 3), jnp.float64)
    opacity = jnp.linspace(0.3, 0.9, 12, dtype=jnp.float64)

    def loss(means, conics, colors, opacities):
      out = rasterize_alpha(means, conics, colors, opacities, bins, 24, 24)
      return jnp.sum(out * weights)

    args = (proj.means, proj.conics, proj.colors, opacity)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
    loss = jax.jit(loss)
    rng = np.random.default_rng(0)
    for i in range(4):
      direction = jnp.asarray(rng.normal(size=args[i].shape))
      eps = 1e-6
      plus = list(args)
      minus = list(args)
      plus[i] = args[i] + eps * direction
      minus[i] = args[i] - eps * direction
      numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
      analytic = jnp.sum(grads[i] * direction)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


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
