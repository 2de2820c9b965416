"""Fitting a dataset: images of any sizes (or their paths) grouped into same-shape buckets.

:func:`fit_dataset` groups images by shape, fits each group in batches with
:func:`gi_jax.batch.fit_batch` (sized to free device memory with ``batch_size="auto"``), reads files
only when their batch runs, and returns the results in input order.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from gi_jax import errors, io, memory, recipes
from gi_jax.batch import check_seeds, fit_batch
from gi_jax.fitting import FitResult
from gi_jax.gaussians import check_count, check_steps


def _is_file(item) -> bool:
  return isinstance(item, (str, os.PathLike))


def image_shape(item) -> tuple[int, int]:
  """(height, width) of an image array or file, reading only a file's header where possible."""
  if _is_file(item):
    try:
      with Image.open(item) as im:
        width, height = im.size
        return int(height), int(width)
    except Exception:  # let the full reader produce the proper error
      return tuple(io.load_image(item).shape[:2])
  shape = np.shape(item)
  if len(shape) != 3:
    raise errors.InvalidInputError(f"images must have shape [H, W, C], got {shape}")
  return int(shape[0]), int(shape[1])


def _channels(item, channels: int | None) -> int:
  """C of an image array, or of a file read with ``load_image(..., channels=channels)`` (with
  None, what the file has: the file is decoded to find out)."""
  if not _is_file(item):
    return int(np.shape(item)[-1])
  return channels if channels is not None else int(_load(item, None).shape[-1])


def _load(item, channels: int | None) -> np.ndarray:
  if _is_file(item):
    return io.load_image(item, channels=channels)
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
                progress: bool | Callable[[dict], None] = True,
                recipe: str | recipes.Recipe = "paper", channels: int | None = 3,
                **fit_batch_kwargs) -> list[FitResult]:
  """Fits images of any sizes, batching same-size ones; results come back in input order.

  Images are grouped by shape (no sorting needed) and each group is fitted in batches with
  :func:`~gi_jax.batch.fit_batch`; files are read only when their batch runs.

  Args:
    images_or_paths: images [H, W, C] in [0, 1] and/or paths of PNG or JPEG files.
    num_gaussians: N >= 1, per image.
    steps: optimisation steps.
    seeds: one seed per image (default ``range(len(images))``).
    batch_size: images per batch: an int, ``"auto"`` (the largest that fits in free device memory,
      see :func:`gi_jax.memory.auto_batch_size`) or None (each same-shape group in one batch).
    on_result: called as ``on_result(index, result, batch)`` for each image as soon as its batch
      finishes (``batch``: the input indices fitted together), e.g. to write results while later
      batches run.
    progress: True prints dataset progress (images done, steps/s, ETA) to stderr; a callable
      receives each batch's history records.
    recipe: ``"paper"`` (default), ``"best"`` or a :class:`gi_jax.recipes.Recipe`, as for
      :func:`gi_jax.fit`; checked before any image is read.
    channels: how files are read, as :func:`gi_jax.io.load_image`'s ``channels``: 3 (RGB, the
      default), 1, 4, or None for what each file has (each file is then decoded once more, up
      front, to learn its channel count); arrays keep their own. Images of one size and channel
      count are fitted together.
    **fit_batch_kwargs: passed on to :func:`~gi_jax.batch.fit_batch` (parameterization,
      learning_rate, backend, steps_per_call, mesh, ...).

  Returns:
    One :class:`~gi_jax.fitting.FitResult` per input, in input order.
  """
  items = list(images_or_paths)
  if not items:
    return []
  num_gaussians = check_count(num_gaussians)
  steps = check_steps(steps)
  seeds = check_seeds(seeds, len(items))
  recipe = recipes.resolve(recipe, **{k: fit_batch_kwargs[k] for k in recipes.OVERRIDES
                                      if k in fit_batch_kwargs})
  if not (batch_size is None or batch_size == "auto" or
          (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
           and batch_size >= 1)):
    raise errors.InvalidInputError(
        f"batch_size must be an integer >= 1, 'auto' or None, got {batch_size!r}")
  if isinstance(channels, bool) or channels not in io.CHANNELS:
    raise errors.InvalidInputError(f"channels must be one of {io.CHANNELS}, got {channels!r}")
  shapes = [image_shape(item) for item in items]
  # One batch holds one channel count too: a grayscale and an RGB image of one size fit apart.
  channels_of = [_channels(item, channels) for item in items]
  groups = group_by_shape([shape + (c,) for shape, c in zip(shapes, channels_of)])
  tracker = DatasetProgress(len(items), steps) if progress is True else None
  report = tracker if tracker is not None else progress

  results: list[FitResult | None] = [None] * len(items)
  for group in groups:
    height, width = shapes[group[0]]
    if batch_size is None:
      size = len(group)
    elif batch_size == "auto":
      size = memory.auto_batch_size(len(group), num_gaussians, height, width,
                                    channels_of[group[0]])
    else:
      size = int(batch_size)
    for start in range(0, len(group), size):
      chunk = group[start:start + size]
      if tracker is not None:
        tracker.start_batch(len(chunk))
      batch = fit_batch([_load(items[i], channels) for i in chunk], num_gaussians, steps,
                        seeds=[seeds[i] for i in chunk], progress=report, recipe=recipe,
                        **fit_batch_kwargs)
      if tracker is not None:
        tracker.end_batch(batch[0].fit_seconds)
      for i, result in zip(chunk, batch):
        results[i] = result
        if on_result is not None:
          on_result(i, result, chunk)
  return results
