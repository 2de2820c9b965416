"""Fitting Gaussians to an image: gradient descent through the renderer (docs/design.md §4).

The whole step (render, loss, gradient, Adan) is one jitted function, and many steps run per
device call inside ``lax.fori_loop`` so Python never paces the device. Between calls the driver
records history, prints progress, and checks the intersection count: if any step overflowed the
static capacity, it restores the state from before the call, re-bins with a larger capacity and
redoes those steps, so the result is exactly what an unbounded capacity would give.

Binning (the sort of every (tile, Gaussian) pair) is not redone every step: a :class:`BinReuse`
bins with a margin and each step checks that every Gaussian's box is still inside the box it was
binned with, binning again only when one has left it. The tile lists, hence every render,
gradient and parameter, are the same to the bit as binning every step.

A loss may carry state that is not trained by gradient (fine-tuning's EMA codebooks and best step):
it takes that state as a fourth argument and returns its next value beside the intersection count,
``(loss, (count, aux))``; the step stores it in :attr:`FitState.aux`, so it is undone and redone
with the rest of the state on overflow.

A fit's device call is kept, by what it was built from (:func:`device_call`): another fit of the
same size, count and settings in the same process (a dataset, a codec's encodes, a sweep) runs the
same program without tracing and compiling it again.

:func:`fit` and :func:`gi_jax.fit_batch` are one code path, :func:`fit_images`. A batch of one is
kept unstacked ([N], not [1, N]): XLA fuses the stacked program differently, which rounds
differently, so stacking one image would make ``fit_batch([image])`` differ from ``fit(image)``.
Larger batches are stacked and vmapped; each image then follows its single fit to float rounding.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import sys
import threading
import time
from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gi_jax import binning, errors, memory, optim, raster_alpha, recipes
from gi_jax.densify import DensifySchedule, make_post_step as densify_post_step
from gi_jax.gaussians import Gaussians, check_count, check_steps
from gi_jax.init import initialize
from gi_jax.render import (check_clip_gradient, check_image_size, rasterizer, render,
                           render_with_count, resolve_backend)
from gi_jax.sharding import num_shards, place_batch, sharded_loss, unstack_batch

# Growth applied to the observed intersection count when (re)sizing the capacity: fitted Gaussians
# drift and resize, and each growth costs a recompile.
CAPACITY_MARGIN = 1.5


class FitState(NamedTuple):
  """Everything an optimisation carries between steps (a pytree; vmappable over images)."""
  params: Any            # what is optimised: Gaussians, or any pytree holding them
  opt_state: Any
  step: jax.Array        # [] int32, steps taken
  max_count: jax.Array   # [] int32, largest intersection count seen since the last check
  loss: jax.Array        # [] or [B] float32, loss of the last step taken
  binnings: jax.Array    # [] int32, binnings made since the last check (with BinReuse)
  aux: Any = None        # state the loss updates without gradients (None: a stateless loss)


@dataclasses.dataclass(frozen=True)
class BinReuse:
  """How a fit reuses one tile binning across steps instead of binning every step.

  The Gaussians are binned with boxes ``margin`` pixels wider on every side; each step checks
  (one elementwise test and one reduction) that every Gaussian's box still lies inside the box it
  was binned with, and bins again when one does not, before rendering. Results are the same to
  the bit as binning every step; a wider margin bins less often but holds more pairs.

  Attributes:
    margin: pixels added to each side of every box (>= 0).
    every: also bin again after this many steps (0: only when a Gaussian has left its box).
  """
  margin: float = 4.0
  every: int = 0

  def __post_init__(self):
    if not (math.isfinite(self.margin) and self.margin >= 0):
      raise errors.InvalidInputError(f"BinReuse.margin must be >= 0, got {self.margin}")
    if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
      raise errors.InvalidInputError(f"BinReuse.every must be an integer >= 0, got {self.every}")


@dataclasses.dataclass(frozen=True)
class Rebinner:
  """A fit's binning policy: what to bin (``gaussians_of(params, aux)``, from the trained
  parameters and the loss's state), at which size, how often."""
  height: int
  width: int
  reuse: BinReuse
  gaussians_of: Callable[[Any, Any], Gaussians] = lambda params, aux: params

  def gaussians(self, params, aux=None) -> Gaussians:
    return jax.tree.map(jax.lax.stop_gradient, self.gaussians_of(params, aux))

  def bin(self, params, capacity: int, aux=None) -> binning.Binning:
    return binning.bin_gaussians(self.gaussians(params, aux), self.height, self.width,
                                 margin=self.reuse.margin, capacity=capacity)

  def stale(self, binned: binning.Binning, params, age: jax.Array, aux=None) -> jax.Array:
    """[] bool: bin again before this step (a box left its binned box, or ``every`` passed)."""
    stale = ~jnp.all(binning.covers(binned, self.gaussians(params, aux),
                                    binning.COVER_SLACK / 2))
    if self.reuse.every:
      stale = stale | (age >= self.reuse.every)
    return stale


