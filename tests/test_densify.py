"""Error-guided densification (gi_jax.densify): weak Gaussians moved to the error inside the
jitted loop, on schedule, through capacity recovery."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import errors, fitting, metrics
from gi_jax.densify import DensifySchedule, densify, make_post_step, select_weak
from gi_jax.init import from_pixels, gradient_init

FIELDS = ("means_raw", "cov_raw", "colors")


@functools.partial(jax.jit, static_argnums=(1, 2))
def _render(gaussians, height, width):
  # A fixed capacity compiles once per shape; an overflow would render NaN and fail the test.
  return gi_jax.render(gaussians, height, width, "reference", capacity=8192)


_densify = jax.jit(densify, static_argnums=(4,))


def _psnr(gaussians, target):
  height, width = target.shape[:2]
  return float(metrics.psnr(_render(gaussians, height, width), target))


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


