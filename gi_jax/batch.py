"""Fitting many images at once: a batch of Gaussian sets, optionally sharded across devices.

:func:`fit_batch` stacks B Gaussian sets [B, N, ...] for B same-size images and runs the ordinary
fitting driver (:func:`gi_jax.fitting.optimize`) on them. The loss is a vector [B] summed for the
gradient, so each set gets exactly the gradient of its own image, and Adan is elementwise: every
image follows the trajectory that ``fit(image, seed=seed)`` would, to float rounding. The one thing
shared is the intersection capacity (the batch's maximum), and capacity never changes results.

With several devices the batch axis is sharded over a 1-D ``Mesh`` with the axis ``"batch"``: the
state and targets live on a ``NamedSharding(mesh, P("batch"))``, rendering runs under
``jax.shard_map`` (each device renders only its own images: no collectives in the renderer) and
the elementwise optimiser update is partitioned by ``jit``. A batch that does not divide evenly is
padded with copies of its last image, whose results are dropped. :func:`plan_shards`,
:func:`place_batch`, :func:`sharded_loss`, :func:`unstack_batch` and :func:`image_record` are that
recipe; the codec's ``finetune_batch`` uses them too.

Across hosts (``jax.distributed.initialize()`` called first) the default mesh spans the global
``jax.devices()``; every process must call ``fit_batch`` with the same images and seeds, each one
builds its own devices' shards with ``jax.make_array_from_callback``, and results are gathered back
with ``process_allgather``. That path is written for, but not tested on, more than one process.

:func:`fit_dataset` takes images of any sizes (or their paths), groups them into same-shape buckets,
fits each bucket in batches, and returns the results in input order.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gi_jax import errors, memory, optim
from gi_jax.fitting import (BinReuse, FitResult, ProgressPrinter, Rebinner, check_target_image,
                            initial_capacity, optimize, render_loss, resolve_steps_per_call,
                            scheduled_adan, warn_if_saturating)
from gi_jax.densify import DensifySchedule, make_post_step as densify_post_step
from gi_jax.gaussians import check_count, check_steps
from gi_jax.init import initialize
from gi_jax.render import check_clip_gradient, resolve_backend

BATCH_AXIS = "batch"
# Fraction of free device memory that --batch_size auto plans to use: XLA's own buffers and
# fragmentation need the rest.
MEMORY_HEADROOM = 0.7


def default_mesh(batch_size: int | None = None) -> Mesh:
  """A 1-D mesh with axis ``"batch"`` over the devices a batch should use.

  With one process it uses at most ``batch_size`` local devices (so a small batch is not padded to
  the device count); with several processes it uses every global device, as each process must
  take part in each computation.

  Args:
    batch_size: the number of images (None: all devices).

  Returns:
    A ``jax.sharding.Mesh``.
  """
  devices = jax.devices()
  if jax.process_count() == 1 and batch_size is not None:
    devices = devices[:max(1, min(int(batch_size), len(devices)))]
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def _free_bytes_per_device(devices: Sequence[jax.Device]) -> int | None:
  """The smallest free memory of ``devices``; CPU devices share host RAM, so it is divided."""
  free = [memory.device_free_bytes(d) for d in devices]
  if any(f is None for f in free):
    return None
  smallest = min(free)
  if devices[0].platform == "cpu":
    smallest //= max(1, len([d for d in jax.local_devices() if d.platform == "cpu"]))
  return smallest


def max_batch_size(num_gaussians: int, height: int, width: int, *,
                   num_devices: int | None = None) -> int | None:
  """The largest batch whose estimated footprint fits in free device memory (None if unknown).

  Args:
    num_gaussians: N.
    height: image height.
    width: image width.
    num_devices: devices the batch is sharded over (default: all of them).

  Returns:
    A batch size (0 when not even one image per device fits), or None when free memory is unknown.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  free = _free_bytes_per_device(devices)
  if free is None:
    return None
  per_image = memory.estimate_bytes_per_image(num_gaussians, height, width)
  return int(free * MEMORY_HEADROOM // per_image) * len(devices)


def check_batch_fits(batch_size: int, num_gaussians: int, height: int, width: int,
                     num_devices: int) -> None:
  """Raises ImageTooLargeError, naming a batch size that would fit, when a batch cannot fit.

  Args:
    batch_size: images in the batch (including padding).
    num_gaussians: N.
    height: image height.
    width: image width.
    num_devices: devices the batch is sharded over.
  """
  devices = jax.devices()[:num_devices]
  free = _free_bytes_per_device(devices)
  if free is None:
    return
  per_device = math.ceil(batch_size / num_devices)
  need = per_device * memory.estimate_bytes_per_image(num_gaussians, height, width)
  if need <= free * MEMORY_HEADROOM:
    return
  fits = max_batch_size(num_gaussians, height, width, num_devices=num_devices)
  what = (f"a batch of {batch_size} {width}×{height} images with {num_gaussians} Gaussians each "
          f"needs about {need / 2**30:.2f} GiB per device ({per_device} images on each of "
          f"{num_devices}), but about {free * MEMORY_HEADROOM / 2**30:.2f} GiB can be used")
  if fits:
    raise errors.ImageTooLargeError(f"{what}; batch_size={fits} would fit")
  raise errors.ImageTooLargeError(
      f"{what}; not even one image per device fits: use fewer Gaussians or smaller images")


def auto_batch_size(num_images: int, num_gaussians: int, height: int, width: int) -> int:
  """The batch size ``"auto"`` stands for: all images if they fit, else the largest that fits.

  Rounded down to a multiple of the device count when it spans them all, so no device idles on
  padding.

  Raises:
    ImageTooLargeError: not even one image fits.
  """
  fits = max_batch_size(num_gaussians, height, width)
  if fits is None:
    return num_images
  if fits < 1:
    check_batch_fits(1, num_gaussians, height, width, 1)  # raises with the numbers
  size = min(num_images, fits)
  num_devices = len(jax.devices())
  if size >= num_devices:
    size -= size % num_devices
  return max(1, size)


def _to_host(x) -> np.ndarray:
  """A NumPy copy of a (possibly multi-process) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def plan_shards(count: int, mesh: Mesh | None) -> tuple[Mesh | None, list[int]]:
  """Where a batch of ``count`` images runs, and which image fills each slot of the padded batch.

  Args:
    count: the number of images B >= 1.
    mesh: a mesh with an axis ``"batch"``, or None for :func:`default_mesh` where there are several
      devices (no sharding with one).

  Returns:
    ``(mesh, order)``: the mesh (None: one device) and the image index of each batch slot. The batch
    is padded to a multiple of the shard count by repeating the last image (and its seed): real work
    whose results are dropped.
  """
  if mesh is None and len(jax.devices()) > 1:
    mesh = default_mesh(count)
  if mesh is not None and BATCH_AXIS not in mesh.axis_names:
    raise errors.InvalidInputError(
        f"mesh needs an axis named {BATCH_AXIS!r}, has {mesh.axis_names}")
  shards = num_shards(mesh)
  padded = -(-count // shards) * shards
  return mesh, list(range(count)) + [count - 1] * (padded - count)


def num_shards(mesh: Mesh | None) -> int:
  """The number of shards of the batch axis (1 without a mesh)."""
  return mesh.shape[BATCH_AXIS] if mesh is not None else 1


def place_batch(slots: Sequence, mesh: Mesh | None):
  """One pytree per batch slot, stacked along a leading batch axis onto the devices (sharded over
  ``mesh`` if given)."""
  tree = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *slots)
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))

  def place(x):
    # Each process fills only its own devices' shards from its (full) host copy: multi-host safe.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(place, tree)


def unstack_batch(tree, count: int) -> list:
  """The first ``count`` slots of a (possibly sharded, multi-process) batched pytree, one pytree
  each, gathered to this process."""
  host = jax.tree.map(_to_host, tree)
  return [jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), host) for i in range(count)]


def image_record(record: dict, index: int | slice) -> dict:
  """A batch history record with its per-image ``loss`` and ``psnr`` lists indexed by ``index``
  (one image, or a slice such as the caller's images without the padding)."""
  return dict(record, loss=record["loss"][index], psnr=record["psnr"][index])


def sharded_loss(make_loss, mesh: Mesh):
  """Wraps ``capacity -> loss_fn`` so each device renders its own slice of the batch.

  The per-image losses and counts come back replicated (they are tiny), so the driver can read them
  on every process; ``with_sharding_constraint`` has an identity gradient, so the gradient of the
  summed loss still reaches each image's parameters exactly.
  """
  batch = PartitionSpec(BATCH_AXIS)
  replicated = NamedSharding(mesh, PartitionSpec())

  def make(capacity):
    # check_vma=False: the renderer's scans start from unsharded zeros, and nothing here
    # communicates across devices, so there is no replication to track.
    local_loss = jax.shard_map(make_loss(capacity), mesh=mesh, in_specs=(batch, batch, batch),
                               out_specs=(batch, batch), check_vma=False)

    def loss_fn(params, target, binned=None):
      loss, count = local_loss(params, target, binned)
      return (jax.lax.with_sharding_constraint(loss, replicated),
              jax.lax.with_sharding_constraint(count, replicated))
    return loss_fn

  return make


def _check_seeds(seeds, count: int) -> list[int]:
  seeds = list(range(count)) if seeds is None else list(seeds)
  if len(seeds) != count:
    raise errors.InvalidInputError(f"got {len(seeds)} seeds for {count} images")
  for s in seeds:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
      raise errors.InvalidInputError(f"seeds must be integers, got {s!r}")
  return [int(s) for s in seeds]


def fit_batch(images, num_gaussians: int, steps: int, *, seeds: Sequence[int] | None = None,
              parameterization: str = "cholesky", learning_rate: float = 1e-3,
              backend: str = "auto", steps_per_call: int | None = None,
              capacity: int | None = None,
              progress: bool | Callable[[dict], None] = True,
              mesh: Mesh | None = None, init: str | None = None,
              densify: DensifySchedule | None = None,
              lr_schedule: str = "paper", clip_gradient: str = "exact",
              bin_reuse: BinReuse | None = BinReuse(),
              unroll: int | None = None) -> list[FitResult]:
  """Fits B same-size images at once, each with its own Gaussians; results equal B single fits.

  Args:
    images: B images [H, W, 3] in [0, 1] (a sequence, or an array [B, H, W, 3]), all the same size.
    num_gaussians: N >= 1, per image.
    steps: optimisation steps (>= 0).
    seeds: initialisation seed of each image (default ``range(B)``); image i's result equals
      ``fit(images[i], num_gaussians, steps, seed=seeds[i])``.
    parameterization: ``"cholesky"`` or ``"rs"``.
    learning_rate: base learning rate of the paper's schedule.
    backend: rendering backend (see :func:`gi_jax.render`).
    steps_per_call: steps per device call (default: 1000 on GPU, 100 elsewhere).
    capacity: initial intersection capacity shared by the batch (default: from the initial counts).
    progress: True prints progress lines to stderr; a callable receives each history record, with
      ``loss`` and ``psnr`` lists of B values.
    mesh: a mesh with an axis ``"batch"`` to shard the images over (default: :func:`default_mesh`;
      no sharding with one device). Pass ``default_mesh(1)`` to keep everything on one device.
    init: ``None``/``"random"`` (the paper's) or ``"gradient"`` (:func:`gi_jax.init.gradient_init`),
      per image from its seed, as ``fit`` does.
    densify: a :class:`gi_jax.densify.DensifySchedule`, applied to each image on its own.
    lr_schedule: as for :func:`gi_jax.fit`.
    clip_gradient: ``"exact"`` or ``"straight_through"``, as for :func:`gi_jax.fit`.
    bin_reuse, unroll: as for :func:`gi_jax.fit`; the batch bins again when any of its sets has
      left its binning (the result is the same).

  Returns:
    B :class:`~gi_jax.fitting.FitResult`, in the order of ``images``. ``fit_seconds`` and
    ``compile_seconds`` are those of the whole batch.

  Raises:
    InvalidInputError: images of different sizes (use :func:`fit_dataset`), bad counts or seeds.
    ImageTooLargeError: the batch would not fit in device memory (the message names one that would).

  Example:
    >>> results = gi_jax.fit_batch([img_a, img_b], num_gaussians=2000, steps=1000)
    >>> [r.history[-1]["psnr"] for r in results]
  """
  targets = [np.asarray(check_target_image(image)) for image in images]
  optim.check_learning_rate(learning_rate)  # before initialising: NaN would fit silently to NaN
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
  seeds = _check_seeds(seeds, count)
  warn_if_saturating(check_clip_gradient(clip_gradient), num_gaussians, height, width)
  backend = resolve_backend(backend)
  steps_per_call = resolve_steps_per_call(steps_per_call, steps)

  mesh, order = plan_shards(count, mesh)
  check_batch_fits(len(order), num_gaussians, height, width, num_shards(mesh))

  if init is not None and not isinstance(init, str):
    raise errors.InvalidInputError("fit_batch takes init='random' or 'gradient' (per image)")
  inits = [initialize(init, jax.random.key(seeds[i]), targets[i], num_gaussians, parameterization)
           for i in order]
  if capacity is None:
    # Image by image rather than on the stacked batch: the same small eager ops (compiled once
    # per N) serve every batch size, and the capacity ladder is monotone, so max over images equals
    # the batch's.
    margin = bin_reuse.margin if bin_reuse is not None else 0.0
    capacity = max(initial_capacity(g, height, width, margin) for g in inits[:count])

  params, target = place_batch([(g, targets[i]) for g, i in zip(inits, order)], mesh)
  make_loss = render_loss(height, width, backend, clip_gradient)
  if mesh is not None:
    make_loss = sharded_loss(make_loss, mesh)

  if callable(progress):
    user_report = progress
  elif progress:
    user_report = ProgressPrinter(steps, prefix="fit_batch")
  else:
    user_report = lambda record: None

  def report(record):
    user_report(image_record(record, slice(count)))

  optimizer, schedule = scheduled_adan(learning_rate, lr_schedule, steps)
  post_step = (densify_post_step(densify, steps, height, width, backend)
               if densify is not None else None)
  rebinner = Rebinner(height, width, bin_reuse) if bin_reuse is not None else None
  out = optimize(params, target, steps, make_loss, optimizer=optimizer,
                 capacity=capacity, steps_per_call=steps_per_call, report=report,
                 schedule=schedule, make_post_step=post_step, rebinner=rebinner,
                 unroll=unroll or 1)

  return [FitResult(gaussians, [image_record(record, i) for record in out.history], height, width,
                    out.steps, out.capacity, out.compile_seconds, out.fit_seconds)
          for i, gaussians in enumerate(unstack_batch(out.params, count))]


def image_shape(item) -> tuple[int, int]:
  """(height, width) of an image array or file, reading only a file's header where possible."""
  if isinstance(item, (str, os.PathLike)):
    from PIL import Image  # local: only paths need it
    try:
      with Image.open(item) as im:
        width, height = im.size
        return int(height), int(width)
    except Exception:  # let the full reader produce the proper error
      from gi_jax import io
      return tuple(io.load_image(item).shape[:2])
  shape = np.shape(item)
  if len(shape) != 3:
    raise errors.InvalidInputError(f"images must have shape [H, W, 3], got {shape}")
  return int(shape[0]), int(shape[1])


def _load(item) -> np.ndarray:
  if isinstance(item, (str, os.PathLike)):
    from gi_jax import io
    return io.load_image(item)
  return np.asarray(item)


def group_by_shape(shapes: Sequence[tuple[int, int]]) -> list[list[int]]:
  """Indices grouped by equal shape; groups in order of first appearance, indices ascending."""
  groups: dict[tuple[int, int], list[int]] = {}
  for i, shape in enumerate(shapes):
    groups.setdefault(tuple(shape), []).append(i)
  return list(groups.values())


class DatasetProgress:
  """Progress over a whole dataset: images done, image-steps per second, ETA."""

  def __init__(self, num_images: int, steps: int, interval: float = 2.0, stream=sys.stderr):
    self.num_images = num_images
    self.steps = steps
    self.interval = interval
    self.stream = stream
    self.done = 0
    self.done_seconds = 0.0   # fit time of the finished batches
    self.batch = 0
    self.last = -math.inf

  def start_batch(self, size: int):
    self.batch = size

  def end_batch(self, seconds: float):
    self.done += self.batch
    self.done_seconds += seconds
    self.batch = 0

  def __call__(self, record: dict):
    now = time.perf_counter()
    final = record["step"] >= self.steps
    if not final and now - self.last < self.interval:
      return
    self.last = now
    image_steps = self.done * self.steps + self.batch * record["step"]
    seconds = self.done_seconds + record["seconds"]
    rate = image_steps / max(seconds, 1e-9)  # image-steps per second
    left = (self.num_images * self.steps - image_steps) / rate if rate > 0 else float("inf")
    psnr = np.atleast_1d(np.asarray(record["psnr"], np.float64))
    done = self.done + (self.batch if final else 0)
    print(f"dataset: {done}/{self.num_images} images done  batch of {self.batch} at step "
          f"{record['step']}/{self.steps}  psnr mean {psnr.mean():.2f} dB  "
          f"{rate / max(self.batch, 1):.1f} steps/s × {self.batch} images  eta {_duration(left)}",
          file=self.stream, flush=True)


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def fit_dataset(images_or_paths, num_gaussians: int, steps: int, *,
                seeds: Sequence[int] | None = None, batch_size: int | str | None = None,
                on_result: Callable[[int, FitResult, list[int]], None] | None = None,
                progress: bool | Callable[[dict], None] = True, **fit_batch_kwargs
                ) -> list[FitResult]:
  """Fits images of any sizes, batching same-size ones; results come back in input order.

  Images are grouped by shape (no sorting needed) and each group is fitted in batches with
  :func:`fit_batch`; files are read only when their batch runs.

  Args:
    images_or_paths: images [H, W, 3] in [0, 1] and/or paths of PNG or JPEG files.
    num_gaussians: N >= 1, per image.
    steps: optimisation steps.
    seeds: one seed per image (default ``range(len(images))``).
    batch_size: images per batch: an int, ``"auto"`` (the largest that fits in free device memory,
      see :func:`auto_batch_size`) or None (each same-shape group in one batch).
    on_result: called as ``on_result(index, result, batch)`` for each image as soon as its batch
      finishes (``batch``: the input indices fitted together), e.g. to write results while later
      batches run.
    progress: True prints dataset progress (images done, steps/s, ETA) to stderr; a callable
      receives each batch's history records.
    **fit_batch_kwargs: passed on to :func:`fit_batch` (parameterization, learning_rate, backend,
      steps_per_call, mesh, ...).

  Returns:
    One :class:`~gi_jax.fitting.FitResult` per input, in input order.
  """
  items = list(images_or_paths)
  if not items:
    return []
  num_gaussians = check_count(num_gaussians)
  steps = check_steps(steps)
  seeds = _check_seeds(seeds, len(items))
  if not (batch_size is None or batch_size == "auto" or
          (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
           and batch_size >= 1)):
    raise errors.InvalidInputError(
        f"batch_size must be an integer >= 1, 'auto' or None, got {batch_size!r}")
  shapes = [image_shape(item) for item in items]
  groups = group_by_shape(shapes)
  tracker = DatasetProgress(len(items), steps) if progress is True else None
  report = tracker if tracker is not None else progress

  results: list[FitResult | None] = [None] * len(items)
  for group in groups:
    height, width = shapes[group[0]]
    if batch_size is None:
      size = len(group)
    elif batch_size == "auto":
      size = auto_batch_size(len(group), num_gaussians, height, width)
    else:
      size = int(batch_size)
    for start in range(0, len(group), size):
      chunk = group[start:start + size]
      if tracker is not None:
        tracker.start_batch(len(chunk))
      batch = fit_batch([_load(items[i]) for i in chunk], num_gaussians, steps,
                        seeds=[seeds[i] for i in chunk], progress=report, **fit_batch_kwargs)
      if tracker is not None:
        tracker.end_batch(batch[0].fit_seconds)
      for i, result in zip(chunk, batch):
        results[i] = result
        if on_result is not None:
          on_result(i, result, chunk)
  return results