@dataclasses.dataclass(frozen=True)
class FitResult:
  """The outcome of :func:`fit`.

  Attributes:
    gaussians: the fitted Gaussians.
    history: one record per device call: ``step``, ``loss``, ``psnr`` (of the clipped render, from
      the loss of that step), ``seconds`` (fit time so far, compile excluded) and
      ``learning_rate`` (None with a custom optimizer).
    height, width: the image size.
    steps: optimisation steps taken.
    capacity: the intersection capacity the last steps ran with.
    compile_seconds: time spent compiling (excluded from ``fit_seconds``).
    fit_seconds: time spent running steps.
    opacity: [N] opacities of an α-blended fit (``fit(blend="alpha")``); None for the paper's
      accumulated summation.
  """
  gaussians: Gaussians
  history: list[dict]
  height: int
  width: int
  steps: int
  capacity: int
  compile_seconds: float
  fit_seconds: float
  opacity: jax.Array | None = None

  @property
  def final_loss(self) -> float:
    return self.history[-1]["loss"] if self.history else float("nan")

  def render(self, backend: str = "auto") -> jax.Array:
    """The fitted image, [H, W, C] in [0, 1]."""
    if self.opacity is not None:
      model = raster_alpha.AlphaGaussians(self.gaussians, jax.scipy.special.logit(self.opacity))
      return raster_alpha.render_alpha(model, self.height, self.width)
    return render(self.gaussians, self.height, self.width, backend)


class Optimized(NamedTuple):
  """What :func:`optimize` returns."""
  params: Any
  history: list[dict]
  steps: int
  capacity: int
  compile_seconds: float
  fit_seconds: float
  aux: Any = None  # the loss's final non-gradient state (None: a stateless loss)


# loss_fn(params, target, binning) -> (loss [] or [B], intersection count [] or [B]); binning is a
# gi_jax.Binning of the rendered Gaussians to reuse, or None to bin afresh. A loss with
# non-gradient state: loss_fn(params, target, binning, aux) -> (loss, (count, next aux)).
LossFn = Callable[..., tuple[jax.Array, Any]]


def mse_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over the last three axes (pixels and channels)."""
  # Each square scaled before the sum, not the sum after it: on a GPU the scaling then fuses into
  # the reduction instead of launching a kernel of its own every step.
  scale = 1.0 / math.prod(prediction.shape[-3:])
  return jnp.sum(jnp.square(prediction - target) * scale, axis=(-3, -2, -1))


def psnr_from_mse(mse: float) -> float:
  return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def default_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
  """The paper's optimiser: Adan with the lr halved every 20,000 steps."""
  return optim.adan(optim.make_schedule("paper", learning_rate, 1))


def render_loss(height: int, width: int, backend: str,
                clip_gradient: str = "exact") -> Callable[[int], LossFn]:
  """``capacity -> loss_fn``: MSE of the clipped render of Gaussians [..., N] against the target
  (``clip_gradient``: see :func:`gi_jax.render.clip_unit`)."""

  def make(capacity: int) -> LossFn:
    def loss_fn(gaussians, target, binned=None):
      image, count = render_with_count(gaussians, height, width, backend,
                                       capacity=None if binned is not None else capacity,
                                       clip_gradient=clip_gradient, binning=binned)
      return mse_loss(image, target), count
    return loss_fn

  return make


def alpha_render_loss(height: int, width: int) -> Callable[[int], LossFn]:
  """``capacity -> loss_fn``: MSE of the clipped α-blended render of
  :class:`~gi_jax.raster_alpha.AlphaGaussians` against the target (``fit(blend="alpha")``)."""

  def make(capacity: int) -> LossFn:
    def loss_fn(model, target, binned=None):
      image, count = raster_alpha.render_alpha_with_count(
          model, height, width, capacity=None if binned is not None else capacity, binning=binned)
      return mse_loss(image, target), count
    return loss_fn

  return make


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
  """One optimisation step ``(state, target, binning) -> state``; pure, so it jits and vmaps.

  A vector loss (a batch of independent problems) is summed for the gradient: each problem's
  parameters get exactly the gradient of its own loss. ``binning`` (None: bin afresh) is passed
  to the loss. With ``state.aux`` not None the loss is stateful (see :data:`LossFn`): it gets
  ``state.aux`` and its next value is stored as it is, never differentiated.
  """

  def total(params, target, binned, aux):
    if aux is None:
      loss, count = loss_fn(params, target, binned)
    else:
      loss, (count, aux) = loss_fn(params, target, binned, aux)
    return jnp.sum(loss), (loss, count, aux)

  def train_step(state: FitState, target: jax.Array, binned=None) -> FitState:
    (_, (loss, count, aux)), grads = jax.value_and_grad(total, has_aux=True)(
        state.params, target, binned, state.aux)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                          max_count=jnp.maximum(state.max_count, jnp.max(count)),
                          loss=loss.astype(jnp.float32), aux=aux)

  return train_step


