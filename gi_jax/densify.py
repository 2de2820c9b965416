"""Error-guided densification at a fixed budget: move useless Gaussians to where the error is.

The paper keeps its N Gaussians wherever gradient descent takes them; many end up contributing
almost nothing (a tiny colour or a vanishing area), while edges and texture stay under-fitted.
Every ``every`` steps until ``stop_fraction`` of the fit, :func:`densify` takes the Gaussians that
are negligible, degenerate or huge and re-places them:

- *negligible*: the integral of the Gaussian's contribution, ``‖colour‖·2π·sqrt(det Σ)`` (colour ×
  pixels²), is below ``min_contribution`` × the median over all Gaussians (the median, so one
  huge Gaussian does not make every other one look negligible); *degenerate*: ``det Σ``
  (nearly) zero or not finite; *huge*: radius above ``max_radius_fraction`` × the image size;
- at most ``max_fraction·N`` are moved per event (the weakest first), so shapes stay static;
- new positions are drawn in proportion to the per-pixel squared error of the current render
  (stratified, so they spread over all the error instead of piling onto its peak); each new
  Gaussian is isotropic, sized by its Voronoi cell among all Gaussians, and coloured with the mean
  residual ``target − render`` over that cell, divided by the expected overlap (as
  :mod:`gi_jax.init` does);
- the optimizer state of a moved Gaussian is reset to zero (every state leaf shaped like a parameter
  leaf), so old momentum does not throw it off its new place.

The count never changes and nothing recompiles. It runs inside the jitted step as a ``lax.cond`` on
the step counter, composed after the optimizer step (:func:`make_post_step`), so densification
happens inside :func:`gi_jax.fitting.optimize`'s device calls, with its capacity-overflow recovery.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gi_jax import errors, init
from gi_jax.gaussians import Gaussians, covariance_radius
from gi_jax.render import render_with_count


@dataclasses.dataclass(frozen=True)
class DensifySchedule:
  """When and how much to densify; pass to ``fit(..., densify=DensifySchedule())``.

  Attributes:
    every: steps between densification events (> 0).
    start: the first event happens at this step (>= 1).
    stop_fraction: no event after this fraction of the fit's steps, so the last moved Gaussians
      get time to converge. In [0, 1].
    max_fraction: at most ``ceil(max_fraction·N)`` Gaussians are moved per event. In (0, 1].
    min_contribution: a Gaussian is negligible when its contribution is below this multiple of the
      median contribution. >= 0; ``inf`` moves the ``max_fraction`` weakest every time.
    max_radius_fraction: a Gaussian whose radius exceeds this multiple of ``max(H, W)`` is moved.
    scale_factor: ``k`` of the new Gaussians' ``σ = k·sqrt(cell area/π)`` (see :mod:`gi_jax.init`).
    seed: seed of the random placement (each event folds in its step).
  """
  every: int = 100
  start: int = 100
  stop_fraction: float = 0.5
  max_fraction: float = 0.05
  min_contribution: float = 0.2
  max_radius_fraction: float = 1.0
  # Smaller than the initialisation's 1.0: new Gaussians go where the fit lacks detail.
  scale_factor: float = 0.7
  seed: int = 0

  def __post_init__(self):
    for name in ("every", "start"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.InvalidInputError(f"DensifySchedule.{name} must be an integer >= 1, "
                                       f"got {value!r}")
    if not 0.0 <= self.stop_fraction <= 1.0:
      raise errors.InvalidInputError(
          f"DensifySchedule.stop_fraction must lie in [0, 1], got {self.stop_fraction}")
    if not 0.0 < self.max_fraction <= 1.0:
      raise errors.InvalidInputError(
          f"DensifySchedule.max_fraction must lie in (0, 1], got {self.max_fraction}")
    if not self.min_contribution >= 0.0:
      raise errors.InvalidInputError(
          f"DensifySchedule.min_contribution must be >= 0, got {self.min_contribution}")
    if not self.max_radius_fraction > 0.0:
      raise errors.InvalidInputError(
          f"DensifySchedule.max_radius_fraction must be > 0, got {self.max_radius_fraction}")
    if not self.scale_factor > 0.0:
      raise errors.InvalidInputError(
          f"DensifySchedule.scale_factor must be > 0, got {self.scale_factor}")

  def last_step(self, total_steps: int) -> int:
    """The last step at which an event may happen, for a fit of ``total_steps``."""
    return int(math.floor(self.stop_fraction * total_steps))

  def is_event(self, step: jax.Array, total_steps: int) -> jax.Array:
    """[] bool: whether to densify after optimizer step ``step`` (1-based count of steps taken)."""
    return ((step >= self.start) & (step <= self.last_step(total_steps)) &
            ((step - self.start) % self.every == 0))


def contribution(gaussians: Gaussians) -> jax.Array:
  """[..., N] ``‖colour‖·2π·sqrt(det Σ)``: the integral of a Gaussian's rendered colour norm."""
  det = gaussians.determinant
  area = 2.0 * jnp.pi * jnp.sqrt(jnp.maximum(det, 0.0))
  return jnp.linalg.norm(gaussians.colors, axis=-1) * area


