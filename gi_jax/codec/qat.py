"""Quantization-aware fine-tuning (docs/design.md §5): from a fitted set, train through the quantizers.

The loss is the MSE of the render of the fake-quantized Gaussians plus the colour commitment loss,
optimised by a fresh Adan (by default the paper's schedule) with :func:`gi_jax.fitting.optimize`,
so overflow recovery and device-side step loops come for free.

Two parts of the state are not gradient-trained: the EMA colour codebooks and the best step seen
so far. They are the loss's own state (:class:`QATState`), which the driver carries beside the
trained parameters (:class:`QATParams`) and undoes with them on overflow: each step's loss returns
their next values, so the best step's symbols are exactly those the step rendered.

:func:`finetune` is :func:`finetune_batch` with one image; a batch of one is kept unstacked, as in
:func:`gi_jax.fitting.fit_images`, so both give the same result to the bit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gi_jax import errors, optim
from gi_jax.fitting import (BinReuse, FitResult, ProgressPrinter, Rebinner, caller_record,
                            check_target_image, default_optimizer, image_record, initial_capacity,
                            mse_loss, optimize, psnr_from_mse, resolve_steps_per_call, stack_slots)
from gi_jax.gaussians import Gaussians, check_steps
from gi_jax.memory import check_batch_fits
from gi_jax.render import rasterizer, render_with_count, resolve_backend
from gi_jax.sharding import num_shards, plan_shards, sharded_loss, unstack_batch
from gi_jax.codec.render import quantized_mse, render_capacity, render_quantized
from gi_jax.codec.quantize import (QuantizedGaussians, QuantizerConfig, Quantizers,
                                   init_quantizers, quantize_gaussians, to_quantized)
from gi_jax.codec.rvq import ResidualVQ
from gi_jax.codec.uniform import UniformQuantizer


class BestStep(NamedTuple):
  """The step whose quantized render had the lowest MSE so far.

  Attributes:
    symbols: its :class:`~gi_jax.codec.quantize.QuantizedGaussians` (the file's dtypes).
    mse: [] float32 MSE of its render (+inf: none yet).
    step: [] int32 fine-tuning updates applied before it.
  """
  symbols: QuantizedGaussians
  mse: jax.Array
  step: jax.Array


class QATParams(NamedTuple):
  """What :func:`finetune` trains by gradient (Adan)."""
  gaussians: Gaussians
  cov: UniformQuantizer
  color: UniformQuantizer | None  # None: residual VQ colours, whose codebooks are QATState's


class QATState(NamedTuple):
  """What :func:`finetune` updates without gradients (the driver's ``FitState.aux``)."""
  codebooks: ResidualVQ | None  # EMA colour codebooks; None with uniform colours
  best: BestStep
  step: jax.Array               # [] int32 steps taken


def split_quantizers(gaussians: Gaussians, quantizers: Quantizers, start: QuantizedGaussians
                     ) -> tuple[QATParams, QATState]:
  """The trained parameters and the state of fine-tuning from ``gaussians``, whose symbols under
  ``quantizers`` are ``start``."""
  rvq = isinstance(quantizers.color, ResidualVQ)
  params = QATParams(gaussians, quantizers.cov, None if rvq else quantizers.color)
  best = BestStep(start, jnp.full((), jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))
  return params, QATState(quantizers.color if rvq else None, best, jnp.zeros((), jnp.int32))


def joined_quantizers(params: QATParams, state: QATState) -> Quantizers:
  """The :class:`~gi_jax.codec.quantize.Quantizers` of fine-tuning's parameters and state."""
  return Quantizers(params.cov, state.codebooks if params.color is None else params.color)


def qat_optimizer(learning_rate: float | optax.Schedule = 1e-3) -> optax.GradientTransformation:
  """Adan on :class:`QATParams` (a float: the paper's schedule)."""
  if callable(learning_rate):
    return optim.adan(learning_rate)
  return default_optimizer(learning_rate)


def _track_best(symbols: QuantizedGaussians, mse: jax.Array, step: jax.Array,
                best: BestStep) -> BestStep:
  """The better of this step and the best so far, for one set."""
  better = mse < best.mse
  return jax.tree.map(lambda c, b: jnp.where(better, c, b), BestStep(symbols, mse, step), best)


def quantized_geometry(height: int, width: int, config: QuantizerConfig, batched: bool = False
                       ) -> Callable[[QATParams, QATState], Gaussians]:
  """``(params, state) -> the Gaussians the fine-tuning loss renders``: what its binning must
  hold."""
  quantize = functools.partial(quantize_gaussians, config=config, image_size=(height, width))
  if batched:
    quantize = jax.vmap(quantize)
  return lambda params, state: quantize(params.gaussians, joined_quantizers(params, state))[0]


def qat_loss(height: int, width: int, backend: str, config: QuantizerConfig,
             batched: bool = False) -> Callable[[int], Callable]:
  """``capacity -> loss_fn(params: QATParams, target, binning, state: QATState) ->
  (loss, (count, next state))`` for :func:`optimize`.

  The gradient is that of ``MSE(render(quantized), target) + commitment``; the value is the MSE
  alone (so histories show the quantized render's PSNR). With ``batched``, ``params``, ``state``
  and ``target`` carry a leading batch axis and the loss is a vector.
  """
  quantize = functools.partial(quantize_gaussians, config=config, image_size=(height, width))
  track = _track_best
  if batched:
    quantize, track = jax.vmap(quantize), jax.vmap(track)

  def make(capacity: int):
    def loss_fn(params: QATParams, target, binned, state: QATState):
      sg = jax.lax.stop_gradient
      gq, aux = quantize(params.gaussians, joined_quantizers(params, state))
      image, count = render_with_count(gq, height, width, backend, binning=binned,
                                       capacity=None if binned is not None else capacity)
      mse = mse_loss(image, target)
      # This step's symbols are exactly what the forward pass rendered.
      best = track(aux.symbols, sg(mse), state.step, state.best)
      codebooks = aux.color if state.codebooks is not None else None
      # The value is the render's MSE (what history and "best" report); the commitment loss only
      # adds its gradient.
      return (mse + (aux.commitment - sg(aux.commitment)),
              (count, QATState(codebooks, best, state.step + 1)))
    return loss_fn

  return make


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """The outcome of :func:`finetune`.

  Attributes:
    quantized: the best quantized set (NumPy symbols), ready for :func:`gi_jax.codec.encode`.
    height, width: image size.
    mse, psnr: of the decoder's render of ``quantized`` against the target.
    best_step: fine-tuning updates applied before the kept step.
    initial_psnr: PSNR of the quantized set before fine-tuning (quantizers freshly initialised).
    gaussians: the final (unquantized) trained parameters.
    quantizers: the final quantizer state.
    history, steps, capacity, compile_seconds, fit_seconds: as in :class:`gi_jax.FitResult`;
      history losses are the quantized render's MSE (the commitment loss is left out).
  """
  quantized: QuantizedGaussians
  height: int
  width: int
  mse: float
  psnr: float
  best_step: int
  initial_psnr: float
  gaussians: Gaussians
  quantizers: Quantizers
  history: list[dict]
  steps: int
  capacity: int
  compile_seconds: float
  fit_seconds: float

  def render(self, backend: str = "auto") -> jax.Array:
    """The decoder's image of the kept step, [H, W, 3] in [0, 1] (bit for bit)."""
    return render_quantized(self.quantized, self.height, self.width, backend)


def finetune(fitted: FitResult | Gaussians, image, steps: int = 50_000, *,
             config: QuantizerConfig = QuantizerConfig(), seed: int = 0,
             learning_rate: float = 1e-3, backend: str = "auto",
             steps_per_call: int | None = None, capacity: int | None = None,
             progress: bool | Callable[[dict], None] = True,
             lr_schedule: str = "paper",
             bin_reuse: BinReuse | None = BinReuse()) -> FinetuneResult:
  """Quantization-aware fine-tuning: the paper's codec training from a fitted set.

  Initialises the quantizers from ``fitted`` (uniform ranges, k-means colour codebooks), then runs
  ``steps`` Adan steps on the quantized render's MSE plus the commitment loss, with EMA codebook
  updates, and keeps the step whose quantized render had the lowest MSE (the final state included).

  Args:
    fitted: a :class:`gi_jax.FitResult` or a fitted :class:`gi_jax.Gaussians` (one set).
    image: the target [H, W, 3] float image in [0, 1].
    steps: fine-tuning steps (>= 0); the paper uses 50,000.
    config: quantizer settings (the paper's by default; ``position_step`` > 0 for grid
      positions).
    seed: seed of the k-means initialisation.
    learning_rate: base learning rate of the fresh Adan.
    backend: rendering backend.
    steps_per_call: steps per device call (default: 1000 on GPU, 100 elsewhere).
    capacity: initial intersection capacity (default: from the fitted set); grown as needed.
    progress: True prints progress to stderr; a callable receives each history record.
    lr_schedule: as for :func:`gi_jax.fit` (``"paper"``, ``"cosine"`` or ``"hold_cosine"``).
    bin_reuse: as for :func:`gi_jax.fit` (the quantized Gaussians' binning is reused).

  Returns:
    A :class:`FinetuneResult`; ``result.quantized`` is what :func:`gi_jax.codec.encode` writes.

  Example:
    >>> fitted = gi_jax.fit(image, 5000, steps=50_000)
    >>> tuned = codec.finetune(fitted, image, steps=50_000)
    >>> data = codec.encode(tuned.quantized, *image.shape[:2])
  """
  return _finetune([fitted], [image], steps, config=config, seeds=[seed],
                   learning_rate=learning_rate, backend=backend, steps_per_call=steps_per_call,
                   capacity=capacity, progress=progress, batched=False,
                   lr_schedule=lr_schedule, mesh=None, bin_reuse=bin_reuse)[0]


def finetune_batch(fits: Sequence[FitResult | Gaussians], images, steps: int = 50_000, *,
                   config: QuantizerConfig = QuantizerConfig(),
                   seeds: Sequence[int] | None = None, learning_rate: float = 1e-3,
                   backend: str = "auto", steps_per_call: int | None = None,
                   capacity: int | None = None,
                   progress: bool | Callable[[dict], None] = True,
                   lr_schedule: str = "paper", mesh: Mesh | None = None,
                   bin_reuse: BinReuse | None = BinReuse()) -> list[FinetuneResult]:
  """:func:`finetune` of B same-size images at once (vmapped quantizers, one batched render),
  sharded across devices like :func:`gi_jax.fit_batch`.

  Each set keeps its own quantizers, codebooks and best step; the summed loss gives each exactly
  its own gradient, so image i's result is ``finetune(fits[i], images[i], seed=seeds[i])``: bit for
  bit for one image, up to float rounding in a larger batch (XLA fuses the stacked program
  differently). All sets share one intersection capacity (the largest need).

  Args:
    fits: B fitted sets (:class:`gi_jax.FitResult` or :class:`gi_jax.Gaussians`), the same N.
    images: B target images of one size.
    seeds: k-means seed of each image (default ``range(B)``).
    steps, config, learning_rate, backend, steps_per_call, capacity, lr_schedule, bin_reuse: as
      for :func:`finetune`.
    progress: as for :func:`finetune`; records hold lists of B losses and PSNRs.
    mesh: a mesh with an axis ``"batch"`` to shard the images over, as for
      :func:`gi_jax.fit_batch` (default: all devices; ``default_mesh(1)`` keeps one).

  Returns:
    B :class:`FinetuneResult` in input order; timings are the batch's.

  Raises:
    InvalidInputError: mixed image sizes or Gaussian counts, or too few images or seeds.
    ImageTooLargeError: the batch would not fit in device memory (the message names one that would).
  """
  fits, images = list(fits), list(images)
  seeds = list(range(len(fits))) if seeds is None else list(seeds)
  return _finetune(fits, images, steps, config=config, seeds=seeds, learning_rate=learning_rate,
                   backend=backend, steps_per_call=steps_per_call, capacity=capacity,
                   progress=progress, batched=True, lr_schedule=lr_schedule, mesh=mesh,
                   bin_reuse=bin_reuse)


def _checked_set(fitted, height: int, width: int) -> Gaussians:
  """The float32 Gaussians of one fit, after checking it can be fine-tuned against the image."""
  if getattr(fitted, "opacity", None) is not None:
    raise errors.InvalidInputError(
        "the codec quantizes accumulated-summation fits (the paper's), not α-blended ones")
  gaussians = fitted.gaussians if isinstance(fitted, FitResult) else fitted
  if not isinstance(gaussians, Gaussians):
    raise errors.InvalidInputError(f"finetune needs a FitResult or Gaussians, got {type(fitted)}")
  gaussians = gaussians.validate()
  if gaussians.means_raw.ndim != 2:
    raise errors.InvalidInputError("finetune takes Gaussian sets [N], not a stacked batch")
  if isinstance(fitted, FitResult) and (fitted.height, fitted.width) != (height, width):
    raise errors.InvalidInputError(
        f"the fit is {fitted.height}×{fitted.width} but the image is {height}×{width}")
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), gaussians)