@dataclasses.dataclass(frozen=True)
class CarryLayout:
  """How a device call carries its state: every per-Gaussian array in one [..., N, K] array.

  A fit's state holds the parameters and, per optimizer moment, a copy of their shapes: for
  Gaussians with Adan, fifteen [N, 2] and [N, 3] arrays. Carried as they are, XLA updates each
  in its own kernel and copies several at the end of every loop iteration; carried side by side
  in one [..., N, K] array (K the widths summed), the whole update is one kernel and one copy,
  and the step reads the arrays back as column slices, which fuse away. (Component-major,
  [..., K, N], launches as few kernels on a GPU, but XLA:CPU then transposes the carry every
  step, and packing and unpacking it costs kernels of their own.) Every value is computed as
  before, but XLA fuses the step differently, so its float rounding (fused multiply-adds) may
  differ from an unpacked carry's.

  The arrays packed are those shaped like the first leaf of the parameters with two or more axes
  ([..., N, k], same leading axes and dtype); every other leaf is carried as it is.
  """
  treedef: Any
  packed: tuple[int, ...]      # leaf indices, in pack order
  widths: tuple[int, ...]      # their last-axis sizes

  @classmethod
  def of(cls, state: FitState) -> "CarryLayout":
    leaves, treedef = jax.tree.flatten(state)
    first = next((x for x in jax.tree.leaves(state.params) if jnp.ndim(x) >= 2), None)
    packed = () if first is None else tuple(
        i for i, x in enumerate(leaves)
        if jnp.ndim(x) >= 2 and x.shape[:-1] == first.shape[:-1] and x.dtype == first.dtype)
    return cls(treedef, packed, tuple(leaves[i].shape[-1] for i in packed))

  def pack(self, state: FitState) -> tuple:
    """``(packed [..., N, K] or None, the other leaves)``."""
    leaves = self.treedef.flatten_up_to(state)
    chosen = set(self.packed)
    rest = [x for i, x in enumerate(leaves) if i not in chosen]
    if not self.packed:
      return None, rest
    return jnp.concatenate([leaves[i] for i in self.packed], axis=-1), rest

  def unpack(self, carry: tuple) -> FitState:
    packed, rest = carry
    parts = {}
    if self.packed:
      offsets = np.cumsum((0,) + self.widths)
      parts = {i: packed[..., lo:hi] for i, lo, hi in zip(self.packed, offsets, offsets[1:])}
    rest = iter(rest)
    return self.treedef.unflatten(
        [parts[i] if i in parts else next(rest) for i in range(self.treedef.num_leaves)])