def select_weak(gaussians: Gaussians, height: int, width: int,
                schedule: DensifySchedule) -> tuple[jax.Array, jax.Array]:
  """Picks up to ``ceil(max_fraction·N)`` Gaussians to move, the most useless first.

  Args:
    gaussians: one Gaussian set [N].
    height: image height.
    width: image width.
    schedule: the thresholds.

  Returns:
    ``(index [K] int32, move [K] bool)``: the K weakest Gaussians (degenerate and huge first) and
    which of them are weak enough to move.
  """
  num = gaussians.num_gaussians
  k = min(num, max(1, math.ceil(schedule.max_fraction * num)))
  score = contribution(gaussians)
  det = gaussians.determinant
  finite = (jnp.isfinite(score) & jnp.all(jnp.isfinite(gaussians.means_raw), axis=-1) &
            jnp.all(jnp.isfinite(gaussians.covariance), axis=-1))
  # det ≤ 1e-6 px⁴ means σ_min·σ_max ≤ 1e-3 px²: a line that renders only by luck.
  degenerate = (det <= 1e-6) | ~finite
  huge = covariance_radius(gaussians.covariance) > schedule.max_radius_fraction * max(height, width)
  median = jnp.median(jnp.where(finite, score, 0.0))
  negligible = score < schedule.min_contribution * median
  weak = degenerate | huge | negligible
  # Degenerate and huge sort first (−inf), then by contribution.
  rank = jnp.where(degenerate | huge, -jnp.inf, jnp.where(finite, score, -jnp.inf))
  _, index = jax.lax.top_k(-rank, k)
  return index.astype(jnp.int32), weak[index]


def densify(key: jax.Array, gaussians: Gaussians, target: jax.Array, image: jax.Array,
            schedule: DensifySchedule) -> tuple[Gaussians, jax.Array]:
  """One densification event for one image: moves weak Gaussians to where the error is.

  Args:
    key: PRNG key of the placement.
    gaussians: one Gaussian set [N].
    target: [H, W, 3] the image being fitted.
    image: [H, W, 3] the current (clipped) render of ``gaussians``.
    schedule: thresholds and sizes.

  Returns:
    ``(gaussians, moved [N] bool)``: the same count and shapes, with the moved ones re-placed.
  """
  height, width = target.shape[:2]
  index, move = select_weak(gaussians, height, width, schedule)
  residual = target - image
  error = jnp.sum(jnp.square(residual), axis=-1)
  # A floor keeps the draw defined on a perfect fit (all-zero error).
  error = error + 1e-6 * jnp.mean(error) + 1e-20
  xy = gaussians.pixel_means(height, width)
  xy_new = init.sample_positions(key, error, index.shape[0])
  xy = xy.at[index].set(jnp.where(move[:, None], xy_new, xy[index]))
  # Size and colour from the Voronoi cells among all Gaussians, old and new, at their new places;
  # only the moved rows of ``fresh`` are used.
  fresh = init.cell_gaussians(xy, residual, schedule.scale_factor, gaussians.parameterization)
  moved = jnp.zeros((gaussians.num_gaussians,), bool).at[index].max(move)

  def place(old, new):
    return jnp.where(moved[:, None], new, old)

  out = dataclasses.replace(gaussians, means_raw=place(gaussians.means_raw, fresh.means_raw),
                            cov_raw=place(gaussians.cov_raw, fresh.cov_raw),
                            colors=place(gaussians.colors, fresh.colors))
  return out, moved


def reset_rows(tree, moved: jax.Array):
  """Zeroes the rows of ``moved`` Gaussians in every leaf shaped ``moved.shape + (d,)``.

  That is every per-Gaussian leaf of an optimizer state built on Gaussians (Adam, Adan moments,
  previous gradients); counters and other shapes are left alone.
  """

  def leaf(x):
    if hasattr(x, "shape") and x.ndim == moved.ndim + 1 and x.shape[:-1] == moved.shape:
      return jnp.where(moved[..., None], jnp.zeros_like(x), x)
    return x

  return jax.tree.map(leaf, tree)


def make_post_step(schedule: DensifySchedule, total_steps: int, height: int, width: int,
                   backend: str):
  """``capacity -> post_step(state, target) -> state`` for :func:`gi_jax.fitting.optimize`.

  The post step densifies when :meth:`DensifySchedule.is_event` says so (``lax.cond``, so other
  steps pay nothing but the test). It works on ``state.params`` that are a :class:`Gaussians`
  [..., N] with targets [..., H, W, 3] (one image or a batch: each image is densified on its own),
  and folds the intersection count of its render into ``state.max_count`` so an overflow is
  recovered like any other.

  Args:
    schedule: the densification schedule.
    total_steps: the fit's step count (``stop_fraction`` refers to it).
    height: image height.
    width: image width.
    backend: rendering backend of the error render.

  Returns:
    The factory ``optimize(..., make_post_step=...)`` takes.
  """

  def make(capacity: int):
    def event(state, target):
      params = state.params
      if not isinstance(params, Gaussians):
        raise errors.InvalidInputError("densification needs params that are a Gaussians, got "
                                       f"{type(params).__name__}")
      lead = params.means_raw.shape[:-2]
      flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[-2:]), params)
      flat_target = target.reshape((-1,) + target.shape[-3:])
      image, count = render_with_count(flat, height, width, backend, capacity=capacity)
      key = jax.random.fold_in(jax.random.key(schedule.seed), state.step)
      # One key for every image of a batch: an image's placement must not depend on its position
      # in the batch, so fit_batch equals fit image by image (the error maps differ anyway).
      keys = jnp.broadcast_to(key, (flat_target.shape[0],) + key.shape)
      moved_g, moved = jax.vmap(lambda k, g, t, i: densify(k, g, t, i, schedule))(
          keys, flat, flat_target, image)
      new_params = jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), moved_g)
      moved = moved.reshape(lead + moved.shape[1:])
      return state._replace(params=new_params, opt_state=reset_rows(state.opt_state, moved),
                            max_count=jnp.maximum(state.max_count, jnp.max(count)))

    def post_step(state, target):
      return jax.lax.cond(schedule.is_event(state.step, total_steps), event,
                          lambda s, t: s, state, target)

    return post_step

  return make
