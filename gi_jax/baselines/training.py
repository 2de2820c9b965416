"""What every Table 1 baseline shares: input checks, the pixel grid an INR is queried on, the
training driver (steps in jitted device calls, a history per call), the fit's result and its
parameter count, and the fit and render of a coordinate network (SIREN, WIRE, Instant-NGP).

A baseline is a pure ``loss(params, target) -> (loss, mse)`` and an optax optimiser; :func:`optimize`
runs it the way :func:`gi_jax.fitting.optimize` runs ours (chunks of ``steps_per_call`` steps in
one ``fori_loop`` per device call, compile time apart from fit time), so the fit seconds of
every row of the table are measured alike.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

from flax import linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gi_jax import errors

# A loss of (params, target) -> (scalar loss, scalar MSE of the render), differentiable in params;
# the MSE gives the history its PSNR whatever the training loss is.
LossFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


def check_image(image) -> jax.Array:
  """The image as float32 [H, W, 3], or one clear error.

  Raises:
    errors.InvalidInputError: not [H, W, 3], empty, or not finite.
  """
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
    raise errors.InvalidInputError(f"image must be [H, W, 3], got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
    raise errors.InvalidInputError("image must hold finite numbers")
  return jnp.asarray(array, jnp.float32)


def check_steps(steps, steps_per_call) -> tuple[int, int]:
  """``(steps, steps_per_call)`` checked; ``steps_per_call`` defaults to steps/50 (at least 1).

  Raises:
    errors.InvalidInputError: steps < 0 or steps_per_call < 1 (or not integers).
  """
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise errors.InvalidInputError(f"steps must be an integer >= 0, got {steps!r}")
  if steps_per_call is None:
    steps_per_call = max(1, int(steps) // 50)
  if (isinstance(steps_per_call, bool) or not isinstance(steps_per_call, (int, np.integer))
      or steps_per_call < 1):
    raise errors.InvalidInputError(f"steps_per_call must be an integer >= 1, got "
                                   f"{steps_per_call!r}")
  return int(steps), int(steps_per_call)


def check_positive(value, name: str, kind: type = int) -> None:
  """Raises InvalidInputError unless ``value`` is a finite ``kind`` > 0 (``name`` in the message)."""
  ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value) and value > 0 and (kind is float or float(value).is_integer()))
  if not ok:
    raise errors.InvalidInputError(f"{name} must be {'a number' if kind is float else 'an integer'}"
                                   f" > 0, got {value!r}")


def pixel_coords(height: int, width: int) -> jax.Array:
  """Pixel centres as [H, W, 2] ``(x, y)`` in [-1, 1] (SIREN's and WIRE's ``linspace(-1, 1)``
  grid: the first and last pixels sit on ±1)."""
  x = jnp.linspace(-1.0, 1.0, width, dtype=jnp.float32)
  y = jnp.linspace(-1.0, 1.0, height, dtype=jnp.float32)
  grid_x, grid_y = jnp.meshgrid(x, y, indexing="xy")
  return jnp.stack([grid_x, grid_y], axis=-1)


def count_parameters(tree) -> int:
  """The number of real numbers in a pytree's array leaves (a complex number would count two; the
  baselines here hold none)."""
  return int(sum(np.size(leaf) * (2 if jnp.iscomplexobj(leaf) else 1)
                 for leaf in jax.tree.leaves(tree)))


def psnr_from_mse(mse: float) -> float:
  return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


@dataclasses.dataclass(frozen=True)
class BaselineFit:
  """The outcome of a baseline's ``fit``.

  Attributes:
    method: the baseline's name (``"siren"``, ``"wire"``, ``"instant_ngp"``, ``"gs3d"``).
    params: the fitted parameters (the method's own pytree; its ``render`` takes them).
    history: one record per device call: ``step``, ``loss`` and ``psnr`` (of the MSE of the
      unclipped render) at that call's last step, ``seconds`` (fit time so far, compile excluded), ``learning_rate``.
    height, width: the image size.
    steps: optimisation steps taken.
    num_parameters: real numbers in ``params`` (the table's parameter column).
    compile_seconds: time spent compiling the training call (excluded from ``fit_seconds``).
    fit_seconds: time spent running steps.
    step_bytes: XLA's planned device memory of one training call (arguments, outputs and
      temporaries, less what is aliased), or None where the backend gives no analysis.
  """
  method: str
  params: Any
  history: list[dict]
  height: int
  width: int
  steps: int
  num_parameters: int
  compile_seconds: float
  fit_seconds: float
  step_bytes: int | None


def memory_bytes(compiled) -> int | None:
  """XLA's planned bytes of a compiled call (see :attr:`BaselineFit.step_bytes`), or None."""
  try:
    analysis = compiled.memory_analysis()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def optimize(method: str, loss_fn: LossFn, params, target: jax.Array,
             optimizer: optax.GradientTransformation, steps: int, steps_per_call: int,
             schedule: optax.Schedule | None = None,
             progress: Callable[[dict], None] | None = None) -> BaselineFit:
  """Runs ``steps`` optimisation steps of ``loss_fn`` from ``params``.

  Args:
    method: the baseline's name (recorded in the result).
    loss_fn: ``(params, target) -> (loss, mse)`` (see :data:`LossFn`).
    params: the starting parameters.
    target: the image [H, W, 3].
    optimizer: an optax transformation.
    steps: optimisation steps (>= 0).
    steps_per_call: steps per jitted device call (the history interval).
    schedule: the learning rate by update count, for the history (None: not recorded).
    progress: called with each history record.

  Returns:
    A :class:`BaselineFit`.
  """
  height, width = int(target.shape[0]), int(target.shape[1])

  def run(params, opt_state, target, num_steps):
    def step(_, carry):
      params, opt_state, _, _ = carry
      (loss, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state, loss.astype(jnp.float32),
              mse.astype(jnp.float32))
    nan = jnp.float32(jnp.nan)
    return jax.lax.fori_loop(0, num_steps, step, (params, opt_state, nan, nan))

  opt_state = optimizer.init(params)
  # The step count is traced, so one compiled call serves full and final partial chunks.
  t0 = time.perf_counter()
  compiled = jax.jit(run, donate_argnums=(0, 1)).lower(params, opt_state, target,
                                                       jnp.int32(0)).compile()
  compile_seconds = time.perf_counter() - t0
  history, done, fit_seconds = [], 0, 0.0
  while done < steps:
    chunk = min(steps_per_call, steps - done)
    t0 = time.perf_counter()
    params, opt_state, loss, mse = compiled(params, opt_state, target, jnp.int32(chunk))
    loss, mse = float(loss), float(mse)  # waits for the call
    fit_seconds += time.perf_counter() - t0
    done += chunk
    record = dict(step=done, loss=loss, psnr=psnr_from_mse(mse) if mse == mse else None,
                  seconds=fit_seconds,
                  learning_rate=None if schedule is None else float(schedule(done - 1)))
    history.append(record)
    if progress is not None:
      progress(record)
  return BaselineFit(method=method, params=params, history=history, height=height, width=width,
                     steps=steps, num_parameters=count_parameters(params),
                     compile_seconds=compile_seconds, fit_seconds=fit_seconds,
                     step_bytes=memory_bytes(compiled))


@struct.dataclass
class NetworkParams:
  """A coordinate network's parameters: its flax variables and the module (its settings, static),
  so that ``render(params, height, width)`` needs nothing else.

  Attributes:
    variables: the flax variables (``{"params": ...}``).
    model: the flax module mapping coordinates [..., 2] in [-1, 1] to RGB [..., 3].
  """
  variables: Any
  model: nn.Module = struct.field(pytree_node=False)

  def __call__(self, coords: jax.Array) -> jax.Array:
    return self.model.apply(self.variables, coords)


def render_network(params: NetworkParams, height: int, width: int) -> jax.Array:
  """The network queried at every pixel centre, clipped to [0, 1] as our renders are: [H, W, 3]."""
  return jnp.clip(params(pixel_coords(height, width)), 0.0, 1.0)


def fit_network(method: str, model: nn.Module, image, steps: int, seed: int,
                optimizer: optax.GradientTransformation, schedule: optax.Schedule | None,
                steps_per_call: int | None, progress: Callable[[dict], None] | None
                ) -> BaselineFit:
  """Fits a coordinate network to every pixel of ``image`` at once (full batch) by MSE.

  Args:
    method: the baseline's name.
    model: the flax module (coordinates [..., 2] -> RGB [..., 3]).
    image: [H, W, 3] in [0, 1].
    steps: optimisation steps (>= 0).
    seed: PRNG seed of the initialisation.
    optimizer, schedule: the optax optimiser and its learning rate by step (for the history).
    steps_per_call: steps per device call (default: steps/50).
    progress: called with each history record.

  Returns:
    A :class:`BaselineFit` whose ``params`` is a :class:`NetworkParams`.

  Raises:
    errors.InvalidInputError: a bad image, steps or steps_per_call (before any work).
  """
  target = check_image(image)
  steps, steps_per_call = check_steps(steps, steps_per_call)
  height, width = int(target.shape[0]), int(target.shape[1])
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 2), jnp.float32))
  params = NetworkParams(variables, model)

  def loss_fn(params: NetworkParams, target: jax.Array):
    # The grid is built inside the step (iota ops XLA fuses) rather than captured as a constant.
    mse = jnp.mean(jnp.square(params(pixel_coords(height, width)) - target))
    return mse, mse

  return optimize(method, loss_fn, params, target, optimizer, steps, steps_per_call, schedule,
                  progress)


def uniform_init(bound: float):
  """A flax initialiser drawing from U(-bound, bound) (the INR papers' initialisations)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init