def make_run_steps(train_step, rebinner: Rebinner | None = None, capacity: int | None = None,
                   unroll: int = 1) -> Callable[[FitState, jax.Array, jax.Array], FitState]:
  """``(state, target, num_steps) -> state``: ``num_steps`` (traced) steps in one device call.

  With a ``rebinner`` the call is two nested device loops: the outer one bins, the inner one takes
  steps with that binning for as long as it covers the Gaussians (its loop condition is the
  coverage test, so there is no conditional to copy the binning through), and hands back to the
  outer one when a Gaussian has left its box. The loops carry the state as a
  :class:`CarryLayout` packs it.

  Args:
    train_step: ``(state, target, binning) -> state``.
    rebinner: bin at the call's start and again only when stale; None bins in every step's
      render.
    capacity: the binning's pair capacity (with ``rebinner``).
    unroll: steps per loop iteration. On a GPU each iteration of a device loop can cost a round
      trip to the host; unrolled steps share it, at the price of compiling the step ``unroll``
      times more and of float rounding that may differ (XLA compiles each copy on its own).
      Binning every step, the remainder runs one step per iteration. Reusing a binning, each
      copy runs its coverage test in the loop and keeps its step only while the binning covers
      the Gaussians: the steps after the first that it does not are computed and thrown away
      (about (unroll − 1)/2 a binning), and the loop hands back to binning.
  """
  if unroll < 1:
    raise errors.InvalidInputError(f"unroll must be >= 1, got {unroll}")

  def run_steps(state, target, num_steps):
    state = state._replace(max_count=jnp.zeros_like(state.max_count),
                           binnings=jnp.zeros_like(state.binnings))
    layout = CarryLayout.of(state)
    view = layout.unpack
    stepped = lambda carry, binned: layout.pack(train_step(view(carry), target, binned))
    carry = layout.pack(state)
    if rebinner is None:
      step = lambda _, carry: stepped(carry, None)
      block = lambda i, carry: functools.reduce(lambda c, _: step(i, c), range(unroll), carry)
      carry = jax.lax.fori_loop(0, num_steps // unroll, block, carry)
      if unroll > 1:
        carry = jax.lax.fori_loop(0, num_steps % unroll, step, carry)
      return view(carry)
    end = state.step + num_steps

    def with_one_binning(carry):
      state = view(carry)
      binned = rebinner.bin(state.params, capacity, state.aux)

      def runs(carry, age):
        state = view(carry)
        # The first step always runs: the binning was just made from these Gaussians.
        return (state.step < end) & ((age == 0) |
                                     ~rebinner.stale(binned, state.params, age, state.aux))

      carry = layout.pack(state._replace(binnings=state.binnings + 1))
      age = jnp.zeros((), jnp.int32)
      if unroll == 1:
        carry, _ = jax.lax.while_loop(
            lambda c: runs(*c), lambda c: (stepped(c[0], binned), c[1] + 1), (carry, age))
        return carry

      def guarded_step(loop, _):
        carry, age, ok = loop
        ok = ok & runs(carry, age)
        carry = jax.tree.map(lambda new, old: jnp.where(ok, new, old), stepped(carry, binned),
                             carry)
        return carry, age + ok.astype(jnp.int32), ok

      def block(loop):
        return functools.reduce(guarded_step, range(unroll), loop[:2] + (jnp.array(True),))

      # On until a copy's step did not run: the call's end, or a Gaussian left the binning.
      carry, _, _ = jax.lax.while_loop(lambda c: c[2], block, (carry, age, runs(carry, age)))
      return carry

    return view(jax.lax.while_loop(lambda c: view(c).step < end, with_one_binning, carry))

  return run_steps


# Jitted device calls by what they were built from, most recently used last.
_DEVICE_CALLS: collections.OrderedDict = collections.OrderedDict()
_DEVICE_CALLS_LOCK = threading.Lock()
# Each holds the compiled programs of its shapes; a sweep over more settings than this compiles
# the oldest again.
DEVICE_CALLS_KEPT = 32


def device_call(key: Hashable | None, build: Callable[[], Callable]) -> Callable:
  """``jax.jit(build())``, the same jitted function for an equal ``key`` (JAX then reuses its
  trace and compiled program for the same shapes).

  ``key`` must name everything ``build`` closes over that shapes the program: two keys that are
  equal must build the same function. None (or an unhashable key) builds afresh every time.
  """
  if key is None:
    return jax.jit(build())
  try:
    hash(key)
  except TypeError:
    return jax.jit(build())
  with _DEVICE_CALLS_LOCK:
    run = _DEVICE_CALLS.pop(key, None)
    if run is None:
      run = jax.jit(build())
    _DEVICE_CALLS[key] = run
    while len(_DEVICE_CALLS) > DEVICE_CALLS_KEPT:
      _DEVICE_CALLS.popitem(last=False)
  return run


def clear_device_calls() -> None:
  """Forgets every kept device call (see :func:`device_call`), e.g. beside ``jax.clear_caches()``
  to release compiled programs in a long-lived process."""
  with _DEVICE_CALLS_LOCK:
    _DEVICE_CALLS.clear()


def resolve_steps_per_call(steps_per_call: int | None, steps: int) -> int:
  """Steps per device call: 1000 on GPU, 100 elsewhere by default; never more than ``steps``."""
  if steps_per_call is None:
    steps_per_call = 1000 if jax.default_backend() == "gpu" else 100
  return max(1, min(int(steps_per_call), max(int(steps), 1)))


def init_state(params, optimizer: optax.GradientTransformation, loss_shape=(),
               aux=None) -> FitState:
  """The state before the first step: ``aux`` is a stateful loss's initial state (or None)."""
  zero = jnp.zeros((), jnp.int32)
  return FitState(params, optimizer.init(params), zero, zero,
                  jnp.full(loss_shape, jnp.nan, jnp.float32), zero, aux)


def optimize(params, target: jax.Array, steps: int, make_loss: Callable[[int], LossFn], *,
             optimizer: optax.GradientTransformation, capacity: int, steps_per_call: int,
             report: Callable[[dict], None] = lambda record: None,
             schedule: Callable | None = None,
             make_post_step: Callable[[int], Callable] | None = None,
             rebinner: Rebinner | None = None, unroll: int = 1, aux=None,
             program: Hashable | None = None) -> Optimized:
  """Runs ``steps`` optimisation steps in device calls of ``steps_per_call``, recovering overflow.

  After each call, if any step saw more intersections than ``capacity``, the call is undone and
  redone with a larger capacity (recompiled), so no step ever renders with intersections missing.

  Args:
    params: initial parameters (any pytree ``make_loss(capacity)`` accepts).
    target: the image(s) the loss compares against.
    steps: optimisation steps.
    make_loss: ``capacity -> loss_fn``; see :func:`render_loss`.
    optimizer: an optax transformation.
    capacity: initial static intersection capacity (of the binning, with ``rebinner``).
    steps_per_call: steps per device call; history is recorded after each.
    report: called with each history record.
    schedule: learning-rate schedule to record in the history (None records None).
    make_post_step: ``capacity -> post_step(state, target) -> state``, run after every optimizer
      step inside the device call (e.g. :func:`gi_jax.densify.make_post_step`); it must be
      deterministic in the state, since an overflowing call is redone.
    rebinner: reuse one binning across steps (:class:`BinReuse`); None bins every step.
    unroll: steps per device-loop iteration (see :func:`make_run_steps`).
    aux: the initial state of a stateful loss (see :data:`LossFn`); None for a stateless one.
    program: what ``make_loss``, ``optimizer``, ``make_post_step`` and ``rebinner`` were built
      from (sizes, backend, settings; see :func:`device_call`), so that a later call with an
      equal ``program`` reuses this one's compiled device call; None compiles afresh.

  Returns:
    :class:`Optimized` with the final parameters (and ``aux``), history, and timings.
  """
  loss_args = (params, target, None) if aux is None else (params, target, None, aux)
  loss_shape = jax.eval_shape(make_loss(capacity), *loss_args)[0].shape
  state = init_state(params, optimizer, loss_shape, aux)
  history: list[dict] = []
  compile_seconds = fit_seconds = 0.0
  compiled = None
  while int(state.step) < steps:
    if compiled is None:
      t0 = time.perf_counter()

      def build(capacity=capacity, rebinner=rebinner):
        step_fn = make_train_step(make_loss(capacity), optimizer)
        if make_post_step is not None:
          step_fn = _then(step_fn, make_post_step(capacity))
        return make_run_steps(step_fn, rebinner, capacity, unroll)

      key = None if program is None else (program, capacity, unroll, rebinner is None)
      run = device_call(key, build)
      compiled = run.lower(state, target, jnp.int32(steps_per_call)).compile()
      compile_seconds += time.perf_counter() - t0
    n = min(steps_per_call, steps - int(state.step))
    t0 = time.perf_counter()
    new_state = compiled(state, target, jnp.int32(n))
    worst = int(new_state.max_count)  # blocks until the call is done
    fit_seconds += time.perf_counter() - t0
    if worst == binning.NOT_COVERED:
      # The step's own coverage test passed where the render's failed, which binning.COVER_SLACK
      # rules out; should it happen, redo the call binning every step, which cannot disagree.
      errors.warn("a reused binning did not cover a step's Gaussians; binning every step from "
                  f"step {int(state.step)}")
      rebinner, compiled = None, None
      continue
    if worst > capacity:
      # Some step rendered without all its intersections: redo the whole call, larger.
      capacity = binning.bucket_capacity(worst * CAPACITY_MARGIN)
      compiled = None
      continue
    state = new_state
    loss = np.asarray(state.loss, np.float64)
    step = int(state.step)
    record = dict(step=step, loss=loss.tolist(),
                  # Python floats, not np.vectorize: a diverged image's NaN would make NumPy warn.
                  psnr=[psnr_from_mse(v) for v in loss.tolist()] if loss.ndim else
                  psnr_from_mse(float(loss)),
                  seconds=fit_seconds,
                  learning_rate=float(schedule(step - 1)) if schedule else None,
                  binnings=int(state.binnings) if rebinner is not None else n)
    history.append(record)
    report(record)
  return Optimized(state.params, history, int(state.step), capacity, compile_seconds, fit_seconds,
                   state.aux)


def _then(first, second):
  """The step ``(state, target, binning) -> second(first(state, target, binning), target)``."""
  return lambda state, target, binned: second(first(state, target, binned), target)


def warn_if_saturating(clip_gradient: str, num_gaussians: int, height: int, width: int) -> None:
  """Warns where the exact clip gradient is likely to stall the fit: more Gaussians than pixels
  push most pixels past 1, and the exact gradient leaves them there (README, "straight_through")."""
  if clip_gradient == "exact" and num_gaussians > height * width:
    errors.warn(
        f"{num_gaussians} Gaussians on {height * width} pixels with clip_gradient='exact': "
        "saturated pixels get no gradient and the fit may stall; "
        "clip_gradient='straight_through' avoids that")


def check_target_image(image) -> jax.Array:
  """Validates an [H, W, C] image (C >= 1 channels) in [0, 1] and returns it as float32."""
  if isinstance(image, jax.core.Tracer):
    raise errors.InvalidInputError("fit needs a concrete image (call it outside jit)")
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] < 1:
    raise errors.InvalidInputError(f"image must have shape [H, W, C], got {array.shape}")
  check_image_size(array.shape[0], array.shape[1])  # an empty image has no minimum to check
  if not np.issubdtype(array.dtype, np.floating):
    raise errors.InvalidInputError(
        f"image must be float in [0, 1], got dtype {array.dtype} (use gi_jax.io.load_image)")
  if not np.isfinite(array).all():
    raise errors.InvalidInputError("image contains NaN or infinity")
  if array.min() < 0 or array.max() > 1:
    raise errors.InvalidInputError(
        f"image values must lie in [0, 1], got [{array.min():.4g}, {array.max():.4g}]")
  return jnp.asarray(array, jnp.float32)