def _finetune(fits, images, steps, *, config, seeds, learning_rate, backend, steps_per_call,
              capacity, progress, batched, lr_schedule, mesh, bin_reuse) -> list[FinetuneResult]:
  """:func:`finetune_batch` (``batched``: records with lists of B values, sharded over ``mesh``) and
  :func:`finetune` (one image, one device)."""
  targets = [check_target_image(image) for image in images]
  if not targets or len(targets) != len(fits) or len(seeds) != len(fits):
    raise errors.InvalidInputError(
        f"finetune needs one image and seed per fit, got {len(fits)} fits, {len(targets)} "
        f"images and {len(seeds)} seeds")
  shapes = sorted({tuple(t.shape) for t in targets})
  if len(shapes) > 1:
    raise errors.InvalidInputError(f"finetune_batch needs images of one size, got {shapes}")
  height, width = shapes[0][:2]
  sets = [_checked_set(f, height, width) for f in fits]
  if len({g.means_raw.shape for g in sets}) > 1:
    raise errors.InvalidInputError("finetune_batch needs the same number of Gaussians per image")
  steps = check_steps(steps)
  backend = resolve_backend(backend)
  config.position_cells(height, width)  # fails early on an impossible grid
  count = len(sets)
  order = [0]
  if batched:
    mesh, order = plan_shards(count, mesh)
    # Fitting's footprint estimate, not one calibrated for QAT: the best-step snapshot and the
    # quantizers add under a dozen words per Gaussian to the estimate's 16 per parameter (128 for
    # RGB).
    check_batch_fits(len(order), sets[0].means_raw.shape[0], height, width, num_shards(mesh),
                     sets[0].colors.shape[-1])

  quantizers = [init_quantizers(jax.random.key(seed), g, config) for g, seed in zip(sets, seeds)]
  starts = [to_quantized(g, q, config, (height, width)) for g, q in zip(sets, quantizers)]
  slots = [split_quantizers(g, q, start) for g, q, start in zip(sets, quantizers, starts)]
  (params, state), target, stacked = stack_slots([(slots[i], targets[i]) for i in order], mesh)
  make_loss = qat_loss(height, width, backend, config, stacked)
  if stacked and mesh is not None:
    make_loss = sharded_loss(make_loss, mesh)
  steps_per_call = resolve_steps_per_call(steps_per_call, steps)
  margin = bin_reuse.margin if bin_reuse is not None else 0.0
  if capacity is None:
    capacity = max(initial_capacity(q.dequantize(), height, width, margin) for q in starts)
  rebinner = (Rebinner(height, width, bin_reuse, quantized_geometry(height, width, config, stacked))
              if bin_reuse is not None else None)
  user_report = progress if callable(progress) else (
      ProgressPrinter(steps, prefix="finetune") if progress else (lambda record: None))

  def report(record):
    user_report(caller_record(record, stacked, count, batched))

  schedule = optim.make_schedule(lr_schedule, learning_rate, steps)
  # The rate and step count are numbers in the optimizer's state, not in the step.
  program = ("finetune", height, width, rasterizer(backend), config, stacked,
             mesh if stacked else None, lr_schedule, bin_reuse)
  out = optimize(params, target, int(steps), make_loss, optimizer=qat_optimizer(schedule),
                 capacity=capacity, steps_per_call=steps_per_call, report=report,
                 schedule=schedule, rebinner=rebinner, aux=state, program=program)
  finals = (unstack_batch((out.params, out.aux), count) if stacked else [(out.params, out.aux)])
  # Candidates of each image: the starting point, the best step seen in training and the final
  # state (never evaluated in training); each scored by the decoder's own render.
  options = []  # per image: (step, quantized set)
  for i, ((final, final_state), start) in enumerate(zip(finals, starts)):
    options.append([(0, start.to_numpy())])
    if steps > 0:
      best = final_state.best
      options[i].append((int(best.step), best.symbols.to_numpy()))
      if not final.gaussians.nonfinite_fields():  # a diverged run keeps its best step before
        options[i].append((int(steps), to_quantized(
            final.gaussians, joined_quantizers(final, final_state), config,
            (height, width)).to_numpy()))
      else:
        which = f" (image {i} of the batch)" if batched else ""
        errors.warn(f"fine-tuning diverged{which}: its final state is not finite; kept step "
                    f"{int(best.step)}, the best before")
  # One capacity for all: one compiled render for the batch, not one per image's count.
  shared = render_capacity([q for image in options for _, q in image], height, width)

  results = []
  for i, ((final, final_state), target) in enumerate(zip(finals, targets)):
    candidates = [(quantized_mse(q, target, backend, capacity=shared), step, q)
                  for step, q in options[i]]
    initial = candidates[0][0]
    candidates = [c for c in candidates if np.isfinite(c[0])]
    if not candidates:
      raise errors.InvalidInputError("fine-tuning diverged: no step rendered a finite MSE")
    mse, best_step, quantized = min(candidates, key=lambda c: (c[0], -c[1]))
    history = [image_record(r, i) for r in out.history] if stacked else out.history
    results.append(FinetuneResult(
        quantized=quantized, height=height, width=width, mse=mse, psnr=psnr_from_mse(mse),
        best_step=best_step, initial_psnr=psnr_from_mse(initial), gaussians=final.gaussians,
        quantizers=joined_quantizers(final, final_state), history=history, steps=out.steps,
        capacity=out.capacity, compile_seconds=out.compile_seconds,
        fit_seconds=out.fit_seconds))
  return results
