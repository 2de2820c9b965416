"""Fitting many same-size images at once: a batch of Gaussian sets, optionally sharded.

:func:`fit_batch` stacks B Gaussian sets [B, N, ...] for B same-size images and runs the ordinary
fitting driver (:func:`gi_jax.fitting.fit_images`, which :func:`gi_jax.fit` runs with one image)
on them. The loss is a vector [B] summed for the gradient, so each set gets exactly the gradient of
its own image, and Adan is elementwise: every image follows the trajectory that
``fit(image, seed=seed)`` would, to float rounding (XLA fuses the stacked program differently). A
batch of one is not stacked and equals ``fit`` bit for bit. The one thing shared is the
intersection capacity (the batch's maximum), and capacity never changes results.

With several devices the batch is sharded over a ``"batch"`` mesh (:mod:`gi_jax.sharding`) and
checked against free device memory first (:func:`gi_jax.memory.check_batch_fits`). Images of
mixed sizes go through :func:`gi_jax.dataset.fit_dataset`, which buckets them and calls this.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gi_jax import errors, memory, recipes
from gi_jax.densify import DensifySchedule
from gi_jax.fitting import (BinReuse, FitResult, ProgressPrinter, check_target_image, fit_images,
                            warn_if_saturating)
from gi_jax.gaussians import check_count, check_steps
from gi_jax.render import resolve_backend
from gi_jax.sharding import num_shards, plan_shards


def check_seeds(seeds: Sequence[int] | None, count: int) -> list[int]:
  """``seeds`` as a list of ``count`` ints (default ``range(count)``), else an InvalidInputError."""
  seeds = list(range(count)) if seeds is None else list(seeds)
  if len(seeds) != count:
    raise errors.InvalidInputError(f"got {len(seeds)} seeds for {count} images")
  for s in seeds:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
      raise errors.InvalidInputError(f"seeds must be integers, got {s!r}")
  return [int(s) for s in seeds]


def fit_batch(images, num_gaussians: int, steps: int, *, seeds: Sequence[int] | None = None,
              parameterization: str = "cholesky", learning_rate: float | None = None,
              backend: str = "auto", steps_per_call: int | None = None,
              capacity: int | None = None,
              progress: bool | Callable[[dict], None] = True,
              mesh: Mesh | None = None, init: str | None = None,
              densify: DensifySchedule | None = None,
              lr_schedule: str | None = None, clip_gradient: str | None = None,
              bin_reuse: BinReuse | None = BinReuse(),
              unroll: int | None = None,
              recipe: str | recipes.Recipe = "paper") -> list[FitResult]:
  """Fits B same-size images at once, each with its own Gaussians, as B single fits would.

  Args:
    images: B images [H, W, C] in [0, 1] (a sequence, or an array [B, H, W, C]), all the same
      size and channel count.
    num_gaussians: N >= 1, per image.
    steps: optimisation steps (>= 0).
    seeds: initialisation seed of each image (default ``range(B)``); image i's result is
      ``fit(images[i], num_gaussians, steps, seed=seeds[i])``: bit for bit for one image, to
      float rounding in a larger batch.
    parameterization: ``"cholesky"`` or ``"rs"``.
    learning_rate: base learning rate of the schedule (None: the recipe's).
    backend: rendering backend (see :func:`gi_jax.render`).
    steps_per_call: steps per device call (default: 1000 on GPU, 100 elsewhere).
    capacity: initial intersection capacity shared by the batch (default: from the initial counts).
    progress: True prints progress lines to stderr; a callable receives each history record, with
      ``loss`` and ``psnr`` lists of B values.
    mesh: a mesh with an axis ``"batch"`` to shard the images over (default:
      :func:`gi_jax.sharding.default_mesh`; no sharding with one device). Pass ``default_mesh(1)``
      to keep everything on one device.
    init: ``"random"`` (the paper's) or ``"gradient"`` (:func:`gi_jax.init.gradient_init`),
      per image from its seed, as ``fit`` does; None: the recipe's.
    densify: a :class:`gi_jax.densify.DensifySchedule`, applied to each image on its own; None:
      the recipe's.
    lr_schedule: as for :func:`gi_jax.fit`.
    clip_gradient: ``"exact"`` or ``"straight_through"``, as for :func:`gi_jax.fit`.
    bin_reuse, unroll: as for :func:`gi_jax.fit`; the batch bins again when any of its sets has
      left its binning (the result is the same).
    recipe: as for :func:`gi_jax.fit` (default ``"paper"``); arguments left None take its
      settings.

  Returns:
    B :class:`~gi_jax.fitting.FitResult`, in the order of ``images``. ``fit_seconds`` and
    ``compile_seconds`` are those of the whole batch.

  Raises:
    InvalidInputError: images of different sizes (use :func:`gi_jax.fit_dataset`), bad counts or
      seeds.
    ImageTooLargeError: the batch would not fit in device memory (the message names one that would).

  Example:
    >>> results = gi_jax.fit_batch([img_a, img_b], num_gaussians=2000, steps=1000)
    >>> [r.history[-1]["psnr"] for r in results]
  """
  if init is not None and not isinstance(init, str):
    raise errors.InvalidInputError("fit_batch takes init='random' or 'gradient' (per image)")
  recipe = recipes.resolve(recipe, init=init, learning_rate=learning_rate,
                           lr_schedule=lr_schedule, densify=densify, clip_gradient=clip_gradient)
  targets = [np.asarray(check_target_image(image)) for image in images]
  if not targets:
    raise errors.InvalidInputError("fit_batch needs at least one image")
  shapes = sorted({t.shape for t in targets})
  if len(shapes) > 1:
    raise errors.InvalidInputError(
        f"fit_batch needs images of one size, got {shapes}; fit_dataset groups mixed sizes")
  height, width = shapes[0][:2]
  count = len(targets)
  num_gaussians = check_count(num_gaussians)
  steps = check_steps(steps)
  seeds = check_seeds(seeds, count)
  warn_if_saturating(recipe.clip_gradient, num_gaussians, height, width)
  backend = resolve_backend(backend)

  mesh, order = plan_shards(count, mesh)
  memory.check_batch_fits(len(order), num_gaussians, height, width, num_shards(mesh),
                          shapes[0][-1])
  optimizer, schedule = recipe.optimizer(steps, height, width, num_gaussians)
  report = progress if callable(progress) else (
      ProgressPrinter(steps, prefix="fit_batch") if progress else (lambda record: None))
  return fit_images([jnp.asarray(t) for t in targets], num_gaussians, steps, seeds=seeds,
                    order=order, mesh=mesh, parameterization=parameterization,
                    optimizer=optimizer, schedule=schedule, backend=backend, init=recipe.init,
                    steps_per_call=steps_per_call, capacity=capacity, report=report,
                    densify=recipe.densify, clip_gradient=recipe.clip_gradient,
                    bin_reuse=bin_reuse, unroll=unroll, batch_records=True,
                    optimizer_key=recipe.optimizer_key(height, width, num_gaussians))