def initial_capacity(gaussians: Gaussians, height: int, width: int, margin: float = 0.0) -> int:
  """A capacity with headroom over the current count (max over a batch) of boxes widened by
  ``margin`` pixels (a :class:`BinReuse`'s)."""
  grid = binning.TileGrid(height, width)
  most = binning.max_intersections(gaussians, grid, margin + binning.COVER_SLACK,
                                   keep_degenerate=True)
  return binning.bucket_capacity(most * CAPACITY_MARGIN)


class ProgressPrinter:
  """Prints a progress line at most every ``interval`` seconds (and at the end).

  Records of a batch (a list of losses and PSNRs) print the batch's mean and worst PSNR.
  """

  def __init__(self, total_steps: int, interval: float = 2.0, stream=sys.stderr, prefix="fit"):
    self.total = total_steps
    self.interval = interval
    self.stream = stream
    self.prefix = prefix
    self.last = -math.inf

  def __call__(self, record: dict):
    now = time.perf_counter()
    done = record["step"] >= self.total
    if not done and now - self.last < self.interval:
      return
    self.last = now
    rate = record["step"] / max(record["seconds"], 1e-9)
    eta = (self.total - record["step"]) / rate if rate > 0 else float("inf")
    psnr = np.asarray(record["psnr"], np.float64)
    if psnr.ndim:
      quality = f"{psnr.size} images  psnr mean {psnr.mean():.2f} dB (min {psnr.min():.2f})"
    else:
      quality = f"loss {record['loss']:.3e}  psnr {float(psnr):.2f} dB"
    lr = record.get("learning_rate")
    lr = f"  lr {lr:.2e}" if lr is not None else ""
    print(f"{self.prefix}: step {record['step']}/{self.total}  {quality}{lr}  {rate:.1f} steps/s  "
          f"eta {eta:.0f}s", file=self.stream, flush=True)


def fit(image, num_gaussians: int, steps: int, *, seed: int = 0,
        parameterization: str = "cholesky", learning_rate: float | None = None,
        optimizer: optax.GradientTransformation | None = None, backend: str = "auto",
        init: Gaussians | str | None = None, steps_per_call: int | None = None,
        capacity: int | None = None,
        progress: bool | Callable[[dict], None] = True,
        densify: DensifySchedule | None = None, blend: str = "sum",
        lr_schedule: str | None = None, clip_gradient: str | None = None,
        bin_reuse: BinReuse | None = BinReuse(), unroll: int | None = None,
        recipe: str | recipes.Recipe = "paper") -> FitResult:
  """Fits ``num_gaussians`` Gaussians to ``image`` by gradient descent through the renderer.

  Args:
    image: [H, W, C] float image in [0, 1]: C = 3 for RGB, 1 for grayscale, 4 for RGBA (alpha
      fitted as a fourth channel, not composited), any C >= 1 for multispectral data.
    num_gaussians: N >= 1.
    steps: optimisation steps (>= 0); the paper uses 50,000.
    seed: PRNG seed of the initialisation; the same seed gives the same result.
    parameterization: ``"cholesky"`` or ``"rs"``.
    learning_rate: base learning rate of the schedule (ignored with ``optimizer``; None: the
      recipe's).
    optimizer: an optax transformation (default: the recipe's: for ``"paper"``, Adan with the
      paper's step schedule).
    backend: rendering backend (see :func:`gi_jax.render`).
    init: ``"random"`` (the paper's random initialisation from ``seed``), ``"gradient"``
      (content-adaptive, :func:`gi_jax.init.gradient_init`), starting Gaussians, or None (the
      recipe's).
    steps_per_call: steps per device call, i.e. the history interval (default: 1000 on GPU, 100
      elsewhere).
    capacity: initial intersection capacity (default: 1.5× the initial count); grown as needed.
    progress: True prints progress lines to stderr; a callable receives each history record.
    densify: a :class:`gi_jax.densify.DensifySchedule` to move negligible Gaussians to where the
      error is during the fit (N stays fixed), or None (the recipe's; neither named recipe
      densifies).
    blend: ``"sum"`` (the paper's accumulated summation) or ``"alpha"`` (front-to-back
      α-blending in index order with a learned opacity per Gaussian, initialised to 0.5: the
      paper's ablation; pure-JAX renderer, ``backend`` is ignored; see
      :mod:`gi_jax.raster_alpha`).
    lr_schedule: a name for :func:`gi_jax.optim.make_schedule`: ``"paper"`` (halved every 20,000
      steps), ``"cosine"`` (to 1% over the run) or ``"hold_cosine"``; ignored with ``optimizer``;
      None: the recipe's.
    clip_gradient: how the loss's gradient passes the clip to [0, 1]: ``"exact"`` (the paper's:
      not at all where the render is outside) or ``"straight_through"``, which pulls back pixels
      the sum has pushed past 1 or below 0 (same loss values; see
      :func:`gi_jax.render.clip_unit`). ``blend="sum"`` only. Use it where the Gaussians
      outnumber the pixels: there most pixels saturate and the exact gradient stalls them (a
      16×16 crop with 1,000 Gaussians, 500 steps at 0.03: 22.6 dB exact, 115.8 dB with it), and
      ``fit`` warns where N exceeds the pixel count with ``"exact"``. None: the recipe's.
    bin_reuse: reuse each tile binning across steps while it covers the Gaussians
      (:class:`BinReuse`; the same result to the bit, with far fewer sorts), or None to bin every
      step.
    unroll: fit steps per device-loop iteration (default 1; see :func:`make_run_steps`): for a
      GPU, where each iteration can wait on the host. Results equal to float rounding, not to
      the bit.
    recipe: ``"paper"`` (the default: the paper's protocol, exactly), ``"best"`` or a
      :class:`gi_jax.recipes.Recipe`: the init, learning rate, schedule, per-group learning-rate
      factors, densification and clip gradient of any of those arguments left None.

  Returns:
    A :class:`FitResult`.

  Example:
    >>> result = gi_jax.fit(image, num_gaussians=5000, steps=2000)              # the paper's
    >>> result = gi_jax.fit(image, num_gaussians=5000, steps=2000, recipe="best")
    >>> result.history[-1]["psnr"]
  """
  recipe = recipes.resolve(recipe, init=init, learning_rate=learning_rate,
                           lr_schedule=lr_schedule, densify=densify, clip_gradient=clip_gradient)
  init = recipe.init if init is None else init
  densify, clip_gradient = recipe.densify, recipe.clip_gradient
  target = check_target_image(image)
  height, width = target.shape[:2]
  # Before initialising: an absurd N must fail here, not allocate (N is the init's when given).
  count = init.num_gaussians if isinstance(init, Gaussians) else check_count(num_gaussians)
  memory.check_fit_fits(count, height, width, channels=target.shape[-1])
  if blend not in ("sum", "alpha"):
    raise errors.InvalidInputError(f"blend must be 'sum' or 'alpha', got {blend!r}")
  if densify is not None and blend != "sum":
    raise errors.InvalidInputError("densify works with blend='sum' only")
  if check_clip_gradient(clip_gradient) != "exact" and blend != "sum":
    raise errors.InvalidInputError(f"clip_gradient={clip_gradient!r} works with blend='sum' only")
  steps = check_steps(steps)
  schedule = None
  optimizer_key = optimizer  # the same optimizer builds the same step
  if optimizer is None:
    optimizer, schedule = recipe.optimizer(steps, height, width, count)
    optimizer_key = recipe.optimizer_key(height, width, count)
  if blend == "sum":
    warn_if_saturating(clip_gradient, count, height, width)
  return fit_images([target], num_gaussians, steps, seeds=[seed], order=[0], mesh=None,
                    parameterization=parameterization, optimizer=optimizer, schedule=schedule,
                    backend=resolve_backend(backend), init=init, steps_per_call=steps_per_call,
                    capacity=capacity, report=_progress_callback(progress, steps),
                    densify=densify, blend=blend, clip_gradient=clip_gradient,
                    bin_reuse=bin_reuse, unroll=unroll, optimizer_key=optimizer_key)[0]


def fit_images(targets: list[jax.Array], num_gaussians: int, steps: int, *, seeds: list[int],
               order: list[int], mesh, parameterization: str,
               optimizer: optax.GradientTransformation, schedule: Callable | None, backend: str,
               init, steps_per_call: int | None, capacity: int | None,
               report: Callable[[dict], None], densify: DensifySchedule | None = None,
               blend: str = "sum", clip_gradient: str = "exact",
               bin_reuse: BinReuse | None = BinReuse(), unroll: int | None = None,
               batch_records: bool = False,
               optimizer_key: Hashable | None = None) -> list[FitResult]:
  """What :func:`fit` and :func:`gi_jax.fit_batch` run once their arguments are checked.

  Args:
    targets: B checked [H, W, C] float32 images of one size.
    seeds: the initialisation seed of each image.
    order: the image of each batch slot (:func:`gi_jax.sharding.plan_shards`; padding repeats
      the last); one slot runs unstacked.
    mesh: the mesh the slots are sharded over, or None (one device).
    report: receives each history record; with ``batch_records`` its ``loss`` and ``psnr`` are
      lists of B values, else as the driver makes them (scalars when unstacked).
    num_gaussians, steps, parameterization, optimizer, schedule, backend, init, steps_per_call,
    capacity, densify, blend, clip_gradient, bin_reuse, unroll: as for :func:`fit` (``init``
      a Gaussians only with one image; ``schedule`` recorded in the history).
    optimizer_key: what ``optimizer``'s update step is built from (e.g.
      :meth:`gi_jax.Recipe.optimizer_key`), so that fits of the same size and settings share one
      compiled device call; None compiles each fit's own.

  Returns:
    B :class:`FitResult` in the order of ``targets``.
  """
  height, width = targets[0].shape[:2]
  count = len(targets)
  starts = [initialize(init, jax.random.key(seeds[i]), targets[i], num_gaussians,
                       parameterization, normalize_colors=blend == "sum") for i in order]
  if capacity is None:
    # Image by image rather than on the stacked batch: the same small eager ops (compiled once
    # per N) serve every batch size, and the capacity ladder is monotone, so max over images equals
    # the batch's.
    margin = bin_reuse.margin if bin_reuse is not None else 0.0
    capacity = max(initial_capacity(g, height, width, margin) for g in starts[:count])
  if blend == "alpha":
    starts = [raster_alpha.with_opacity(g) for g in starts]
    make_loss = alpha_render_loss(height, width)
  else:
    make_loss = render_loss(height, width, backend, clip_gradient)
  params, target, stacked = stack_slots([(g, targets[i]) for g, i in zip(starts, order)], mesh)
  if stacked and mesh is not None:
    make_loss = sharded_loss(make_loss, mesh)
  make_post_step = None
  if densify is not None:
    make_post_step = densify_post_step(densify, steps, height, width, backend)
  rebinner = None
  if bin_reuse is not None:
    rebinner = Rebinner(height, width, bin_reuse,
                        (lambda m, aux: m.gaussians) if blend == "alpha" else
                        (lambda g, aux: g))

  def slot_report(record):
    report(caller_record(record, stacked, count, batch_records))

  program = None
  if optimizer_key is not None:
    program = ("fit", blend, height, width, rasterizer(backend), clip_gradient,
               mesh if stacked else None, densify, steps if densify is not None else None,
               bin_reuse, optimizer_key)

  out = optimize(params, target, steps, make_loss, optimizer=optimizer, capacity=capacity,
                 steps_per_call=resolve_steps_per_call(steps_per_call, steps),
                 report=slot_report, schedule=schedule, make_post_step=make_post_step,
                 rebinner=rebinner, unroll=unroll or 1, program=program)
  finals = unstack_batch(out.params, count) if stacked else [out.params]
  results = []
  for i, final in enumerate(finals):
    history = [image_record(r, i) for r in out.history] if stacked else out.history
    gaussians, opacity = (final.gaussians, final.opacity) if blend == "alpha" else (final, None)
    results.append(FitResult(gaussians, history, height, width, out.steps, out.capacity,
                             out.compile_seconds, out.fit_seconds, opacity=opacity))
  return results


def stack_slots(slots: list, mesh) -> tuple[Any, Any, bool]:
  """``(params, target, stacked)`` for the driver from one ``(params, target)`` per batch slot.

  Several slots are stacked along a leading axis (sharded over ``mesh`` if given); one slot is
  left unstacked, on the mesh's device, since XLA rounds the stacked [1, ...] program differently
  (module notes).
  """
  if len(slots) > 1:
    params, target = place_batch(slots, mesh)
    return params, target, True
  params, target = jax.tree.map(jnp.asarray, slots[0])
  if mesh is not None:
    if num_shards(mesh) != 1:
      raise errors.InvalidInputError("one batch slot cannot be sharded over several devices")
    params, target = jax.device_put((params, target), mesh.devices.flat[0])
  return params, target, False


def caller_record(record: dict, stacked: bool, count: int, batched: bool) -> dict:
  """A history record as the caller of a fit sees it: without the padding slots of a stacked
  batch (copies of its last image), and with per-image lists for a batch of one."""
  if stacked:
    return image_record(record, slice(count))
  if batched:
    return dict(record, loss=[record["loss"]], psnr=[record["psnr"]])
  return record


def image_record(record: dict, index: int | slice) -> dict:
  """A batch history record with its per-image ``loss`` and ``psnr`` lists indexed by ``index``
  (one image, or a slice such as the caller's images without the padding)."""
  return dict(record, loss=record["loss"][index], psnr=record["psnr"][index])


def _progress_callback(progress, steps) -> Callable[[dict], None]:
  if callable(progress):
    return progress
  if progress:
    return ProgressPrinter(steps)
  return lambda record: None
